r"""The denoiser contract of :mod:`mmdiff`.

A *denoiser* is any :class:`torch.nn.Module` that predicts clean interaction
rows from noisy ones:

.. code-block:: python

    x0_hat = denoiser(x_t, t)      # x_t: [B, I] float, t: [B] long (0-based)
                                   # x0_hat: [B, I]

Stochastic regularisation (input dropout, ...) must run only in training
mode: the reverse process (scoring, DiffMM's graph regeneration) puts the
module in evaluation mode for its duration and restores the mode after.
That is all :class:`~mmdiff.nn.diffusion.InteractionDiffusion`,
:class:`~mmdiff.nn.models.DiffMM` and :class:`~mmdiff.nn.models.DiffRec`
require; a plain two-layer MLP qualifies::

    class MyDenoiser(torch.nn.Module):
        def __init__(self, num_items, hidden=256):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(num_items + 1, hidden), torch.nn.Tanh(),
                torch.nn.Linear(hidden, num_items))

        def forward(self, x_t, t):
            return self.net(torch.cat([x_t, t[:, None].float()], dim=1))

    model = DiffMM.from_data(
        data, denoiser_factory=lambda num_items, modality: MyDenoiser(
            num_items))

**Optional capabilities.**  A denoiser may additionally declare, in the
class attribute (or property) :attr:`denoiser_capabilities`, structure that
the library's fast paths can exploit.  Each is a promise about
:meth:`forward`:

* ``'linear_output'`` — the module has ``hidden_state(x_t, t) -> h [B, H]``
  and a :class:`torch.nn.Linear` ``output_layer`` with
  ``forward(x_t, t) == output_layer(hidden_state(x_t, t))``.  The training
  loss is then evaluated without the ``[B, I]`` prediction, and bfloat16
  top-:math:`k` generation re-scores its candidates exactly.
* ``'linear_input'`` — additionally ``input_projection(x) -> [B, H']``,
  ``step_term(t) -> [B, H']`` and ``hidden(pre) -> h`` with
  ``hidden_state(x_t, t) == hidden(input_projection(x_t) + step_term(t))``
  in evaluation mode, and ``input_projection`` linear in ``x`` without a
  bias.  The reverse process then never multiplies ``[B, I]`` rows by the
  first layer more than once.

Capabilities are detected, never assumed (:func:`denoiser_capabilities`):
they hold only while :meth:`forward` and the methods they name are those of
the class that declared them, so a subclass that overrides ``forward`` (or
``hidden_state``, ...) is always called as written, unless it declares the
capabilities again itself.
"""
from __future__ import annotations

from typing import FrozenSet, Protocol, runtime_checkable

import torch
from torch import Tensor

#: Every capability a denoiser may declare.
CAPABILITIES = frozenset({'linear_output', 'linear_input'})

#: The methods whose behaviour a capability describes; overriding any of
#: them below the declaring class withdraws the capabilities.
_CAPABILITY_METHODS = ('forward', 'hidden_state', 'output', 'input_projection',
                       'step_term', 'hidden')


@runtime_checkable
class Denoiser(Protocol):
    r"""``denoiser(x_t, t) -> x0_hat``: noisy rows ``[B, I]`` and 0-based
    steps ``[B]`` to predicted clean rows ``[B, I]`` (see the module
    docstring for the optional capabilities)."""

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        ...


def denoiser_capabilities(denoiser: torch.nn.Module) -> FrozenSet[str]:
    r"""The capabilities ``denoiser`` declares and still honours: those
    of the nearest class that declares :attr:`denoiser_capabilities`, and
    none if a subclass below it overrides ``forward`` or one of the
    methods the capabilities describe."""
    declared = getattr(denoiser, 'denoiser_capabilities', None)
    if not declared:
        return frozenset()
    cls = type(denoiser)
    owner = next((c for c in cls.__mro__
                  if 'denoiser_capabilities' in vars(c)), None)
    if owner is None:  # declared on the instance: trust nothing
        return frozenset()
    for name in _CAPABILITY_METHODS:
        if getattr(cls, name, None) is not getattr(owner, name, None):
            return frozenset()
    unknown = set(declared) - CAPABILITIES
    if unknown:
        raise ValueError(f"{cls.__name__} declares unknown denoiser "
                         f"capabilities {sorted(unknown)}; known: "
                         f"{sorted(CAPABILITIES)}")
    return frozenset(declared)
