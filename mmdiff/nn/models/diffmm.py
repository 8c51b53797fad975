r"""DiffMM (Jiang et al., "DiffMM: Multi-Modal Diffusion Model for
Recommendation", ACM MM 2024), following ALGORITHMS.md §2 and the
decisions D1-D9 of §7 (the official code HKUDS/DiffMM is the ground truth).

One training epoch (ALGORITHMS.md §2.8) is two phases of the
:class:`~mmdiff.nn.models.base.Recommender` protocol:

1. ``'diffusion'`` (user batches): one
   :class:`~mmdiff.nn.interaction_diffusion.InteractionDiffusion` per
   modality learns to denoise interaction rows, with modality-aware signal
   injection (§2.6).  Its ``after`` hook regenerates every modality graph
   :math:`G_m` from the denoised rows (top-``rebuild_k`` items per user,
   :math:`D^{-1/2}(A+I)D^{-1/2}`, then edge dropout once per epoch).
2. ``'bpr'`` (BPR triples): ID embeddings, feature transforms and modality
   weights learn from BPR + L2 + cross-modal InfoNCE over
   :class:`~mmdiff.nn.conv.multimodal_aggregation.MultiModalAggregation`
   (§2.4, §2.7).

Scores are :math:`\langle E^*_U[u], E^*_I[i] \rangle` of one full forward.
"""
from __future__ import annotations

import ast
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from mmdiff.data.hetero import (
    edge_index_of,
    get_modalities,
    num_items,
    num_users,
)
from mmdiff.errors import ConfigError
from mmdiff.graph import dropout_normalized_edges, normalized_edges
from mmdiff.nn.contrastive import info_nce
from mmdiff.nn.conv.multimodal_aggregation import (
    LAYOUTS,
    MultiModalAggregation,
    matrix_to_adj,
)
from mmdiff.nn.diffusion import GaussianDiffusion
from mmdiff.nn.denoiser import DiffMMDenoiser
from mmdiff.nn.interaction_diffusion import (
    InteractionDiffusion,
    generate_topk_edges,
)
from mmdiff.nn.models._util import check_hparams
from mmdiff.nn.models.base import (
    Recommender,
    TrainingPhase,
    TripletBatch,
    UserBatch,
)

TRANSFORMS = ('proj', 'linear')


