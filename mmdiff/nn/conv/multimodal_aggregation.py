r"""Message-passing layers of DiffMM's multi-modal graph aggregation
(docs/algorithms.md §2.3-§2.4).

* :class:`NormalizedPropagation` — one hop :math:`\mathbf{X}' = G
  \mathbf{X}` with given (already normalised) edge weights.
* :class:`MultiModalAggregation` — DiffMM's ``forward_MM`` (the
  recommendation embeddings) and ``forward_cl_MM`` (the per-modality
  contrastive views) for any number of modalities.

Conventions.  The layers follow PyG's ``flow='source_to_target'``, like
every graph function of :mod:`mmdiff.graph`: for an ``edge_index`` ``[2,
E]`` (or an :class:`~torch_geometric.EdgeIndex`) row 0 holds the *source*
and row 1 the *target* node, and :math:`\mathbf{x}'_i = \sum_{(j, i)}
w_{ji} \mathbf{x}_j`; a sparse ``torch`` matrix is the transposed
adjacency ``adj_t`` (rows are targets), i.e. the matrix :math:`G` of
``out = G @ x``.  DiffMM's regenerated graphs are not symmetric after edge
dropout, so the direction matters: pass the output of
:func:`mmdiff.graph.regenerate_graph` (or any :mod:`mmdiff.graph` function)
straight in, or convert it with :func:`mmdiff.graph.to_adj`.

Every format computes the same result (tested); speed differs: on CPU a
fused sparse product is much faster than gather/scatter, and an
:class:`~torch_geometric.EdgeIndex` additionally caches the transposed
structure, so its backward pass does not transpose the matrix again
(``benchmarks/results/propagation.md``).
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import Adj, OptTensor
from torch_geometric.utils import spmm

from mmdiff.graph.adjacency import Graph, split_graph


def _rows(x: Tensor, num_users: int) -> Tuple[Tensor, Tensor]:
    r"""``(x[:U], x[U:])`` as one ``split``: its backward concatenates the
    two gradients, where two slices would each zero-fill and copy a
    full-size gradient and then add them (same values, bit for bit)."""
    u, i = x.split([num_users, x.size(0) - num_users])
    return u, i


class NormalizedPropagation(MessagePassing):
    r"""One propagation hop with given, already normalised edge weights
    (no learnable parameters, no normalisation inside):

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i) \cup \{i\}}
        w_{j,i}\, \mathbf{x}_j,
        \qquad\text{i.e.}\qquad \mathbf{X}' = \hat{G}\,\mathbf{X}

    For DiffMM :math:`\hat{G} = D^{-1/2}(A + I)D^{-1/2}` (docs/algorithms.md
    §2.3) or its edge-dropped version.  This is PyG's
    :class:`~torch_geometric.nn.conv.LGConv` with ``normalize=False``, plus
    fused propagation over an :class:`~torch_geometric.EdgeIndex` with edge
    weights.

    Args:
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          node features :math:`(|\mathcal{V}|, F)`,
          edge indices :math:`(2, |\mathcal{E}|)` (or an ``EdgeIndex`` sorted
          by column, or a sparse ``adj_t`` matrix),
          edge weights :math:`(|\mathcal{E}|)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, F)`
    """
    SUPPORTS_FUSED_EDGE_INDEX = True

    def __init__(self, **kwargs):
        kwargs.setdefault('aggr', 'add')
        super().__init__(**kwargs)

    def forward(self, x: Tensor, edge_index: Adj,
                edge_weight: OptTensor = None) -> Tensor:
        # propagate_type: (x: Tensor, edge_weight: OptTensor)
        return self.propagate(edge_index, x=x, edge_weight=edge_weight)

    def message(self, x_j: Tensor, edge_weight: OptTensor) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t: Adj, x: Tensor,
                              edge_weight: OptTensor = None) -> Tensor:
        if not torch.jit.is_scripting() and isinstance(adj_t, EdgeIndex):
            return adj_t.matmul(other=x, input_value=edge_weight,
                                reduce=self.aggr, transpose=True)
        return spmm(adj_t, x, reduce=self.aggr)


class MultiModalAggregation(NormalizedPropagation):
    r"""DiffMM's multi-modal graph aggregation (docs/algorithms.md §2.4) over
    the main user-item graph :math:`G` and one generated graph :math:`G_m` per
    modality :math:`m \in \mathcal{M}`.

    With :math:`\bar{F}_m` the row-normalised item features of modality
    :math:`m`, :math:`w = \mathrm{softmax}(\omega)` and ``[A; B]`` stacking
    user rows over item rows, the embeddings (``forward_MM``) are

    .. math::
        H_m &= G\,[E_U; \bar{F}_m], \qquad
        H'_m = G\,[H_m^{U}; E_I], \qquad
        \mathrm{Adj}_m = G_m\,[E_U; E_I] \\
        Z &= \sum_{m} w_m \big(H_m + H'_m + \lambda_{adj}\,
        \mathrm{Adj}_m\big) \\
        E &= \sum_{l=0}^{L} G^{l} Z, \qquad
        E^{*} = E + \lambda_{ris}\, \mathrm{rownorm}(Z)

    (layers are *summed*, layer 0 included) and the contrastive views
    (``forward_cl_MM``) are

    .. math::
        V_m = \sum_{l=0}^{L} G^{l}\, G_m\,[E_U; \bar{F}_m].

    The computation is rearranged so that it needs few sparse products
    (exactly equal in exact arithmetic, checked against the per-modality
    formula in the tests): by linearity :math:`\sum_m w_m H_m =
    G[(\sum_m w_m) E_U; \sum_m w_m \bar{F}_m]` and similarly for
    :math:`H'_m`, so the main graph is applied twice at width :math:`d`
    instead of :math:`2|\mathcal{M}|` times; each :math:`G_m` is applied once
    to :math:`[E_U, E_U; E_I, \bar{F}_m]` (width :math:`2d`), and the
    :math:`L` main-graph layers of :math:`Z` and of all views run as one
    product of width :math:`(1 + |\mathcal{M}|)\,d`.

    Without generated graphs (``modal_graphs=None``, the
    ``use_modal_graphs=False`` ablation) the :math:`\mathrm{Adj}_m` terms are
    dropped and the views use the main graph: :math:`V_m = \sum_l G^l H_m`.

    Args:
        num_users (int): :math:`U` (rows ``0..U-1`` are users).
        num_layers (int): :math:`L`, main-graph layers.  (default: ``1``)
        ris_lambda (float): :math:`\lambda_{ris}`.  (default: ``0.5``)
        ris_adj_lambda (float): :math:`\lambda_{adj}`.  (default: ``0.2``)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          user embeddings :math:`(U, d)`, item embeddings :math:`(I, d)`,
          a list (or name-keyed dict) of :math:`|\mathcal{M}|` item features
          :math:`(I, d)`, modality weights :math:`(|\mathcal{M}|)`,
          graphs over :math:`N = U + I` nodes (see :data:`Graph`)
        - **output:** :math:`E^*_U` :math:`(U, d)`, :math:`E^*_I`
          :math:`(I, d)` and, with ``return_views=True``, a list of
          :math:`|\mathcal{M}|` pairs :math:`(V_m^U, V_m^I)`
    """

    def __init__(self, num_users: int, num_layers: int = 1,
                 ris_lambda: float = 0.5, ris_adj_lambda: float = 0.2,
                 **kwargs):
        super().__init__(**kwargs)
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.num_users = num_users
        self.num_layers = num_layers
        self.ris_lambda = ris_lambda
        self.ris_adj_lambda = ris_adj_lambda

    # ------------------------------------------------------------------
    def hop(self, x: Tensor, graph: Graph) -> Tensor:
        r"""One sparse product ``G @ x`` with ``graph`` in any format."""
        adj, w = split_graph(graph)
        return self.propagate(adj, x=x, edge_weight=w)

    def layers(self, x: Tensor, graph: Graph) -> Tensor:
        r""":math:`\sum_{l=0}^{L} G^{l} x` (LightGCN layers, summed)."""
        out = x
        for _ in range(self.num_layers):
            x = self.hop(x, graph)
            out = out + x
        return out

    @staticmethod
    def _as_list(obj, what: str) -> Optional[List]:
        if obj is None:
            return None
        if isinstance(obj, Mapping):
            return list(obj.values())
        if isinstance(obj, (list, tuple)):
            return list(obj)
        raise TypeError(f"{what} must be a list or a dict, got "
                        f"{type(obj).__name__}")

    def forward(  # type: ignore[override]
        self,
        user_emb: Tensor,
        item_emb: Tensor,
        features: Union[Sequence[Tensor], Mapping[str, Tensor]],
        graph: Graph,
        modal_graphs: Optional[Union[Sequence[Graph],
                                     Mapping[str, Graph]]] = None,
        modality_weight: Optional[Tensor] = None,
        return_views: bool = False,
    ):
        r"""Runs ``forward_MM`` (and ``forward_cl_MM`` when
        ``return_views``) sharing all common sparse products.

        Args:
            user_emb (Tensor): :math:`E_U`, ``[U, d]``.
            item_emb (Tensor): :math:`E_I`, ``[I, d]``.
            features (list or dict): :math:`\bar{F}_m`, each ``[I, d]``
                (already row-normalised), in modality order.
            graph (Graph): The main graph :math:`G`.
            modal_graphs (list or dict, optional): :math:`G_m` in the same
                order; :obj:`None` drops the generated-graph terms.
            modality_weight (Tensor, optional): :math:`w` ``[|M|]`` (already
                soft-maxed); default uniform.
            return_views (bool): Also return the contrastive views.
        """
        feats = self._as_list(features, 'features')
        mgraphs = self._as_list(modal_graphs, 'modal_graphs')
        M = len(feats)
        if M == 0:
            raise ValueError("at least one modality is needed")
        if mgraphs is not None and len(mgraphs) != M:
            raise ValueError(f"{M} modalities but {len(mgraphs)} modality "
                             f"graphs")
        U, d = self.num_users, user_emb.size(1)
        if modality_weight is None:
            modality_weight = user_emb.new_full((M,), 1.0 / M)
        w = modality_weight
        w_sum = w.sum()
        ego_ui = torch.cat([user_emb, item_emb], dim=0)

        # Generated graphs: one product of width 2d per modality, giving
        # Adj_m = G_m [E_U; E_I] and the view seeds G_m [E_U; F_m].
        adj_sum = None
        seeds: List[Tensor] = []
        if mgraphs is not None:
            for m in range(M):
                if return_views:
                    x = torch.cat([ego_ui, torch.cat([user_emb, feats[m]])],
                                  dim=1)
                    adj_m, seed = self.hop(x, mgraphs[m]).split(d, dim=1)
                    seeds.append(seed)
                else:
                    adj_m = self.hop(ego_ui, mgraphs[m])
                adj_sum = w[m] * adj_m if adj_sum is None \
                    else adj_sum + w[m] * adj_m

        # Main graph, first hop.
        if return_views and mgraphs is None:
            # The views need every H_m: one product of width |M| d.
            x = torch.cat([user_emb.repeat(1, M), torch.cat(feats, dim=1)])
            h_all = self.hop(x, graph)
            hs = h_all.split(d, dim=1)
            seeds = list(hs)
            h = sum(w[m] * hs[m] for m in range(M))
        else:
            f_mix = sum(w[m] * feats[m] for m in range(M))
            h = self.hop(torch.cat([w_sum * user_emb, f_mix]), graph)
        # Second hop: [sum_m w_m H_m^U ; (sum_m w_m) E_I].
        h2 = self.hop(torch.cat([_rows(h, U)[0], w_sum * item_emb]), graph)
        z = h + h2
        if adj_sum is not None:
            z = z + self.ris_adj_lambda * adj_sum

        if return_views:
            e, *vs = self.layers(torch.cat([z] + seeds, dim=1),
                                 graph).split(d, dim=1)
            views = [_rows(v, U) for v in vs]
        else:
            e = self.layers(z, graph)
        e = e + self.ris_lambda * F.normalize(z, dim=1)
        if return_views:
            return (*_rows(e, U), views)
        return _rows(e, U)

    def views(
        self,
        user_emb: Tensor,
        features: Union[Sequence[Tensor], Mapping[str, Tensor]],
        graph: Graph,
        modal_graphs: Optional[Union[Sequence[Graph],
                                     Mapping[str, Graph]]] = None,
    ) -> List[Tuple[Tensor, Tensor]]:
        r"""DiffMM's ``forward_cl_MM`` alone: :math:`V_m = \sum_{l=0}^{L}
        G^l G_m [E_U; \bar{F}_m]` for every modality, as ``[(V_m^U,
        V_m^I), ...]`` (the main graph replaces :math:`G_m` when
        ``modal_graphs`` is :obj:`None`).  All views share one product per
        layer."""
        feats = self._as_list(features, 'features')
        mgraphs = self._as_list(modal_graphs, 'modal_graphs')
        M, U, d = len(feats), self.num_users, user_emb.size(1)
        if mgraphs is None:
            x = torch.cat([user_emb.repeat(1, M), torch.cat(feats, dim=1)])
            seeds = self.hop(x, graph)
        else:
            seeds = torch.cat([
                self.hop(torch.cat([user_emb, feats[m]]), mgraphs[m])
                for m in range(M)], dim=1)
        out = self.layers(seeds, graph)
        return [_rows(v, U) for v in out.split(d, dim=1)]

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_layers={self.num_layers}, '
                f'ris_lambda={self.ris_lambda}, '
                f'ris_adj_lambda={self.ris_adj_lambda})')
