r"""DiffMM (Jiang et al., "DiffMM: Multi-Modal Diffusion Model for
Recommendation", ACM MM 2024), following docs/algorithms.md §2 and its
decisions D1-D9 (the official code HKUDS/DiffMM is the ground truth).

One training epoch (docs/algorithms.md §2.8) is two phases of the
:class:`~mmdiff.nn.models.base.Recommender` protocol:

1. ``'diffusion'`` (user batches): one
   :class:`~mmdiff.nn.diffusion.InteractionDiffusion` per modality learns
   to denoise interaction rows, with modality-aware signal injection
   (§2.6).  Its ``after`` hook regenerates every modality graph
   :math:`G_m` from the denoised rows (top-``rebuild_k`` items per user,
   :math:`D^{-1/2}(A+I)D^{-1/2}`, then edge dropout once per epoch).
2. ``'bpr'`` (BPR triples): ID embeddings, feature transforms and modality
   weights learn from BPR + L2 + cross-modal InfoNCE over
   :class:`~mmdiff.nn.conv.MultiModalAggregation` (§2.4, §2.7).

Scores are :math:`\langle E^*_U[u], E^*_I[i] \rangle` of one full forward.
"""
from __future__ import annotations

from typing import (Callable, Dict, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from mmdiff.checks import (
    check_choice,
    check_float,
    check_int,
    check_sizes,
)
from mmdiff.data.hetero import (
    edge_index_of,
    edges_to_csr,
    get_modalities,
    num_items,
    num_users,
)
from mmdiff.errors import ConfigError
from mmdiff.graph import dropout_normalized_edges, normalized_edges, to_adj
from mmdiff.graph.store import GraphStore
from mmdiff.nn.contrastive import info_nce
from mmdiff.data.relevance import (
    ModalityRelevance,
    modality_relevance,
    relevant_modalities,
)
from mmdiff.nn.conv.multimodal_aggregation import MultiModalAggregation
from mmdiff.nn.denoisers.mlp import DiffMMDenoiser
from mmdiff.nn.diffusion import (
    GaussianDiffusion,
    InteractionDiffusion,
    generate_topk_edges,
)
from mmdiff.nn.models.base import (
    Recommender,
    TrainingPhase,
    TripletBatch,
    UserBatch,
)
from mmdiff.sharding import all_gather_varlen, current_ranks, current_shard

#: ``precision`` values: what runs in bfloat16 (CPU/CUDA autocast).
PRECISIONS = ('float32', 'bf16-denoiser', 'bf16')

#: ``denoiser_factory(num_items, modality) -> module`` (see
#: :mod:`mmdiff.nn.denoisers.base` for the contract).
DenoiserFactory = Callable[[int, Optional[str]], torch.nn.Module]

TRANSFORMS = ('proj', 'linear')


class FeatureTransform(torch.nn.Module):
    r"""DiffMM's per-modality item-feature transform (docs/algorithms.md
    §2.2).

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
    kind per modality (docs/algorithms.md D8).  ``trans=2`` is the official
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


class DiffMM(Recommender):
    r"""DiffMM: multi-modal diffusion for recommendation.

    Parameters (docs/algorithms.md §2.2): ID embeddings :math:`E_U, E_I`
    (Xavier-uniform), one feature transform per modality
    (``FeatureTransform``), modality weights :math:`\omega` (init
    :math:`1/|M|`, used as :math:`\mathrm{softmax}(\omega)`), and one
    denoiser per modality (default :class:`~mmdiff.nn.denoisers.
    DiffMMDenoiser`; any module meeting :class:`~mmdiff.nn.denoisers.
    Denoiser` through ``denoiser_factory``).

    **Diffusion phase** (per user batch, rows :math:`x_0`; §2.6):
    :math:`\mathcal{L}_{diff} = \sum_m \mathcal{L}_{elbo,m} +
    \lambda_{msi}\,\mathcal{L}_{msi,m}` with the un-normalised transform
    output :math:`F_m` and :math:`E_I` detached (D6), uniform steps (D4).
    After the phase every :math:`G_m` is rebuilt from the denoised rows of
    all users: reverse process from the clean row (``sampling_steps`` = 0),
    top ``rebuild_k`` items *including* observed ones (D5), bipartite
    :math:`D^{-1/2}(A+I)D^{-1/2}`, and edge dropout applied once per epoch
    to the normalised entries (self-loops too, both directions
    independently, kept values scaled by :math:`1/\rho`; D2).  The dropped
    graph serves all BPR batches of the epoch and, with
    ``eval_uses_dropped_graph=True`` (parity), its evaluation.

    **BPR phase** (per triple batch; §2.7): with :math:`(E^*_U, E^*_I)` and
    the views :math:`V_m` of :class:`~mmdiff.nn.conv.MultiModalAggregation`,

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_{(u,i,j)} \log\sigma(
        \hat{y}_{ui} - \hat{y}_{uj})
        + \lambda_{reg}(\lVert E_U\rVert_F^2 + \lVert E_I\rVert_F^2)
        + \lambda_{ssl}\,\mathcal{L}_{cl}

    where the BPR sum is divided by the *nominal* batch size :math:`B`
    (``batch_size``) also for the last partial batch, and the L2 term
    covers the full ID tables (D7).  ``cl_method=0``: :math:`\mathcal{L}_{cl}
    = \sum_{m<m'} \mathrm{InfoNCE}(V_m^U, V_{m'}^U, users) +
    \mathrm{InfoNCE}(V_m^I, V_{m'}^I, pos)`; ``cl_method=1``: :math:`\sum_m
    \mathrm{InfoNCE}(E^*_U, V_m^U, users) + \mathrm{InfoNCE}(E^*_I, V_m^I,
    pos)` (:func:`~mmdiff.nn.contrastive.info_nce`; only the selected
    variant is computed).

    Ablations: ``use_modal_graphs=False`` drops the denoisers, the diffusion
    phase and the :math:`\mathrm{Adj}_m` terms, and the views propagate over
    the main graph; ``use_contrastive=False`` drops
    :math:`\mathcal{L}_{cl}`; ``use_msi=False`` drops
    :math:`\mathcal{L}_{msi}`.

    Regenerated graphs (a ``GraphStore``) are
    saved by :meth:`get_extra_state` as plain tensors
    (``torch.load(weights_only=True)`` works).  The model follows the
    device of its parameters and never densifies the :math:`U \times I`
    matrix (only ``[batch, I]`` rows).

    Use :meth:`from_data`; the constructor takes tensors.  The official
    code's names are accepted as aliases (:attr:`hparam_aliases`, table in
    ``docs/hyperparameters.md``).

    Example, a denoiser of your own for every modality::

        class MyDenoiser(torch.nn.Module):            # (x_t, t) -> x0_hat
            def __init__(self, num_items):
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(num_items, 256), torch.nn.Tanh(),
                    torch.nn.Linear(256, num_items))

            def forward(self, x_t, t):
                return self.net(x_t)

        model = DiffMM.from_data(
            data, denoiser_factory=lambda num_items, modality:
            MyDenoiser(num_items))

    The defaults are those of the official code (docs/algorithms.md §2.9).

    Args:
        embedding_dim (int): :math:`d` (official: ``latdim``).
        num_layers (int): :math:`L` main-graph layers (``gnn_layer``).
        reg (float): L2 weight :math:`\lambda_{reg}`.
        ssl_reg (float): InfoNCE weight :math:`\lambda_{ssl}`.
        temperature (float): :math:`\tau` (``temp``).
        keep_rate (float): Edge keep probability :math:`\rho` of the
            generated graphs.
        hidden_dims (list of int): Denoiser hidden sizes (``dims``).
        time_dim (int): Step-embedding size (``d_emb_size``).
        norm (bool): Row-normalise the denoiser input.
        dropout (float): Input dropout of the denoisers.
        steps, noise_scale, noise_min, noise_max: The schedule (§2.6).
        beta_fixed (float): :math:`\beta_0` overwrite (D3).
        sampling_steps (int): Reverse-process start at regeneration.
        sampling_noise (bool): Noise in the reverse process at regeneration.
        rebuild_k (int): Generated items per user (docs/algorithms.md
            §2.9 on the choice of 1).
        msi_weight (float): :math:`\lambda_{msi}` (``e_loss``).
        ris_lambda, ris_adj_lambda (float): :math:`\lambda_{ris}`,
            :math:`\lambda_{adj}`.
        trans: 0 (``'proj'``), 1 (``'linear'``), 2 (``image`` proj, others
            linear), or a per-modality list / dict of kinds (D8).
        cl_method (int): 0 modality-vs-modality, 1 modality-vs-main.
        lr (float): Adam lr of both phases.
        batch_size (int): User batch and triple batch size; also the
            nominal BPR divisor (``batch``).
        exclude_observed (bool): Never regenerate training edges (D5 option).
        eval_uses_dropped_graph (bool): Evaluate with the epoch's dropped
            graphs (parity, D2) or the undropped ones.
        use_modal_graphs, use_contrastive, use_msi (bool): Ablations.
        precision (str): ``'float32'``; ``'bf16-denoiser'`` (bfloat16
            autocast for the denoisers, training and regeneration);
            ``'bf16'`` (also the InfoNCE similarity products).  Losses are
            float32 throughout.  Measured speed and quality of each setting:
            ``benchmarks/results/diffmm_speed.md``.
        denoiser_factory (callable, optional): ``factory(num_items,
            modality) -> module``, called once per modality; default: a
            :class:`~mmdiff.nn.denoisers.DiffMMDenoiser` with
            ``hidden_dims``, ``time_dim``, ``dropout`` and ``norm``.
        modality_screening (bool): Keep only the modalities that pass the
            relevance test of :func:`~mmdiff.data.relevance.
            modality_relevance` (the highest-scoring one when none passes:
            DiffMM needs one); the result is :attr:`modality_relevance`.
            The torch random state is not used, so with every modality kept
            the model is the one without screening (docs/algorithms.md D24).
            (default: :obj:`False`, the paper)
        screening_alpha (float): Level :math:`\alpha` of that test.
    """
    name = 'diffmm'
    requires_modalities = True
    hparam_aliases = {
        'latdim': 'embedding_dim',
        'gnn_layer': 'num_layers',
        'dims': 'hidden_dims',
        'd_emb_size': 'time_dim',
        'batch': 'batch_size',
        'e_loss': 'msi_weight',
        'temp': 'temperature',
        'denoiser_dropout': 'dropout',
    }

    def __init__(
        self,
        num_users: int,
        num_items: int,
        edge_index: Tensor,
        features: Mapping[str, Tensor],
        *,
        embedding_dim: int = 64,
        num_layers: int = 1,
        reg: float = 1e-5,
        ssl_reg: float = 1e-2,
        temperature: float = 0.5,
        keep_rate: float = 0.5,
        hidden_dims: Union[Sequence[int], str] = (1000,),
        time_dim: int = 10,
        norm: bool = False,
        dropout: float = 0.5,
        steps: int = 5,
        noise_scale: float = 0.1,
        noise_min: float = 1e-4,
        noise_max: float = 0.02,
        beta_fixed: Optional[float] = 1e-4,
        sampling_steps: int = 0,
        sampling_noise: bool = False,
        rebuild_k: int = 1,
        msi_weight: float = 0.1,
        ris_lambda: float = 0.5,
        ris_adj_lambda: float = 0.2,
        trans=0,
        cl_method: int = 0,
        lr: float = 1e-3,
        batch_size: int = 1024,
        exclude_observed: bool = False,
        eval_uses_dropped_graph: bool = True,
        use_modal_graphs: bool = True,
        use_contrastive: bool = True,
        use_msi: bool = True,
        precision: str = 'float32',
        denoiser_factory: Optional[DenoiserFactory] = None,
        modality_screening: bool = False,
        screening_alpha: float = 0.01,
    ):
        super().__init__()
        self.modality_screening = bool(modality_screening)
        #: ``{name: ModalityRelevance}`` of the screening (empty without).
        self.modality_relevance: Dict[str, ModalityRelevance] = {}
        if self.modality_screening and features:
            self.modality_relevance = modality_relevance(
                edge_index, num_users, num_items, features,
                alpha=screening_alpha)
            keep = relevant_modalities(self.modality_relevance, at_least=1)
            if isinstance(trans, (list, tuple)) and \
                    len(trans) == len(features):
                trans = [t for m, t in zip(features, trans) if m in keep]
            elif isinstance(trans, Mapping):
                trans = {m: t for m, t in trans.items() if m in keep}
            features = {m: features[m] for m in keep}
        names = list(features)
        if not names:
            raise ConfigError("DiffMM needs at least one item modality; the "
                              "data has none (add one with "
                              "mmdiff.data.hetero.add_modality)")
        self.num_users = check_int('num_users', num_users, 1)
        self.num_items = check_int('num_items', num_items, 1)
        self.modalities = names
        self.embedding_dim = check_int('embedding_dim', embedding_dim, 1)
        self.num_layers = check_int('num_layers', num_layers, 0)
        self.reg = check_float('reg', reg, 0)
        self.ssl_reg = check_float('ssl_reg', ssl_reg, 0)
        self.temperature = check_float('temperature', temperature, 0,
                                       lo_open=True)
        self.keep_rate = check_float('keep_rate', keep_rate, 0, 1,
                                     lo_open=True)
        self.hidden_dims = check_sizes('hidden_dims', hidden_dims)
        self.time_dim = check_int('time_dim', time_dim, 1)
        self.dropout = check_float('dropout', dropout, 0, 1, hi_open=True)
        self.steps = check_int('steps', steps, 1)
        self.sampling_steps = check_int('sampling_steps', sampling_steps, 0,
                                        self.steps)
        self.rebuild_k = check_int('rebuild_k', rebuild_k, 1, self.num_items)
        self.msi_weight = check_float('msi_weight', msi_weight, 0)
        self.ris_lambda = check_float('ris_lambda', ris_lambda)
        self.ris_adj_lambda = check_float('ris_adj_lambda', ris_adj_lambda)
        self.cl_method = check_int('cl_method', cl_method, 0, 1)
        self.lr = check_float('lr', lr, 0, lo_open=True)
        self.batch_size = check_int('batch_size', batch_size, 1)
        self.precision = check_choice('precision', precision, PRECISIONS)
        self.norm = bool(norm)
        self.sampling_noise = bool(sampling_noise)
        self.exclude_observed = bool(exclude_observed)
        self.eval_uses_dropped_graph = bool(eval_uses_dropped_graph)
        self.use_modal_graphs = bool(use_modal_graphs)
        self.use_contrastive = bool(use_contrastive)
        self.use_msi = bool(use_msi)
        kinds = _transform_kinds(trans, names)
        self.trans = kinds
        # Propagation format of the graphs; every layout gives the same
        # result (tested), the default is the fastest measured.
        self._sparse_layout = 'edge_index_obj'

        # Data-derived, non-persistent buffers (rebuilt from the data).
        U, I = self.num_users, self.num_items
        edge_index = edge_index.long().cpu()
        ei, w = normalized_edges(edge_index, U, I, add_self_loops=True)
        self.register_buffer('main_index', ei, persistent=False)
        self.register_buffer('main_weight', w, persistent=False)
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
        d = self.embedding_dim
        self.user_emb = torch.nn.Parameter(torch.empty(U, d))
        self.item_emb = torch.nn.Parameter(torch.empty(I, d))
        self.transforms = torch.nn.ModuleList(
            FeatureTransform(features[m].size(1), d, kinds[k])
            for k, m in enumerate(names))
        self.modal_weight = torch.nn.Parameter(
            torch.full((len(names),), 1.0 / len(names)))
        self.aggregation = MultiModalAggregation(
            U, num_layers=self.num_layers, ris_lambda=self.ris_lambda,
            ris_adj_lambda=self.ris_adj_lambda)
        if self.use_modal_graphs:
            if denoiser_factory is None:
                def denoiser_factory(n: int, modality: Optional[str] = None):
                    return DiffMMDenoiser(n, self.hidden_dims, self.time_dim,
                                          self.dropout, self.norm)
            self.diffusion = GaussianDiffusion(noise_scale, noise_min,
                                               noise_max, self.steps,
                                               beta_fixed=beta_fixed)
            self.denoisers = torch.nn.ModuleList(
                InteractionDiffusion(
                    denoiser_factory(I, m), self.diffusion,
                    sampling_steps=self.sampling_steps,
                    sampling_noise=self.sampling_noise,
                    autocast_bf16=self.precision != 'float32')
                for m in names)
        else:
            self.diffusion = None
            self.denoisers = torch.nn.ModuleList()
        self.graphs = GraphStore(U + I, len(names))
        self.reset_parameters()
        self._snapshot: Optional[tuple] = None
        self._scores: Optional[Tuple[Tensor, Tensor]] = None
        self._main_adj = None

    # ------------------------------------------------------------------
    @classmethod
    def canonical_hparams(cls, hparams, prefer_alias: bool = False):
        r"""Aliases, plus the two former bfloat16 switches of the official
        command lines of this library (``autocast_bf16``, ``cl_bf16``),
        translated to ``precision``."""
        hparams = dict(hparams)
        flags = {k: bool(hparams.pop(k)) for k in ('autocast_bf16',
                                                   'cl_bf16')
                 if k in hparams}
        if flags:
            den, cl = flags.get('autocast_bf16', False), \
                flags.get('cl_bf16', False)
            if cl and not den:
                raise ConfigError("cl_bf16 without autocast_bf16 has no "
                                  "precision setting; use precision='bf16' "
                                  "(both) or 'bf16-denoiser'")
            value = 'bf16' if cl else 'bf16-denoiser' if den else 'float32'
            if 'precision' in hparams and hparams['precision'] != value \
                    and not prefer_alias:
                raise ConfigError(f"DiffMM: autocast_bf16/cl_bf16 give "
                                  f"precision={value!r}, but precision="
                                  f"{hparams['precision']!r} is set too")
            hparams['precision'] = value
        return super().canonical_hparams(hparams, prefer_alias)

    @classmethod
    def from_data(cls, data: HeteroData, modalities=None,
                  **hparams) -> 'DiffMM':
        r"""Builds DiffMM from the canonical data: the training edges, and
        the item modalities ``modalities`` (a name, a list of names, or
        :obj:`None` for all, in the data's order).  Unknown
        hyper-parameters raise :class:`~mmdiff.errors.ConfigError`."""
        hparams = cls.validated_hparams(hparams)
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
            reset = getattr(d.denoiser, 'reset_parameters', None)
            if reset is not None:
                reset()
        self.graphs.clear()
        self._scores = None

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
                batch_size=self.batch_size, after=self.regenerate_graphs,
                after_name='regenerate'))
        out.append(TrainingPhase(
            'bpr', 'triplets', self.bpr_loss, self.main_parameters(),
            lr=self.lr, weight_decay=0.0, batch_size=self.batch_size,
            reduction='shard'))
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
        r""":math:`\sum_m \mathcal{L}_{elbo,m} + \lambda_{msi}
        \mathcal{L}_{msi,m}` on the batch's rows (sparse: the denoisers'
        fused loss never densifies them)."""
        if not self.use_modal_graphs:
            raise ConfigError("use_modal_graphs=False: DiffMM has no "
                              "diffusion phase")
        rows = batch.sparse_rows.to(self.user_emb.device)
        msi_w = self.msi_weight if self.use_msi else 0.0
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
        r"""Rebuilds every :math:`G_m` (docs/algorithms.md §2.6) and applies
        the epoch's edge dropout.  Returns the fraction of generated edges that
        are training interactions (a diagnostic, averaged over
        modalities)."""
        if not self.use_modal_graphs:
            return {}
        U, I = self.num_users, self.num_items
        csr = self.interaction_matrix()
        graphs, eval_graphs, observed = [], [], []
        # Under a distributed trainer each rank denoises a contiguous block
        # of user batches and the edges are gathered in batch order: the
        # same edges as one process.  The reverse process with sampling
        # noise draws per batch, so it runs replicated instead.
        ranks = None if self.sampling_noise else current_ranks()
        blocks = None if ranks is None else ranks.block_range(
            -(-U // self.batch_size))
        for diff in self.denoisers:
            edges = generate_topk_edges(diff, csr, U, I, self.rebuild_k,
                                        self.batch_size,
                                        self.exclude_observed, blocks)
            if ranks is not None:
                edges = all_gather_varlen(edges.t().contiguous(),
                                          ranks.world_size).t()
            observed.append(self._observed_fraction(edges))
            ei, w = normalized_edges(edges, U, I, add_self_loops=True)
            graphs.append(dropout_normalized_edges(ei, w, self.keep_rate))
            eval_graphs.append((ei, w))
        self.graphs.set(graphs, None if self.eval_uses_dropped_graph
                        else eval_graphs)
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
    def main_graph(self):
        r"""The main graph :math:`G` in the layer format."""
        device = self.user_emb.device
        key = (str(device), self._sparse_layout)
        if self._main_adj is None or self._main_adj[0] != key:
            self._main_adj = (key, to_adj(
                self.main_index.to(device), self.main_weight.to(device),
                self.num_users + self.num_items, self._sparse_layout))
        return self._main_adj[1]

    def modal_graphs(self, for_eval: bool = False):
        r"""The generated graphs :math:`G_m` (a list, modality order) in the
        layer format, or :obj:`None` without them; regenerated first if none
        exist yet."""
        if not self.use_modal_graphs:
            return None
        if not self.graphs:
            self.regenerate_graphs()
        return self.graphs.adjacencies(for_eval, self.user_emb.device,
                                       self._sparse_layout)

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
        InfoNCE (docs/algorithms.md §2.7).  Under a sharded batch
        (:func:`~mmdiff.sharding.current_shard`) every entry is this rank's
        additive share (phase ``reduction='shard'``)."""
        self._scores = None
        views = None
        if self._needs_views():
            eu, ei, views = self.embeddings(return_views=True)
        else:
            eu, ei = self.embeddings()
        users, pos, neg = batch.users, batch.pos, batch.neg
        u = eu[users]
        diff = (u * ei[pos]).sum(-1) - (u * ei[neg]).sum(-1)
        bpr = -F.logsigmoid(diff).sum() / self.batch_size
        reg = self.reg * (self.user_emb.square().sum() +
                          self.item_emb.square().sum())
        # Under a sharded batch: this rank's additive share of every term
        # (the BPR sum is already one; the full-table L2 is shared by all
        # ranks; InfoNCE is a mean over the batch's anchors against all
        # nodes, so it is weighted by n_r / n).
        shard = current_shard()
        if shard is not None:
            bpr = bpr * shard.sum_scale
            reg = reg * shard.replica_scale
        loss = bpr + reg
        cl = loss.new_zeros(())
        if views is not None:
            t, bf = self.temperature, self.precision == 'bf16'
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
            if shard is not None:
                cl = cl * shard.mean_scale
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
        (``GraphStore.state``)."""
        return self.graphs.state()

    def set_extra_state(self, state) -> None:
        self.graphs.load_state(state, self.user_emb.device)
        self._scores = None

    def _apply(self, fn, *args, **kwargs):
        # Moving the model moves the generated graphs too.
        out = super()._apply(fn, *args, **kwargs)
        graphs = getattr(self, 'graphs', None)
        if graphs is not None:
            graphs.apply(fn)
        self._main_adj = None
        self._scores = None
        self._snapshot = None
        return out

    @property
    def dropped_modalities(self) -> List[str]:
        r"""The modalities the screening left out (in data order)."""
        return [m for m, r in self.modality_relevance.items() if not r.keep
                and m not in self.modalities]

    def __repr__(self) -> str:
        mods = ', '.join(f'{m}:{getattr(self, f"feature_{k}").size(1)}'
                         for k, m in enumerate(self.modalities))
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, modalities=[{mods}], '
                f'embedding_dim={self.embedding_dim}, '
                f'num_layers={self.num_layers}, '
                f'hidden_dims={self.hidden_dims}, steps={self.steps}, '
                f'cl_method={self.cl_method}, trans={self.trans})')