class FeatureTransform(torch.nn.Module):
    r"""DiffMM's per-modality item-feature transform (ALGORITHMS.md §2.2).

    * ``'proj'`` (``trans=0``): :math:`F = \mathrm{LeakyReLU}_{0.2}(X W)`,
      :math:`W \in \mathbb{R}^{d_m \times d}` Xavier-uniform, no bias.
    * ``'linear'`` (``trans=1``): :math:`F = X W^\top + b`
      (:class:`torch.nn.Linear`, default init, no activation).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = 'proj'):
        super().__init__()
        if kind not in TRANSFORMS:
            raise ConfigError(f"feature transform must be one of "
                              f"{TRANSFORMS}, got {kind!r}")
        self.in_dim, self.out_dim, self.kind = in_dim, out_dim, kind
        if kind == 'proj':
            self.weight = torch.nn.Parameter(torch.empty(in_dim, out_dim))
        else:
            self.linear = torch.nn.Linear(in_dim, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.kind == 'proj':
            torch.nn.init.xavier_uniform_(self.weight)
        else:
            self.linear.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == 'proj':
            return F.leaky_relu(x @ self.weight, 0.2)
        return self.linear(x)

    def extra_repr(self) -> str:
        return f'{self.in_dim}, {self.out_dim}, kind={self.kind!r}'


def _transform_kinds(trans, names: List[str]) -> List[str]:
    r"""Maps DiffMM's ``trans`` (0, 1, 2, a list or a dict) to one transform
    kind per modality (ALGORITHMS.md D8).  ``trans=2`` is the official
    dataset hack: ``'proj'`` for a modality named ``image``, ``'linear'``
    for every other one."""
    def kind(v, where):
        if isinstance(v, bool):
            raise ConfigError(f"trans{where}: expected 0, 1, 'proj' or "
                              f"'linear', got {v!r}")
        if v in (0, 'proj'):
            return 'proj'
        if v in (1, 'linear'):
            return 'linear'
        raise ConfigError(f"trans{where}: expected 0, 1, 'proj' or "
                          f"'linear', got {v!r}")

    if isinstance(trans, Mapping):
        unknown = [k for k in trans if k not in names]
        if unknown:
            raise ConfigError(f"trans names unknown modalities {unknown}; "
                              f"modalities: {names}")
        return [kind(trans.get(m, 0), f"['{m}']") for m in names]
    if isinstance(trans, (list, tuple)):
        if len(trans) != len(names):
            raise ConfigError(f"trans lists {len(trans)} transforms for "
                              f"{len(names)} modalities {names}")
        return [kind(v, f"[{i}]") for i, v in enumerate(trans)]
    if trans == 2 and not isinstance(trans, bool):
        return ['proj' if m == 'image' else 'linear' for m in names]
    k = kind(trans, '')
    return [k] * len(names)


def _int(name: str, value, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name} must be {rng}, got {value}")
    return value


def _float(name: str, value, positive: bool = False,
           nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if positive and not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    if nonneg and not value >= 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value


def _dims(value) -> List[int]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"dims must be a list of sizes such as [1000],"
                              f" got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1
            for v in value):
        raise ConfigError(f"dims must be a non-empty list of positive "
                          f"integers, got {value!r}")
    return [int(v) for v in value]


class DiffMM(Recommender):
    r"""DiffMM: multi-modal diffusion for recommendation.

    Parameters (ALGORITHMS.md §2.2): ID embeddings :math:`E_U, E_I`
    (Xavier-uniform), one feature transform per modality
    (:class:`FeatureTransform`), modality weights :math:`\omega` (init
    :math:`1/|M|`, used as :math:`\mathrm{softmax}(\omega)`), and one
    :class:`~mmdiff.nn.denoiser.DiffMMDenoiser` per modality.

    **Diffusion phase** (per user batch, rows :math:`x_0`; §2.6):
    :math:`\mathcal{L}_{diff} = \sum_m \mathcal{L}_{elbo,m} +
    e_{loss}\,\mathcal{L}_{msi,m}` with the un-normalised transform output
    :math:`F_m` and :math:`E_I` detached (D6), uniform steps (D4).  After
    the phase every :math:`G_m` is rebuilt from the denoised rows of all
    users: reverse process from the clean row (``sampling_steps`` = 0), top
    ``rebuild_k`` items *including* observed ones (D5), bipartite
    :math:`D^{-1/2}(A+I)D^{-1/2}`, and edge dropout applied once per epoch
    to the normalised entries (self-loops too, both directions
    independently, kept values scaled by :math:`1/\rho`; D2).  The dropped
    graph serves all BPR batches of the epoch and, with
    ``eval_uses_dropped_graph=True`` (parity), its evaluation.

    **BPR phase** (per triple batch; §2.7): with :math:`(E^*_U, E^*_I)` and
    the views :math:`V_m` of
    :class:`~mmdiff.nn.conv.multimodal_aggregation.MultiModalAggregation`,

    .. math::
        \mathcal{L} = -\frac{1}{1024}\sum_{(u,i,j)} \log\sigma(
        \hat{y}_{ui} - \hat{y}_{uj})
        + \lambda_{reg}(\lVert E_U\rVert_F^2 + \lVert E_I\rVert_F^2)
        + \lambda_{ssl}\,\mathcal{L}_{cl}

    where the BPR sum is divided by the *nominal* batch size ``batch``
    also for the last partial batch, and the L2 term covers the full ID
    tables (D7).  ``cl_method=0``: :math:`\mathcal{L}_{cl} = \sum_{m<m'}
    \mathrm{InfoNCE}(V_m^U, V_{m'}^U, users) + \mathrm{InfoNCE}(V_m^I,
    V_{m'}^I, pos)`; ``cl_method=1``: :math:`\sum_m
    \mathrm{InfoNCE}(E^*_U, V_m^U, users) + \mathrm{InfoNCE}(E^*_I, V_m^I,
    pos)` (:func:`~mmdiff.nn.contrastive.info_nce`; only the selected
    variant is computed).

    Ablations: ``use_modal_graphs=False`` drops the denoisers, the diffusion
    phase and the :math:`\mathrm{Adj}_m` terms, and the views propagate over
    the main graph; ``use_contrastive=False`` drops
    :math:`\mathcal{L}_{cl}`; ``use_msi=False`` drops
    :math:`\mathcal{L}_{msi}`.

    Regenerated graphs are saved by :meth:`get_extra_state` as plain tensors
    (``torch.load(weights_only=True)`` works).  The model follows the
    device of its parameters and never densifies the :math:`U \times I`
    matrix (only ``[batch, I]`` rows).

    Use :meth:`from_data`; the constructor takes tensors.

    Args (official names; defaults = the official code, ALGORITHMS.md §2.9):
        latdim (int): :math:`d`.  gnn_layer (int): :math:`L`.
        reg (float): L2 weight.  ssl_reg (float): InfoNCE weight.
        temp (float): :math:`\tau`.  keep_rate (float): edge keep
            probability :math:`\rho` of the generated graphs.
        dims (list of int): denoiser hidden sizes.  d_emb_size (int):
            step-embedding size.  norm (bool): row-normalise denoiser input.
        steps, noise_scale, noise_min, noise_max: the schedule (§2.6);
            beta_fixed (float): :math:`\beta_0` overwrite (1e-4, D3).
        sampling_steps (int), sampling_noise (bool): reverse-process start
            and noise at regeneration.  rebuild_k (int): generated items per
            user (1 as in ALGORITHMS.md; the official ``Params.py`` as
            stored in our reference index says 5, which scores lower on
            TikTok, see ``benchmarks/results/quality.md``).  e_loss (float):
            MSI weight.
        ris_lambda, ris_adj_lambda (float): :math:`\lambda_{ris}`,
            :math:`\lambda_{adj}`.
        trans: 0 (``'proj'``), 1 (``'linear'``), 2 (``image`` proj, others
            linear), or a per-modality list / dict of kinds (D8).
        cl_method (int): 0 modality-vs-modality, 1 modality-vs-main.
        lr (float): Adam lr of both phases.  batch (int): user batch and
            triple batch size; also the nominal BPR divisor.
        exclude_observed (bool): never regenerate training edges (D5 option).
        eval_uses_dropped_graph (bool): evaluate with the epoch's dropped
            graphs (parity, D2) or the undropped ones.
        use_modal_graphs, use_contrastive, use_msi (bool): ablations.
        autocast_bf16 (bool): bfloat16 autocast for the denoiser MLPs
            (training and regeneration).  cl_bf16 (bool): bfloat16
            similarity products in InfoNCE.  Both off by default (float32).
            Both on, TikTok over 7 seeds paired by seed: validation-selected
            test Recall@20 unchanged (+0.0002), best-test-epoch Recall@20
            0.0009 lower, epoch 1.4-1.6x faster on CPU
            (``benchmarks/results/diffmm_speed.md``).
        fused_reverse, fused_loss (bool): exact rearranged reverse process
            and diffusion loss (see
            :class:`~mmdiff.nn.interaction_diffusion.InteractionDiffusion`).
        sparse_layout (str): ``'edge_index_obj'`` (default, fused with a
            cached transpose), ``'csr'`` or ``'edge_index'`` (all equal).
        denoiser_dropout (float): input dropout of the denoisers (0.5).
    """
    name = 'diffmm'
    requires_modalities = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        edge_index: Tensor,
        features: Mapping[str, Tensor],
        *,
        latdim: int = 64,
        gnn_layer: int = 1,
        reg: float = 1e-5,
        ssl_reg: float = 1e-2,
        temp: float = 0.5,
        keep_rate: float = 0.5,
        dims: Union[Sequence[int], str] = (1000,),
        d_emb_size: int = 10,
        norm: bool = False,
        steps: int = 5,
        noise_scale: float = 0.1,
        noise_min: float = 1e-4,
        noise_max: float = 0.02,
        sampling_steps: int = 0,
        sampling_noise: bool = False,
        rebuild_k: int = 1,
        e_loss: float = 0.1,
        ris_lambda: float = 0.5,
        ris_adj_lambda: float = 0.2,
        trans=0,
        cl_method: int = 0,
        lr: float = 1e-3,
        batch: int = 1024,
        exclude_observed: bool = False,
        eval_uses_dropped_graph: bool = True,
        use_modal_graphs: bool = True,
        use_contrastive: bool = True,
        use_msi: bool = True,
        autocast_bf16: bool = False,
        cl_bf16: bool = False,
        fused_reverse: bool = True,
        fused_loss: bool = True,
        sparse_layout: str = 'edge_index_obj',
        denoiser_dropout: float = 0.5,
        beta_fixed: Optional[float] = 1e-4,
    ):
        super().__init__()
        names = list(features)
        if not names:
            raise ConfigError("DiffMM needs at least one item modality; the "
                              "data has none (add one with "
                              "mmdiff.data.hetero.add_modality)")
        self.num_users = _int('num_users', num_users, 1)
        self.num_items = _int('num_items', num_items, 1)
        self.modalities = names
        self.latdim = _int('latdim', latdim, 1)
        self.gnn_layer = _int('gnn_layer', gnn_layer, 0)
        self.reg = _float('reg', reg, nonneg=True)
        self.ssl_reg = _float('ssl_reg', ssl_reg, nonneg=True)
        self.temp = _float('temp', temp, positive=True)
        self.keep_rate = _float('keep_rate', keep_rate)
        if not 0.0 < self.keep_rate <= 1.0:
            raise ConfigError(f"keep_rate must be in (0, 1], got {keep_rate}")
        self.dims = _dims(dims)
        self.d_emb_size = _int('d_emb_size', d_emb_size, 1)
        self.steps = _int('steps', steps, 1)
        self.sampling_steps = _int('sampling_steps', sampling_steps, 0,
                                   self.steps)
        self.rebuild_k = _int('rebuild_k', rebuild_k, 1, self.num_items)
        self.e_loss = _float('e_loss', e_loss, nonneg=True)
        self.ris_lambda = _float('ris_lambda', ris_lambda)
        self.ris_adj_lambda = _float('ris_adj_lambda', ris_adj_lambda)
        self.cl_method = _int('cl_method', cl_method, 0, 1)
        self.lr = _float('lr', lr, positive=True)
        self.batch = _int('batch', batch, 1)
        if sparse_layout not in LAYOUTS:
            raise ConfigError(f"sparse_layout must be one of {LAYOUTS}, got "
                              f"{sparse_layout!r}")
        self.sparse_layout = sparse_layout
        self.norm = bool(norm)
        self.sampling_noise = bool(sampling_noise)
        self.exclude_observed = bool(exclude_observed)
        self.eval_uses_dropped_graph = bool(eval_uses_dropped_graph)
        self.use_modal_graphs = bool(use_modal_graphs)
        self.use_contrastive = bool(use_contrastive)
        self.use_msi = bool(use_msi)
        self.autocast_bf16 = bool(autocast_bf16)
        self.cl_bf16 = bool(cl_bf16)
        kinds = _transform_kinds(trans, names)
        self.trans = kinds

        # Data-derived, non-persistent buffers (rebuilt from the data).
        U, I = self.num_users, self.num_items
        edge_index = edge_index.long().cpu()
        ei, w = normalized_edges(edge_index, U, I, add_self_loops=True)
        self.register_buffer('main_index', ei, persistent=False)
        self.register_buffer('main_weight', w, persistent=False)
        from mmdiff.data.hetero import edges_to_csr
        csr = edges_to_csr(edge_index, U, I)
        self.register_buffer('inter_crow', csr.crow_indices(),
                             persistent=False)
        self.register_buffer('inter_col', csr.col_indices(), persistent=False)
        for k, m in enumerate(names):
            x = features[m]
            if x.dim() != 2 or x.size(0) != I:
                raise ConfigError(f"modality '{m}': features must be [{I}, "
                                  f"dim], got {tuple(x.shape)}")
            self.register_buffer(f'feature_{k}', x.detach().float(),
                                 persistent=False)

        # Parameters.
        d = self.latdim
        self.user_emb = torch.nn.Parameter(torch.empty(U, d))
        self.item_emb = torch.nn.Parameter(torch.empty(I, d))
        self.transforms = torch.nn.ModuleList(
            FeatureTransform(features[m].size(1), d, kinds[k])
            for k, m in enumerate(names))
        self.modal_weight = torch.nn.Parameter(
            torch.full((len(names),), 1.0 / len(names)))
        self.aggregation = MultiModalAggregation(
            U, num_layers=self.gnn_layer, ris_lambda=self.ris_lambda,
            ris_adj_lambda=self.ris_adj_lambda)
        if self.use_modal_graphs:
            self.diffusion = GaussianDiffusion(noise_scale, noise_min,
                                               noise_max, self.steps,
                                               beta_fixed=beta_fixed)
            self.denoisers = torch.nn.ModuleList(
                InteractionDiffusion(
                    DiffMMDenoiser(I, self.dims, self.d_emb_size,
                                   denoiser_dropout, self.norm),
                    self.diffusion, sampling_steps=self.sampling_steps,
                    sampling_noise=self.sampling_noise,
                    autocast_bf16=self.autocast_bf16,
                    fused_reverse=fused_reverse, fused_loss=fused_loss)
                for _ in names)
        else:
            self.diffusion = None
            self.denoisers = torch.nn.ModuleList()
        self.reset_parameters()

        # Regenerated graphs: per modality the (row, col) entries and values
        # of G_m used for training (dropped) and, if different, evaluation.
        self._graphs: Optional[List[Tuple[Tensor, Tensor]]] = None
        self._eval_graphs: Optional[List[Tuple[Tensor, Tensor]]] = None
        self._adj_cache: Dict[tuple, object] = {}
        self._snapshot: Optional[tuple] = None
        self._scores: Optional[Tuple[Tensor, Tensor]] = None

    # ------------------------------------------------------------------
    @classmethod
    def from_data(cls, data: HeteroData, modalities=None,
                  **hparams) -> 'DiffMM':
        r"""Builds DiffMM from the canonical data: the training edges, and
        the item modalities ``modalities`` (a name, a list of names, or
        :obj:`None` for all, in the data's order).  Unknown
        hyper-parameters raise :class:`~mmdiff.errors.ConfigError`."""
        import inspect
        allowed = {p.name for p in inspect.signature(cls.__init__)
                   .parameters.values() if p.kind == p.KEYWORD_ONLY}
        check_hparams(cls.__name__, hparams, allowed)
        if isinstance(modalities, str):
            modalities = [modalities]
        if modalities is not None:
            modalities = list(modalities)
            if not modalities:
                raise ConfigError("DiffMM needs at least one modality; "
                                  "modalities=[] selects none")
        feats = get_modalities(data, modalities)
        if not feats:
            raise ConfigError("DiffMM needs at least one item modality; the "
                              "data has none")
        return cls(num_users(data), num_items(data), edge_index_of(data),
                   feats, **hparams)

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_emb)
        torch.nn.init.xavier_uniform_(self.item_emb)
        for t in self.transforms:
            t.reset_parameters()
        with torch.no_grad():
            self.modal_weight.fill_(1.0 / len(self.modalities))
        for d in self.denoisers:
            d.denoiser.reset_parameters()
        self._graphs = self._eval_graphs = None
        self._adj_cache = {}

    # Parameters of the two phases -------------------------------------
    def main_parameters(self) -> List[torch.nn.Parameter]:
        r""":math:`E_U, E_I`, the transforms and :math:`\omega`."""
        return [self.user_emb, self.item_emb,
                *self.transforms.parameters(), self.modal_weight]

    def denoiser_parameters(self) -> List[torch.nn.Parameter]:
        return list(self.denoisers.parameters())

    def phases(self) -> List[TrainingPhase]:
        out = []
        if self.use_modal_graphs:
            out.append(TrainingPhase(
                'diffusion', 'users', self.diffusion_loss,
                self.denoiser_parameters(), lr=self.lr, weight_decay=0.0,
                batch_size=self.batch, after=self.regenerate_graphs,
                after_name='regenerate'))
        out.append(TrainingPhase(
            'bpr', 'triplets', self.bpr_loss, self.main_parameters(),
            lr=self.lr, weight_decay=0.0, batch_size=self.batch))
        return out

    def on_epoch_start(self, epoch: int) -> None:
        self._scores = None

    # Features -----------------------------------------------------------
    def features(self) -> List[Tensor]:
        return [getattr(self, f'feature_{k}')
                for k in range(len(self.modalities))]

    def transformed_features(self) -> List[Tensor]:
        r""":math:`F_m` (un-normalised transform outputs), ``[I, d]``."""
        return [t(x) for t, x in zip(self.transforms, self.features())]

    def _diffusion_snapshot(self) -> Tuple[List[Tensor], Tensor]:
        r"""Detached :math:`F_m` and :math:`E_I` for the MSI term, recomputed
        only when a main parameter changed (version counters)."""
        params = self.main_parameters()
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._snapshot is None or self._snapshot[0] != key:
            with torch.no_grad():
                feats = [f.detach() for f in self.transformed_features()]
            self._snapshot = (key, feats, self.item_emb.detach())
        return self._snapshot[1], self._snapshot[2]

    # Phase 1: diffusion -------------------------------------------------
    def diffusion_loss(self, batch: UserBatch) -> Dict[str, Tensor]:
        r""":math:`\sum_m \mathcal{L}_{elbo,m} + e_{loss}
        \mathcal{L}_{msi,m}` on the batch's dense rows."""
        if not self.use_modal_graphs:
            raise ConfigError("use_modal_graphs=False: DiffMM has no "
                              "diffusion phase")
        rows = batch.rows.to(self.user_emb.device, torch.float32)
        msi_w = self.e_loss if self.use_msi else 0.0
        feats, item_emb = self._diffusion_snapshot() if msi_w else (None,
                                                                     None)
        total = elbo = msi = None
        for k, diff in enumerate(self.denoisers):
            out = diff.loss(rows, feature_proj=None if feats is None
                            else feats[k], item_emb=item_emb,
                            msi_weight=msi_w)
            total = out['loss'] if total is None else total + out['loss']
            elbo = out['elbo'] if elbo is None else elbo + out['elbo']
            msi = out['msi'] if msi is None else msi + out['msi']
        return {'loss': total, 'elbo': elbo, 'msi': msi}

    def interaction_matrix(self) -> Tensor:
        r"""The ``[U, I]`` training interactions as a sparse CSR tensor on
        the model's device."""
        return torch.sparse_csr_tensor(
            self.inter_crow, self.inter_col,
            torch.ones(self.inter_col.numel(), device=self.inter_col.device),
            size=(self.num_users, self.num_items))

    @torch.no_grad()
    def regenerate_graphs(self) -> Dict[str, float]:
        r"""Rebuilds every :math:`G_m` (ALGORITHMS.md §2.6) and applies the
        epoch's edge dropout.  Returns the fraction of generated edges that
        are training interactions (a diagnostic, averaged over
        modalities)."""
        if not self.use_modal_graphs:
            return {}
        U, I = self.num_users, self.num_items
        csr = self.interaction_matrix()
        graphs, eval_graphs, observed = [], [], []
        for diff in self.denoisers:
            edges = generate_topk_edges(diff, csr, U, I, self.rebuild_k,
                                        self.batch, self.exclude_observed)
            observed.append(self._observed_fraction(edges))
            ei, w = normalized_edges(edges, U, I, add_self_loops=True)
            graphs.append(dropout_normalized_edges(ei, w, self.keep_rate))
            eval_graphs.append((ei, w))
        self._graphs = graphs
        self._eval_graphs = None if self.eval_uses_dropped_graph \
            else eval_graphs
        self._adj_cache = {}
        self._scores = None
        return {'regen_observed': sum(observed) / len(observed)}

    def _observed_fraction(self, edges: Tensor) -> float:
        crow, col = self.inter_crow, self.inter_col
        keys = torch.repeat_interleave(
            torch.arange(self.num_users, device=col.device),
            crow.diff()) * self.num_items + col
        gen = edges[0] * self.num_items + edges[1]
        return float(torch.isin(gen, keys).float().mean()) \
            if gen.numel() else 0.0

    # Graph access -------------------------------------------------------
    def _adj(self, key: str, entries: Tuple[Tensor, Tensor]):
        device = self.user_emb.device
        ck = (key, str(device), self.sparse_layout)
        if ck not in self._adj_cache:
            ei, w = entries
            self._adj_cache[ck] = matrix_to_adj(
                ei.to(device), w.to(device), self.num_users + self.num_items,
                self.sparse_layout)
        return self._adj_cache[ck]

    def main_graph(self):
        r"""The main graph :math:`G` in the layout ``sparse_layout``."""
        return self._adj('main', (self.main_index, self.main_weight))

    def modal_graphs(self, for_eval: bool = False):
        r"""The generated graphs :math:`G_m` (a list, modality order) or
        :obj:`None` without them; regenerated first if none exist yet."""
        if not self.use_modal_graphs:
            return None
        if self._graphs is None:
            self.regenerate_graphs()
        if for_eval and self._eval_graphs is not None:
            return [self._adj(f'eval_{k}', g)
                    for k, g in enumerate(self._eval_graphs)]
        return [self._adj(f'train_{k}', g)
                for k, g in enumerate(self._graphs)]

    # Phase 2: BPR + CL --------------------------------------------------
    def embeddings(self, return_views: bool = False, for_eval: bool = False):
        r"""``forward_MM`` (and ``forward_cl_MM``): :math:`(E^*_U, E^*_I)`
        [, views]."""
        feats = [F.normalize(f, dim=1) for f in self.transformed_features()]
        return self.aggregation(
            self.user_emb, self.item_emb, feats, self.main_graph(),
            self.modal_graphs(for_eval), torch.softmax(self.modal_weight, 0),
            return_views=return_views)

    def _needs_views(self) -> bool:
        return (self.use_contrastive and self.ssl_reg != 0 and
                (self.cl_method == 1 or len(self.modalities) > 1))

    def bpr_loss(self, batch: TripletBatch) -> Dict[str, Tensor]:
        r"""BPR (divided by the nominal batch) + L2 on the full ID tables +
        InfoNCE (ALGORITHMS.md §2.7)."""
        self._scores = None
        views = None
        if self._needs_views():
            eu, ei, views = self.embeddings(return_views=True)
        else:
            eu, ei = self.embeddings()
        users, pos, neg = batch.users, batch.pos, batch.neg
        u = eu[users]
        diff = (u * ei[pos]).sum(-1) - (u * ei[neg]).sum(-1)
        bpr = -F.logsigmoid(diff).sum() / self.batch
        reg = self.reg * (self.user_emb.square().sum() +
                          self.item_emb.square().sum())
        loss = bpr + reg
        cl = loss.new_zeros(())
        if views is not None:
            t, bf = self.temp, self.cl_bf16
            if self.cl_method == 0:
                for m in range(len(views) - 1):
                    others = views[m + 1:]
                    cl = cl + info_nce(views[m][0], [v[0] for v in others],
                                       users, t, bf16=bf)
                    cl = cl + info_nce(views[m][1], [v[1] for v in others],
                                       pos, t, bf16=bf)
            else:
                cl = info_nce(eu, [v[0] for v in views], users, t, bf16=bf) \
                    + info_nce(ei, [v[1] for v in views], pos, t, bf16=bf)
            cl = self.ssl_reg * cl
            loss = loss + cl
        return {'loss': loss, 'bpr': bpr.detach(), 'reg': reg.detach(),
                'cl': cl.detach()}

    # Scoring ------------------------------------------------------------
    @torch.no_grad()
    def prepare_scoring(self) -> None:
        eu, ei = self.embeddings(for_eval=True)
        self._scores = (eu, ei)

    def score(self, users: Tensor) -> Tensor:
        if self._scores is None:
            with torch.no_grad():
                self.prepare_scoring()
        eu, ei = self._scores
        return eu[users.to(eu.device)] @ ei.t()

    # Checkpoints ----------------------------------------------------------
    def get_extra_state(self) -> Dict[str, Tensor]:
        r"""The regenerated graphs as a flat dict of tensors
        (``graph.<k>.index`` / ``.weight`` and, when evaluation uses the
        undropped graphs, ``eval_graph.<k>.*``)."""
        state: Dict[str, Tensor] = {}
        for prefix, graphs in (('graph', self._graphs),
                               ('eval_graph', self._eval_graphs)):
            for k, (ei, w) in enumerate(graphs or []):
                state[f'{prefix}.{k}.index'] = ei
                state[f'{prefix}.{k}.weight'] = w
        return state

    def set_extra_state(self, state) -> None:
        if not isinstance(state, Mapping):
            raise ConfigError("DiffMM extra state must be a dict of tensors")
        M = len(self.modalities)
        out = {}
        for prefix in ('graph', 'eval_graph'):
            ks = [k for k in range(M) if f'{prefix}.{k}.index' in state]
            if not ks:
                out[prefix] = None
                continue
            if ks != list(range(M)):
                raise ConfigError(f"DiffMM extra state has {prefix} entries "
                                  f"for {len(ks)} of {M} modalities")
            device = self.user_emb.device
            out[prefix] = [(state[f'{prefix}.{k}.index'].to(device).long(),
                            state[f'{prefix}.{k}.weight'].to(device).float())
                           for k in range(M)]
        self._graphs = out['graph']
        self._eval_graphs = out['eval_graph']
        self._adj_cache = {}
        self._scores = None

    def _apply(self, fn, *args, **kwargs):
        # Moving the model moves the generated graphs too.
        out = super()._apply(fn, *args, **kwargs)
        for attr in ('_graphs', '_eval_graphs'):
            graphs = getattr(self, attr, None)
            if graphs is not None:
                setattr(self, attr, [(fn(ei) if not ei.is_floating_point()
                                      else ei, fn(w)) for ei, w in graphs])
        self._adj_cache = {}
        self._scores = None
        self._snapshot = None
        return out

    def __repr__(self) -> str:
        mods = ', '.join(f'{m}:{getattr(self, f"feature_{k}").size(1)}'
                         for k, m in enumerate(self.modalities))
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, modalities=[{mods}], '
                f'latdim={self.latdim}, gnn_layer={self.gnn_layer}, '
                f'dims={self.dims}, steps={self.steps}, '
                f'cl_method={self.cl_method}, trans={self.trans})')
