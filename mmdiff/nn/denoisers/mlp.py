r"""DiffMM's per-modality denoiser (docs/algorithms.md §2.5), the DiffRec MLP
that predicts a clean interaction row :math:`\hat{x}_0` from a noisy row
:math:`x_t` and its diffusion step :math:`t`."""
from __future__ import annotations

import math
from typing import FrozenSet, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdiff.sharding import draw_rows
from mmdiff.errors import ConfigError
from mmdiff.nn.diffusion._fused import FirstLayer
from mmdiff.nn.diffusion.timestep import timestep_embedding


def _diffrec_init_(layer: torch.nn.Linear) -> None:
    std = math.sqrt(2.0 / (layer.in_features + layer.out_features))
    with torch.no_grad():
        layer.weight.normal_(0.0, std)
        layer.bias.normal_(0.0, 0.001)


class DiffMMDenoiser(torch.nn.Module):
    r"""The DiffRec / DiffMM denoising MLP ("Denoise" in the official code).

    With hidden sizes ``hidden_dims`` :math:`= [h_1, \dots, h_k]` the layer
    sizes are ``out_dims = hidden_dims + [I]`` and ``in_dims =
    reversed(out_dims)``; the first in-layer also receives the step
    embedding.  For the default ``[1000]``: ``Linear(I + d_t -> 1000)`` then
    ``Linear(1000 -> I)``.

    .. math::
        \mathbf{e}_t &= W_e\, \mathrm{sinusoid}_{d_t}(t) + \mathbf{b}_e
        \qquad (\cos | \sin \text{ form, no activation}) \\
        \mathbf{h}_0 &= [\,\mathrm{drop}_p(\mathrm{n}(x_t))\,;\,
        \mathbf{e}_t\,], \qquad
        \mathbf{h}_{l} = \tanh(W_l \mathbf{h}_{l-1} + \mathbf{b}_l)
        \ \ \text{(every in-layer, every out-layer but the last)} \\
        \hat{x}_0 &= W_{out} \mathbf{h} + \mathbf{b}_{out}
        \qquad \text{(linear output, unbounded)}

    where :math:`\mathrm{n}` is the optional row L2-normalisation (``norm``)
    and the input dropout :math:`\mathrm{drop}_p` is active only in training
    mode (the reverse process runs the denoiser in evaluation mode).  Every
    weight is initialised
    :math:`\mathcal{N}(0, \sqrt{2/(\text{fan}_{in}+\text{fan}_{out})})`,
    every bias :math:`\mathcal{N}(0, 0.001)` (the DiffRec init).

    It declares the denoiser capabilities ``'linear_output'`` and (without
    ``norm``) ``'linear_input'`` (:mod:`mmdiff.nn.denoisers.base`): the
    forward pass is split into :meth:`input_projection`, :meth:`step_term`,
    :meth:`hidden`, :meth:`hidden_state` and :attr:`output_layer`, so that
    :class:`~mmdiff.nn.diffusion.InteractionDiffusion` can evaluate the
    training loss without the ``[B, I]`` prediction and run the reverse
    process without re-multiplying ``[B, I]`` rows (exact algebraic
    rearrangements, see there).  A subclass that overrides :meth:`forward`
    loses these fast paths and is always called as written.

    Args:
        num_items (int): :math:`I` (input and output width).
        hidden_dims (list of int): Hidden sizes.  (default: ``[1000]``)
        time_dim (int): :math:`d_t`, step-embedding size.  (default: ``10``)
        dropout (float): Input dropout probability.  (default: ``0.5``)
        norm (bool): Row-normalise the input.  (default: :obj:`False`)

    Shapes:
        - **input:** rows :math:`(B, I)` (dense), steps :math:`(B)` (long)
        - **output:** :math:`\hat{x}_0` :math:`(B, I)`
    """

    def __init__(self, num_items: int, hidden_dims: Sequence[int] = (1000,),
                 time_dim: int = 10, dropout: float = 0.5,
                 norm: bool = False):
        super().__init__()
        hidden_dims = [int(h) for h in hidden_dims]
        if num_items < 1:
            raise ConfigError(f"num_items must be >= 1, got {num_items}")
        if not hidden_dims or any(h < 1 for h in hidden_dims):
            raise ConfigError(f"hidden_dims must be a non-empty list of "
                              f"positive sizes, got {hidden_dims}")
        if time_dim < 1:
            raise ConfigError(f"time_dim must be >= 1, got {time_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.num_items = num_items
        self.hidden_dims = hidden_dims
        self.time_dim = time_dim
        self.dropout = dropout
        self.norm = norm

        out_dims = hidden_dims + [num_items]
        in_dims = out_dims[::-1]
        in_sizes = [in_dims[0] + time_dim] + in_dims[1:]
        self.emb_layer = torch.nn.Linear(time_dim, time_dim)
        self.in_layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(in_sizes[:-1],
                                                  in_sizes[1:]))
        self.out_layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(out_dims[:-1],
                                                  out_dims[1:]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""DiffRec init: :math:`W \sim \mathcal{N}(0, \sqrt{2/(\text{fan}
        _{in} + \text{fan}_{out})})`, :math:`b \sim \mathcal{N}(0,
        0.001)`."""
        for layer in [self.emb_layer, *self.in_layers, *self.out_layers]:
            _diffrec_init_(layer)

    @property
    def denoiser_capabilities(self) -> FrozenSet[str]:
        r"""``{'linear_output'}``, plus ``'linear_input'`` without ``norm``
        (the row normalisation is not linear)."""
        if self.norm:
            return frozenset({'linear_output'})
        return frozenset({'linear_output', 'linear_input'})

    # The forward pass in pieces -------------------------------------------
    @property
    def first_layer(self) -> torch.nn.Linear:
        return self.in_layers[0]

    @property
    def output_layer(self) -> torch.nn.Linear:
        r"""The last, linear layer."""
        return self.out_layers[-1]

    def input_projection(self, x: Tensor) -> Tensor:
        r""":math:`W^{(x)}_1 x` — the first layer's weight restricted to the
        item columns (no bias), ``[B, h]``.  ``x`` may be a sparse CSR
        matrix (e.g. clean 0/1 rows)."""
        weight = self.first_layer.weight[:, :self.num_items]
        if x.layout == torch.sparse_csr:
            return torch.sparse.mm(x, weight.t().contiguous())
        return F.linear(x, weight)

    def step_term(self, t: Tensor) -> Tensor:
        r""":math:`W^{(e)}_1 \mathbf{e}_t + \mathbf{b}_1`, ``[B, h]``: the
        first layer's contribution of the step embedding plus its bias."""
        emb = self.emb_layer(timestep_embedding(t, self.time_dim).to(
            self.emb_layer.weight.dtype))
        return F.linear(emb, self.first_layer.weight[:, self.num_items:],
                        self.first_layer.bias)

    def hidden(self, pre: Tensor) -> Tensor:
        r"""From the first layer's pre-activation to the input of the last
        (linear) layer."""
        h = torch.tanh(pre)
        for layer in self.in_layers[1:]:
            h = torch.tanh(layer(h))
        for layer in self.out_layers[:-1]:
            h = torch.tanh(layer(h))
        return h

    def output(self, h: Tensor) -> Tensor:
        r"""The last, linear layer: :math:`\hat{x}_0 = W_{out} h +
        b_{out}`."""
        return self.output_layer(h)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        r"""Predicts :math:`\hat{x}_0` (``[B, I]``) from noisy rows ``x_t``
        (``[B, I]``) at steps ``t`` (``[B]``, 0-based).  Input dropout runs
        only in training mode."""
        return self.output(self.hidden_state(x_t, t))

    def hidden_state(self, x: Tensor, t: Tensor) -> Tensor:
        r"""Everything but the last (linear) layer: the hidden vector
        :math:`\mathbf{h}` with :math:`\hat{x}_0 = W_{out}\mathbf{h} +
        \mathbf{b}_{out}`, ``[B, h']``."""
        if x.dim() != 2 or x.size(1) != self.num_items:
            raise ValueError(f"expected rows of shape [B, {self.num_items}], "
                             f"got {tuple(x.shape)}")
        if self.norm:
            x = F.normalize(x, dim=1)
        if self.training and self.dropout > 0:
            # Same distribution as F.dropout (keep w.p. 1-p, scale 1/(1-p));
            # a uniform draw + compare is faster than bernoulli_ on CPU.
            # Drawn per row for the global batch under a distributed
            # trainer (mmdiff.sharding), so each row gets its own mask.
            # In float32 the mask is made in place in the uniform draw's
            # buffer (1.0 / 0.0) and the rows multiplied into it: the same
            # numbers as x * (u >= p), without a bool mask, its conversion
            # or another [B, I] buffer.
            keep = draw_rows(x.size(0), lambda m: torch.rand(
                (m,) + tuple(x.shape[1:]), device=x.device))
            if x.dtype == keep.dtype:
                x = keep.ge_(self.dropout).mul_(x)
            else:
                x = x * (keep >= self.dropout)
            x = x.mul_(1.0 / (1.0 - self.dropout))
        # W_1 [x ; e_t] + b_1 computed as W_1^(x) x + (W_1^(e) e_t + b_1):
        # the same value, but autograd never forms the [B, I] gradient of
        # the (constant) input rows.
        first = self.first_layer
        if (x.dtype == torch.float32 and x.device.type == 'cpu'
                and first.weight.dtype == torch.float32
                and not torch.is_autocast_enabled('cpu')):
            emb = self.emb_layer(timestep_embedding(t, self.time_dim))
            pre = FirstLayer.apply(x, emb, first.weight, first.bias)
        else:
            pre = self.input_projection(x) + self.step_term(t).to(x.dtype)
        return self.hidden(pre)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_items}, '
                f'hidden_dims={self.hidden_dims}, time_dim={self.time_dim}, '
                f'dropout={self.dropout}, norm={self.norm})')
