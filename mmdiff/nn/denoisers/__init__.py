r"""Denoisers: the contract (:class:`Denoiser`, optional capabilities) and
the two networks of the founding papers.

* :class:`DiffMMDenoiser` — DiffRec's / DiffMM's MLP
  (``denoiser(x_t, t) -> x0_hat``).
* :class:`CNet` — LD4MRec's conditional network (BD and BG blocks), which
  also takes the user's conditions.
"""
from mmdiff.nn.denoisers.base import (
    CAPABILITIES,
    Denoiser,
    denoiser_capabilities,
)
from mmdiff.nn.denoisers.cnet import BDBlock, BGBlock, CNet, MLPBlock
from mmdiff.nn.denoisers.mlp import DiffMMDenoiser

__all__ = ['Denoiser', 'denoiser_capabilities', 'CAPABILITIES',
           'DiffMMDenoiser', 'CNet', 'BDBlock', 'BGBlock', 'MLPBlock']
