r"""User modality preference by one hop of normalised bipartite message
passing (LD4MRec, Eq. 14; docs/algorithms.md §4.1)."""
from __future__ import annotations

from typing import Final, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import Adj, OptTensor, SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, spmm

from mmdiff.errors import DataError
from mmdiff.graph.adjacency import check_edge_index, user_item_to_item_user
from mmdiff.graph.norm import sym_norm_weights


def _norm_torch_sparse(adj_t: Tensor, dtype: torch.dtype) -> Tensor:
    r"""Normalises a ``[U, I]`` (target x source) torch sparse matrix to
    :math:`D_u^{-1/2} A D_i^{-1/2}` and returns it as CSR."""
    if adj_t.layout != torch.sparse_csr:
        if adj_t.layout == torch.sparse_coo:
            adj_t = adj_t.coalesce()
        adj_t = adj_t.to_sparse_csr()
    crow, col = adj_t.crow_indices(), adj_t.col_indices()
    num_rows, num_cols = adj_t.shape
    row = torch.repeat_interleave(torch.arange(num_rows, device=crow.device),
                                  crow[1:] - crow[:-1])
    val = sym_norm_weights(row, col, num_rows, num_cols, adj_t.values(),
                           dtype)
    return torch.sparse_csr_tensor(crow, col, val, size=(num_rows, num_cols))


