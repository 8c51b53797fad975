r"""LD4MRec's conditional reverse network C-Net and its blocks
(docs/algorithms.md §4.5; paper Eqs. 16-22).

.. code-block:: text

    x_t -> W_in -> [BD -> LReLU -> BG_m1 -> LReLU -> BG_m2 ...] -> LReLU
                   -> [BD -> ...] -> W_out -> x0_hat
    (BD sees t_f and c_u, BG_m sees e_{u,m})

* :class:`BDBlock` -- behaviour-driven block: the hidden state concatenated
  with the time representation, and the collaborative signal, mixed by a
  time-dependent gate (Eqs. 16-19).
* :class:`BGBlock` -- one modality's guidance: DF-GAN-style affine
  modulation whose scale and shift come from the user's modality preference
  (Eqs. 21-22).
* :class:`MLPBlock` -- the plain DiffRec-style layer that replaces BD in the
  "w/o BD" ablation.
* :class:`CNet` -- the full network; ``use_bd`` / ``use_bg`` switch the
  ablations of the paper's Fig. 3.

Decisions where the paper is silent (docs/algorithms.md D10-D12, §4.5):
:math:`\sigma_a` = tanh, LeakyReLU(0.2) between blocks, :math:`L = 2`
blocks, hidden size 256, channel-wise BG affine with identity init,
concatenation of :math:`t_f` in Eq. 16 (:math:`W_1 \in \mathbb{R}^{d \times
2d}`), Xavier-normal weights and :math:`\mathcal{N}(0, 0.001)` biases.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdiff.sharding import current_shard, draw_rows
from mmdiff.checks import check_int
from mmdiff.errors import ConfigError

BG_MODES = ('channel', 'full')


def _init_linear(lin: nn.Linear) -> None:
    r"""DiffRec's initialisation: weight :math:`\sim \mathcal{N}(0,
    \sqrt{2/(\text{fan\_in}+\text{fan\_out})})` (Xavier-normal), bias
    :math:`\sim \mathcal{N}(0, 0.001)`."""
    nn.init.xavier_normal_(lin.weight)
    if lin.bias is not None:
        nn.init.normal_(lin.bias, 0.0, 0.001)


class BDBlock(nn.Module):
    r"""Behaviour-driven block of LD4MRec (Eqs. 16-19).

    .. math::
        \mathbf{b}' &= \tanh\big(W_1 [\mathbf{h} ; \mathbf{t}_f] + b_1\big)
        \\
        \mathbf{c}' &= \tanh\big(W_2 \mathbf{c}_u + b_2\big) \\
        \mathbf{g} &= \sigma\big(W_3 \mathbf{t}_f + b_3\big) \\
        \mathbf{h}' &= \mathbf{b}' \odot (1 - \mathbf{g}) +
        \mathbf{c}' \odot \mathbf{g}

    The gate lets the time representation decide how much of the
    collaborative signal :math:`\mathbf{c}_u` replaces the behaviour path.

    Args:
        hidden_dim (int): :math:`d`.
        cond_dim (int): Size of :math:`\mathbf{c}_u` (the SVD rank).
        time_dim (int, optional): Size of :math:`\mathbf{t}_f`
            (default: ``hidden_dim``).
        time_concat (bool): Concatenate :math:`\mathbf{t}_f` to
            :math:`\mathbf{h}` in Eq. 16 (the text); with :obj:`False`,
            :math:`W_1 \in \mathbb{R}^{d \times d}` (the stated shape) and
            time enters only through the gate (docs/algorithms.md D12).
            (default: :obj:`True`)

    Shapes:
        - **input:** :math:`\mathbf{h}` :math:`(B, d)`,
          :math:`\mathbf{t}_f` :math:`(B, d_t)`,
          :math:`\mathbf{c}_u` :math:`(B, d_c)`
        - **output:** :math:`(B, d)`
    """

    def __init__(self, hidden_dim: int, cond_dim: int,
                 time_dim: Optional[int] = None, time_concat: bool = True):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.cond_dim = cond_dim
        self.time_dim = hidden_dim if time_dim is None else time_dim
        self.time_concat = time_concat
        in1 = hidden_dim + self.time_dim if time_concat else hidden_dim
        self.lin_behaviour = nn.Linear(in1, hidden_dim)      # W_1
        self.lin_cond = nn.Linear(cond_dim, hidden_dim)      # W_2
        self.lin_gate = nn.Linear(self.time_dim, hidden_dim)  # W_3
        self.reset_parameters()

    def reset_parameters(self):
        for lin in (self.lin_behaviour, self.lin_cond, self.lin_gate):
            _init_linear(lin)

    def forward(self, h: Tensor, t_f: Tensor, c: Tensor) -> Tensor:
        b = torch.tanh(self.lin_behaviour(
            torch.cat([h, t_f], dim=-1) if self.time_concat else h))
        cc = torch.tanh(self.lin_cond(c))
        g = torch.sigmoid(self.lin_gate(t_f))
        return b * (1.0 - g) + cc * g

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.hidden_dim}, '
                f'cond_dim={self.cond_dim}, time_dim={self.time_dim}, '
                f'time_concat={self.time_concat})')


class MLPBlock(nn.Module):
    r"""A DiffRec-style hidden layer :math:`\mathbf{h}' = \tanh(W \mathbf{h}
    + b)`, which takes the place of :class:`BDBlock` in the "w/o BD"
    ablation (no collaborative signal, no time gate; time enters at the
    input, concatenated to :math:`x_t`).

    Shapes:
        - **input:** :math:`(B, d_{in})`
        - **output:** :math:`(B, d)`
    """

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_dim, self.hidden_dim = in_dim, hidden_dim
        self.lin = nn.Linear(in_dim, hidden_dim)
        self.reset_parameters()

    def reset_parameters(self):
        _init_linear(self.lin)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.lin(h))

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.in_dim}, {self.hidden_dim})'


class BGBlock(nn.Module):
    r"""Modality-guided block of LD4MRec for one modality :math:`m`
    (Eqs. 21-22): an affine modulation of the hidden state conditioned on the
    user's modality preference :math:`\mathbf{e}_{u,m}`, as in DF-GAN.

    .. math::
        \boldsymbol{\gamma} = \mathrm{MLP}^{\gamma}(\mathbf{e}_{u,m}),\quad
        \boldsymbol{\beta} = \mathrm{MLP}^{\beta}(\mathbf{e}_{u,m}),\qquad
        \mathbf{h}' = \boldsymbol{\gamma} \odot \mathbf{h} +
        \boldsymbol{\beta}

    with each MLP = Linear(:math:`d_m \to d`) :math:`\to` ReLU
    :math:`\to` Linear(:math:`d \to d`).  The paper's :math:`W_t` of Eq. 22
    is read as :math:`\mathrm{diag}(\boldsymbol{\gamma})` ("channel-wise",
    docs/algorithms.md D11); ``mode='full'`` instead makes
    :math:`\mathrm{MLP}^{\gamma}` output a full :math:`d \times d` matrix
    :math:`W_t` and computes :math:`\mathbf{h}' = W_t \mathbf{h} +
    \boldsymbol{\beta}` (:math:`d^2` outputs: expensive).

    Initialisation (DF-GAN): the last Linear of :math:`\mathrm{MLP}^{\gamma}`
    has weight 0 and bias 1 (the identity matrix for ``'full'``), the last
    Linear of :math:`\mathrm{MLP}^{\beta}` weight 0 and bias 0, so the block
    starts as the identity.

    Args:
        in_dim (int): :math:`d_m`, the modality's feature size.
        hidden_dim (int): :math:`d`.
        mode (str): ``'channel'`` or ``'full'``.  (default: ``'channel'``)

    Shapes:
        - **input:** :math:`\mathbf{h}` :math:`(B, d)`,
          :math:`\mathbf{e}_{u,m}` :math:`(B, d_m)`
        - **output:** :math:`(B, d)`
    """

    def __init__(self, in_dim: int, hidden_dim: int, mode: str = 'channel'):
        super().__init__()
        if mode not in BG_MODES:
            raise ConfigError(f"unknown bg_mode {mode!r}; expected one of "
                              f"{BG_MODES}")
        self.in_dim, self.hidden_dim, self.mode = in_dim, hidden_dim, mode
        out_gamma = hidden_dim if mode == 'channel' \
            else hidden_dim * hidden_dim
        self.mlp_gamma = nn.Sequential(nn.Linear(in_dim, hidden_dim),
                                       nn.ReLU(),
                                       nn.Linear(hidden_dim, out_gamma))
        self.mlp_beta = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                      nn.Linear(hidden_dim, hidden_dim))
        self.reset_parameters()

    def reset_parameters(self):
        _init_linear(self.mlp_gamma[0])
        _init_linear(self.mlp_beta[0])
        last_g, last_b = self.mlp_gamma[2], self.mlp_beta[2]
        nn.init.zeros_(last_g.weight)
        nn.init.zeros_(last_b.weight)
        nn.init.zeros_(last_b.bias)
        with torch.no_grad():
            if self.mode == 'channel':
                last_g.bias.fill_(1.0)
            else:
                last_g.bias.copy_(torch.eye(self.hidden_dim).flatten())

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        gamma, beta = self.mlp_gamma(e), self.mlp_beta(e)
        if self.mode == 'channel':
            return gamma * h + beta
        W = gamma.view(-1, self.hidden_dim, self.hidden_dim)
        return torch.bmm(W, h.unsqueeze(-1)).squeeze(-1) + beta

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_dim}, {self.hidden_dim}, '
                f'mode={self.mode!r})')


Prefs = Union[Mapping[str, Tensor], Sequence[Tensor], None]


class CNet(nn.Module):
    r"""LD4MRec's C-Net :math:`\hat{x}_\theta(x_t, \mathbf{t}_f,
    \mathbf{c}_u, \{\mathbf{e}_{u,m}\})` (docs/algorithms.md §4.5, D10).

    .. math::
        \mathbf{h}^{(0)} &= W_{in} x_t + b_{in} \\
        \mathbf{h}^{(l)} &= \mathrm{BG}_{m_{|M|}} \circ \mathrm{LReLU} \circ
        \dots \circ \mathrm{BG}_{m_1} \circ \mathrm{LReLU} \circ
        \mathrm{BD}\big(\mathrm{LReLU}^{[l>1]}(\mathbf{h}^{(l-1)}),
        \mathbf{t}_f, \mathbf{c}_u\big),\quad l = 1..L \\
        \hat{x}_0 &= W_{out} \mathbf{h}^{(L)} + b_{out}

    with LeakyReLU(0.2) between consecutive blocks and between consecutive
    modality affines (not after the last).  Each block has its own weights;
    all blocks share :math:`\mathbf{t}_f`, :math:`\mathbf{c}_u` and
    :math:`\mathbf{e}_{u,m}`.

    Ablations (paper Fig. 3):

    * ``use_bg=False`` ("w/o BG"): BD blocks only, linked by LeakyReLU;
      modality preferences are not used.
    * ``use_bd=False`` ("w/o BD"): a DiffRec-style MLP on the concatenation
      :math:`[x_t ; \mathbf{t}_f]` -- :math:`W_{in}` takes
      :math:`I + d` inputs and every BD block becomes an
      :class:`MLPBlock` :math:`\tanh(W\mathbf{h} + b)` -- followed in every
      block by the BG modulations; :math:`\mathbf{c}_u` is not used.

    Args:
        num_items (int): :math:`I` (input and output size).
        modality_dims (dict): Ordered ``{name: d_m}``; the BG modulations
            of a block are applied in this order.  May be empty when
            ``use_bg=False``.
        hidden_dim (int): :math:`d`, also the size of :math:`\mathbf{t}_f`.
            (default: ``256``)
        svd_dim (int): Size of :math:`\mathbf{c}_u`.  (default: ``64``)
        num_blocks (int): :math:`L`.  (default: ``2``)
        use_bd (bool): Use BD blocks.  (default: :obj:`True`)
        use_bg (bool): Use BG blocks.  (default: :obj:`True`)
        dropout (float): Dropout on :math:`x_t` in training.
            (default: ``0.0``)
        time_concat (bool): See :class:`BDBlock`.  (default: :obj:`True`)
        bg_mode (str): See :class:`BGBlock`.  (default: ``'channel'``)
        negative_slope (float): Of the LeakyReLUs.  (default: ``0.2``)

    Shapes:
        - **input:** :math:`x_t` :math:`(B, I)`, :math:`\mathbf{t}_f`
          :math:`(B, d)` (or :math:`(1, d)`, broadcast),
          :math:`\mathbf{c}_u` :math:`(B, d_c)`,
          preferences ``{m: (B, d_m)}`` (a dict keyed like
          ``modality_dims`` or a sequence in the same order)
        - **output:** :math:`\hat{x}_0` :math:`(B, I)`
    """

    def __init__(self, num_items: int, modality_dims: Mapping[str, int],
                 hidden_dim: int = 256, svd_dim: int = 64, num_blocks: int = 2,
                 use_bd: bool = True, use_bg: bool = True,
                 dropout: float = 0.0, time_concat: bool = True,
                 bg_mode: str = 'channel', negative_slope: float = 0.2):
        super().__init__()
        for name, v in (('num_items', num_items), ('hidden_dim', hidden_dim),
                        ('svd_dim', svd_dim), ('num_blocks', num_blocks)):
            check_int(f'CNet: {name}', v, 1)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"CNet: dropout must be in [0, 1), got "
                              f"{dropout}")
        if bg_mode not in BG_MODES:
            raise ConfigError(f"CNet: unknown bg_mode {bg_mode!r}; expected "
                              f"one of {BG_MODES}")
        modality_dims = dict(modality_dims or {})
        if use_bg and not modality_dims:
            raise ConfigError("CNet: use_bg=True needs at least one modality "
                              "(modality_dims is empty); use use_bg=False "
                              "for the 'w/o BG' variant")
        self.num_items = num_items
        self.modality_dims = modality_dims if use_bg else {}
        self.hidden_dim, self.svd_dim, self.num_blocks = hidden_dim, svd_dim, \
            num_blocks
        self.use_bd, self.use_bg = use_bd, use_bg
        self.time_concat, self.bg_mode = time_concat, bg_mode
        self.negative_slope = negative_slope
        self.dropout = nn.Dropout(dropout)

        self.lin_in = nn.Linear(num_items if use_bd
                                else num_items + hidden_dim,
                                hidden_dim)
        self.bd_blocks = nn.ModuleList(
            BDBlock(hidden_dim, svd_dim, hidden_dim, time_concat) if use_bd
            else MLPBlock(hidden_dim, hidden_dim) for _ in range(num_blocks))
        self.bg_blocks = nn.ModuleList(
            nn.ModuleDict({m: BGBlock(d, hidden_dim, bg_mode)
                           for m, d in self.modality_dims.items()})
            for _ in range(num_blocks)) if use_bg else None
        self.lin_out = nn.Linear(hidden_dim, num_items)
        self.reset_parameters()

    def reset_parameters(self):
        _init_linear(self.lin_in)
        _init_linear(self.lin_out)
        for block in self.bd_blocks:
            block.reset_parameters()
        if self.bg_blocks is not None:
            for blocks in self.bg_blocks:
                for block in blocks.values():
                    block.reset_parameters()

    def _prefs(self, prefs: Prefs) -> List[Tensor]:
        names = list(self.modality_dims)
        if not names:
            return []
        if prefs is None:
            raise ValueError(f"CNet: modality preferences for {names} are "
                             f"required")
        if isinstance(prefs, Mapping):
            missing = [m for m in names if m not in prefs]
            if missing:
                raise ValueError(f"CNet: missing preferences for modalities "
                                 f"{missing}")
            return [prefs[m] for m in names]
        prefs = list(prefs)
        if len(prefs) != len(names):
            raise ValueError(f"CNet: expected {len(names)} preference "
                             f"tensors ({names}), got {len(prefs)}")
        return prefs

    def forward(self, x_t: Tensor, t_f: Tensor, c: Optional[Tensor] = None,
                prefs: Prefs = None) -> Tensor:
        e = self._prefs(prefs)
        if t_f.size(0) != x_t.size(0):
            t_f = t_f.expand(x_t.size(0), -1)
        shard = current_shard()
        if shard is not None and self.training and self.dropout.p > 0:
            # the mask nn.Dropout draws for the global batch, this rank's
            # rows of it (mmdiff.sharding)
            p = self.dropout.p
            x = x_t * draw_rows(x_t.size(0), lambda m: F.dropout(
                torch.ones((m,) + tuple(x_t.shape[1:]), dtype=x_t.dtype,
                           device=x_t.device), p))
        else:
            x = self.dropout(x_t)
        if self.use_bd:
            if c is None:
                raise ValueError("CNet: the collaborative signal c is "
                                 "required with use_bd=True")
            h = self.lin_in(x)
        else:
            h = self.lin_in(torch.cat([x, t_f], dim=-1))
        slope = self.negative_slope
        for l in range(self.num_blocks):
            if l > 0:
                h = F.leaky_relu(h, slope)
            h = self.bd_blocks[l](h, t_f, c) if self.use_bd else \
                self.bd_blocks[l](h)
            if self.bg_blocks is not None:
                for k, bg in enumerate(self.bg_blocks[l].values()):
                    h = bg(F.leaky_relu(h, slope), e[k])
        return self.lin_out(h)

    def __repr__(self) -> str:
        mods = ', '.join(f'{m}: {d}' for m, d in self.modality_dims.items())
        return (f'{self.__class__.__name__}({self.num_items}, '
                f'modalities={{{mods}}}, hidden_dim={self.hidden_dim}, '
                f'svd_dim={self.svd_dim}, num_blocks={self.num_blocks}, '
                f'use_bd={self.use_bd}, use_bg={self.use_bg})')
