r"""Sinusoidal embeddings of diffusion steps (docs/algorithms.md §1.6)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0,
                       interleaved: bool = False) -> Tensor:
    r"""Sinusoidal embeddings ``[B, dim]`` of (possibly fractional) steps
    ``t`` (``[B]``).

    ``interleaved=False`` is the DiffRec/DiffMM form
    :math:`[\cos(t f_0..), \sin(t f_0..)]` with
    :math:`f_k = \exp(-\ln(P)\,k/\lfloor D/2 \rfloor)` (a zero column is
    appended when ``dim`` is odd).  ``interleaved=True`` is LD4MRec Eq. 15:
    :math:`z[2j] = \sin(t / P^{2j/d})`, :math:`z[2j+1] = \cos(t / P^{2j/d})`.
    """
    half = dim // 2
    t = t.float()
    if interleaved:
        j = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(max_period) * 2.0 * j / dim)
        args = t[:, None] * freqs[None]
        emb = torch.stack([torch.sin(args), torch.cos(args)], dim=-1)
        emb = emb.reshape(t.size(0), 2 * half)
    else:
        freqs = torch.exp(-math.log(max_period) *
                          torch.arange(half, dtype=torch.float32,
                                       device=t.device) / half)
        args = t[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