class ModalityPreference(MessagePassing):
    r"""The user modality preference operator of `"LD4MRec: Simplifying and
    Powering Diffusion Model for Multimedia Recommendation"
    <https://arxiv.org/abs/2309.15363>`_ (Eq. 14): every user aggregates the
    (raw, fixed) features of the items it interacted with, symmetrically
    normalised by both degrees.

    .. math::
        \mathbf{e}_{u,m} = \sum_{i \in \mathcal{N}(u)}
        \frac{w_{i,u}}{\sqrt{\deg(u)\,\deg(i)}}\, \mathbf{e}_{i,m},
        \qquad\text{i.e.}\qquad
        E_{U,m} = \tilde{R} X_m,\quad
        \tilde{R} = D_U^{-1/2} R D_I^{-1/2}

    with :math:`w_{i,u} = 1` and :math:`\deg(u) = |\mathcal{N}_u|`,
    :math:`\deg(i) = |\mathcal{N}_i|` for an unweighted graph (weighted
    degrees otherwise).  Users without interactions get a zero vector.  The
    layer has no parameters and works with any number of feature channels,
    so it serves any GNN recommender that needs a one-hop, LightGCN-style
    item-to-user aggregation.

    The graph is bipartite in PyG's source-to-target convention: **items are
    the sources and users the targets**.  It can be given as

    * a ``[2, E]`` ``edge_index`` with item ids in row 0 and user ids in
      row 1, plus the required ``size=(num_items, num_users)`` (use
      :func:`~mmdiff.graph.user_item_to_item_user` or
      :meth:`forward_user_item` for the (user, item) layout of
      :mod:`mmdiff` data; without ``size``, or with ids out of range for
      it, the layer raises :class:`~mmdiff.errors.DataError` naming the
      expected orientation);
    * a :class:`torch_geometric.EdgeIndex` of the same layout with
      ``sparse_size=(num_items, num_users)``; sorted by column it takes the
      fused sparse-matrix product (:obj:`SUPPORTS_FUSED_EDGE_INDEX`);
    * the *transposed* adjacency ``adj_t`` of shape ``[num_users,
      num_items]`` (rows = users) as a :obj:`torch.sparse` CSR/COO/CSC tensor
      or a :class:`torch_sparse.SparseTensor`, multiplied by
      :func:`torch_geometric.utils.spmm`.  A pre-normalised
      :math:`\tilde{R}` (e.g. :func:`mmdiff.graph.bipartite_normalized`) is
      used with ``normalize=False``.

    Args:
        normalize (bool, optional): If :obj:`False`, the edge weights (or the
            values of ``adj_t``) are used as they are, so a pre-normalised
            :math:`\tilde{R}` can be passed.  (default: :obj:`True`)
        cached (bool, optional): If :obj:`True`, the normalised graph of the
            first call is cached and reused by every later call (a fixed
            training graph, transductive setting); cleared by
            :meth:`reset_parameters`.  (default: :obj:`False`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          item features :math:`(|\mathcal{V}_I|, F)`,
          edge indices :math:`(2, |\mathcal{E}|)` (item, user) or
          sparse :math:`(|\mathcal{V}_U|, |\mathcal{V}_I|)`,
          size :math:`(|\mathcal{V}_I|, |\mathcal{V}_U|)` *(optional)*,
          edge weights :math:`(|\mathcal{E}|)` *(optional)*
        - **output:** user preferences :math:`(|\mathcal{V}_U|, F)`
    """
    SUPPORTS_FUSED_EDGE_INDEX: Final[bool] = True

    _cached_edge_index: Optional[Tuple[Tensor, Tensor]]
    _cached_adj_t: Optional[Adj]

    def __init__(self, normalize: bool = True, cached: bool = False,
                 **kwargs):
        kwargs.setdefault('aggr', 'add')
        super().__init__(**kwargs)
        self.normalize = normalize
        self.cached = cached
        self._cached_edge_index = None
        self._cached_adj_t = None

    def reset_parameters(self):
        super().reset_parameters()
        self._cached_edge_index = None
        self._cached_adj_t = None

    def _check_graph(self, x_item: Tensor, edge_index: Adj,
                     size: Optional[Tuple[int, int]]
                     ) -> Optional[Tuple[int, int]]:
        r"""Validates the orientation of the graph; returns ``(I, U)`` for a
        plain ``edge_index``."""
        I = x_item.size(self.node_dim)
        if isinstance(edge_index, EdgeIndex):
            rows = edge_index.get_num_rows()
            if rows is not None and rows != I:
                raise DataError(
                    f"ModalityPreference propagates items to users: the "
                    f"EdgeIndex must have sparse_size (num_items, num_users)"
                    f" with item ids in row 0, got {rows} source nodes for "
                    f"{I} items")
            return None
        if is_torch_sparse_tensor(edge_index) or isinstance(
                edge_index, SparseTensor):
            shape = (edge_index.size(0), edge_index.size(1))
            if shape[1] != I:
                raise DataError(
                    f"ModalityPreference propagates items to users: a sparse"
                    f" adj_t must be [num_users, num_items] (rows = users), "
                    f"got {shape} for {I} items")
            return None
        if size is None:
            raise DataError(
                "ModalityPreference propagates items to users: a plain "
                "edge_index must hold (item, user) pairs (row 0 item ids, "
                "row 1 user ids) and needs size=(num_items, num_users); for "
                "the data's (user, item) edges use forward_user_item() or "
                "mmdiff.graph.user_item_to_item_user()")
        size = (int(size[0]), int(size[1]))
        if size[0] != I:
            raise DataError(f"size[0] must be the number of items "
                            f"({I} feature rows), got size={size}")
        check_edge_index(edge_index, size[0], size[1], 'item', 'user')
        return size

    def forward(self, x_item: Tensor, edge_index: Adj,
                size: Optional[Tuple[int, int]] = None,
                edge_weight: OptTensor = None) -> Tensor:
        r"""Runs Eq. 14.

        Args:
            x_item (Tensor): Item features ``[I, F]``.
            edge_index (Tensor, EdgeIndex or sparse): The item-to-user graph
                (see the class docstring).
            size ((int, int), optional): ``(I, U)``; required for a plain
                ``edge_index``.
            edge_weight (Tensor, optional): ``[E]`` edge weights (default:
                ones).
        """
        size = self._check_graph(x_item, edge_index, size)
        if self.normalize:
            if is_torch_sparse_tensor(edge_index):
                cache = self._cached_adj_t
                if cache is None:
                    cache = _norm_torch_sparse(edge_index, x_item.dtype)
                    if self.cached:
                        self._cached_adj_t = cache
                edge_index = cache
            elif isinstance(edge_index, SparseTensor):
                cache = self._cached_adj_t
                if cache is None:
                    row, col, val = edge_index.coo()
                    w = sym_norm_weights(row, col, edge_index.size(0),
                                         edge_index.size(1), val,
                                         x_item.dtype)
                    cache = edge_index.set_value(w, layout='coo')
                    if self.cached:
                        self._cached_adj_t = cache
                edge_index = cache
            else:
                cache = self._cached_edge_index
                if cache is None:
                    if isinstance(edge_index, EdgeIndex):
                        src, dst = edge_index.as_tensor()
                        sizes = (edge_index.get_num_rows(),
                                 edge_index.get_num_cols())
                    else:
                        (src, dst), sizes = edge_index, size
                    w = sym_norm_weights(src, dst, sizes[0], sizes[1],
                                         edge_weight, x_item.dtype)
                    cache = (edge_index, w)
                    if self.cached:
                        self._cached_edge_index = cache
                edge_index, edge_weight = cache

        # propagate_type: (x: Tensor, edge_weight: OptTensor)
        return self.propagate(edge_index, x=(x_item, None),
                              edge_weight=edge_weight, size=size)

    def forward_user_item(self, x_item: Tensor, edge_index: Tensor,
                          num_users: int,
                          edge_weight: OptTensor = None) -> Tensor:
        r"""Same as :meth:`forward` for ``[2, E]`` edges in the (user, item)
        layout of ``data['user', 'interacts', 'item'].edge_index``."""
        return self.forward(x_item, user_item_to_item_user(edge_index),
                            size=(x_item.size(self.node_dim), num_users),
                            edge_weight=edge_weight)

    def message(self, x_j: Tensor, edge_weight: OptTensor) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, edge_index: Adj, x: Tuple[Tensor, None],
                              edge_weight: OptTensor) -> Tensor:
        if not torch.jit.is_scripting() and isinstance(edge_index, EdgeIndex):
            return edge_index.matmul(other=x[0], input_value=edge_weight,
                                     reduce=self.aggr, transpose=True)
        return spmm(edge_index, x[0], reduce=self.aggr)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(normalize={self.normalize}, '
                f'cached={self.cached})')
