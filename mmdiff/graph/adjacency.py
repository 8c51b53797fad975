r"""Normalised adjacencies of the user-item graph, and the one converter to
the formats the layers consume.

**Convention.**  Every function of :mod:`mmdiff.graph` that returns a graph
returns it as PyG does: an ``edge_index`` ``[2, E]`` whose row 0 holds the
*source* and row 1 the *target* node, plus the ``edge_weight`` ``[E]`` of
each edge, so that propagation computes

.. math::
    \mathbf{x}'_i = \sum_{(j, i) \in \mathcal{E}} w_{j i}\, \mathbf{x}_j,
    \qquad\text{i.e.}\qquad \mathbf{X}' = G\,\mathbf{X}
    \quad\text{with}\quad G_{ij} = w_{ji}.

The bipartite interaction edges of the data, ``data['user', 'interacts',
'item'].edge_index``, are (user, item) pairs: user sources, item targets.
:func:`to_adj` turns any graph in this convention into the format a layer
takes (it never changes the orientation), and a graph may be passed straight
to :class:`~mmdiff.nn.conv.NormalizedPropagation`,
:class:`~mmdiff.nn.conv.MultiModalAggregation` and
:class:`~mmdiff.nn.conv.ModalityPreference` as ``(edge_index,
edge_weight)``.  This matters for the edge-dropped graphs of DiffMM, which
are not symmetric.

Node numbering of the joint graph: users are ``0..U-1`` and items are
``U..U+I-1`` (users first, as in PyG's ``AmazonBook`` example and the
DiffMM code).  All functions are vectorised and follow the device of their
inputs.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.typing import Adj, OptTensor

from mmdiff.errors import DataError
from mmdiff.graph.norm import sym_norm_weights

#: A propagation graph as the layers of :mod:`mmdiff.nn.conv` take it: an
#: ``Adj`` that carries its own values (a sparse ``torch`` matrix
#: :math:`G` with ``out = G @ x``, rows = targets, or a ``SparseTensor``),
#: or a pair ``(edge_index, edge_weight)`` in the source-to-target
#: convention, where ``edge_index`` is a ``[2, E]`` tensor or an
#: :class:`~torch_geometric.EdgeIndex`.
Graph = Union[Adj, Tuple[Adj, OptTensor]]

#: The layouts :func:`to_adj` produces.
LAYOUTS = ('edge_index', 'csr', 'coo', 'edge_index_obj')


def check_edge_index(edge_index: Tensor, num_src: int, num_dst: int,
                     src: str = 'user', dst: str = 'item') -> None:
    r"""Raises :class:`~mmdiff.errors.DataError` unless ``edge_index`` is a
    ``[2, E]`` integer tensor with sources in ``[0, num_src)`` and targets
    in ``[0, num_dst)``; the message names the side (``src`` / ``dst``)
    and the expected orientation."""
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 \
            or edge_index.size(0) != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) \
            else type(edge_index).__name__
        raise DataError(f"edge_index must have shape [2, E] ({src}, {dst}), "
                        f"got {shape}")
    if edge_index.is_floating_point() or edge_index.dtype == torch.bool:
        raise DataError(f"edge_index must hold integer ids, got "
                        f"{edge_index.dtype}")
    if edge_index.numel():
        if int(edge_index.min()) < 0:
            raise DataError("edge_index contains negative ids")
        for k, (name, n) in enumerate(((src, num_src), (dst, num_dst))):
            top = int(edge_index[k].max())
            if top >= n:
                raise DataError(
                    f"{name} id {top} is out of range for {n} {name}s "
                    f"(edge_index row {k}; expected row 0 = {src} ids, "
                    f"row 1 = {dst} ids)")


def split_graph(graph: Graph) -> Tuple[Adj, OptTensor]:
    r"""``(adj, edge_weight)`` of a :data:`Graph` (``edge_weight`` is
    :obj:`None` for an adjacency that carries its own values)."""
    if isinstance(graph, (tuple, list)):
        if len(graph) != 2:
            raise ValueError("a graph must be an adjacency or a pair "
                             "(edge_index, edge_weight)")
        return graph[0], graph[1]
    return graph, None


def user_item_to_item_user(edge_index: Tensor) -> Tensor:
    r"""Flips ``[2, E]`` (user, item) edges -- the layout of
    ``data['user', 'interacts', 'item'].edge_index`` -- into (item, user)
    edges, the source-to-target layout of item-to-user propagation (e.g.
    :class:`~mmdiff.nn.conv.ModalityPreference`)."""
    return edge_index.flip(0)


def bipartite_to_symmetric(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    edge_weight: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Turns ``[2, E]`` (user, item) edges into the ``[2, 2E]`` edge list of
    the symmetric :math:`(U+I) \times (U+I)` adjacency
    :math:`\begin{bmatrix} 0 & R \\ R^\top & 0 \end{bmatrix}` (both
    directions of every edge)."""
    check_edge_index(edge_index, num_users, num_items)
    u, i = edge_index[0], edge_index[1] + num_users
    out = torch.stack([torch.cat([u, i]), torch.cat([i, u])])
    w = None if edge_weight is None else torch.cat([edge_weight, edge_weight])
    return out, w


def normalized_edges(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    add_self_loops: bool = False,
    edge_weight: Optional[Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> Tuple[Tensor, Tensor]:
    r"""Symmetrically normalised joint adjacency as ``(edge_index,
    edge_weight)`` over :math:`N = U + I` nodes, source-to-target, sorted by
    (target, source).

    .. math::
        \hat{A} = D^{-1/2} (A + \delta I_N) D^{-1/2},\qquad
        D = \mathrm{diag}\big((A + \delta I_N)\mathbf{1}\big)

    with :math:`\delta = 1` when ``add_self_loops`` (DiffMM) and
    :math:`\delta = 0` otherwise (LightGCN).  Nodes of degree zero get weight
    zero (they have no entries unless ``add_self_loops``, in which case their
    self-loop weight is 1).

    Args:
        edge_index (Tensor): ``[2, E]`` (user, item) training edges without
            duplicates.
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        add_self_loops (bool): Add :math:`I_N` before normalising.
        edge_weight (Tensor, optional): ``[E]`` weights of the bipartite edges
            (default: all ones).
    """
    num_nodes = num_users + num_items
    ei, w = bipartite_to_symmetric(edge_index, num_users, num_items,
                                   edge_weight)
    if add_self_loops:
        loop = torch.arange(num_nodes, device=ei.device)
        ei = torch.cat([ei, torch.stack([loop, loop])], dim=1)
        if w is not None:
            w = torch.cat([w.to(dtype), torch.ones(num_nodes, dtype=dtype,
                                                   device=ei.device)])
    # ei is symmetric: row 0 read as the target gives the same matrix.
    target, source = ei[0], ei[1]
    w = sym_norm_weights(target, source, num_nodes, num_nodes, w, dtype)
    perm = torch.argsort(target * num_nodes + source)
    return torch.stack([source[perm], target[perm]]), w[perm]


def to_adj(edge_index: Tensor, edge_weight: OptTensor, num_nodes: int,
           layout: str = 'edge_index_obj') -> Graph:
    r"""The one converter from a source-to-target graph ``(edge_index,
    edge_weight)`` (the output of every graph function of
    :mod:`mmdiff.graph`) to the format a layer consumes; every layout gives
    the same propagation :math:`\mathbf{X}' = G\mathbf{X}`,
    :math:`G_{ij} = w_{ji}`.

    Args:
        edge_index (Tensor): ``[2, E]`` (source, target).
        edge_weight (Tensor, optional): ``[E]`` values (default: ones).
        num_nodes (int): :math:`N`; :math:`G` is :math:`N \times N`.
        layout (str): ``'edge_index'``: the pair itself (gather/scatter
            propagation); ``'csr'`` / ``'coo'``: the sparse matrix
            :math:`G` (``adj_t``, rows = targets; fused
            :func:`torch.sparse.mm`; duplicate entries summed);
            ``'edge_index_obj'``: ``(EdgeIndex, weight)`` sorted by target
            with its CSR and CSC caches filled (fused product, cached
            transpose for the backward pass).
    """
    check_edge_index(edge_index, num_nodes, num_nodes, 'source', 'target')
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), device=edge_index.device)
    if edge_weight.dim() != 1 or edge_weight.numel() != edge_index.size(1):
        raise DataError(f"edge_weight must have shape [{edge_index.size(1)}]"
                        f", got {tuple(edge_weight.shape)}")
    if layout == 'edge_index':
        return edge_index, edge_weight
    _quiet_sparse_beta_warnings()
    if layout in ('csr', 'coo'):
        adj_t = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight,
                                        (num_nodes, num_nodes)).coalesce()
        return adj_t.to_sparse_csr() if layout == 'csr' else adj_t
    if layout == 'edge_index_obj':
        ei = EdgeIndex(edge_index, sparse_size=(num_nodes, num_nodes))
        ei, perm = ei.sort_by('col')
        w = edge_weight if perm is None else edge_weight[perm]
        _fill_cache(ei)
        return ei, w
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def _fill_cache(ei: EdgeIndex) -> None:
    _quiet_sparse_beta_warnings()
    ei.fill_cache_()


_QUIETED = False


def _quiet_sparse_beta_warnings() -> None:
    r"""torch warns once per process that sparse CSR/CSC tensors are in
    beta when the first one is built; PyG's fused :class:`EdgeIndex`
    product builds one on every call.  We only use them as index structures
    for products PyG supports, which is sound, so the one-time warnings are
    consumed here, silently, the first time a layer format is built."""
    global _QUIETED
    if _QUIETED:
        return
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        index = torch.zeros(2, dtype=torch.long)
        torch.sparse_csr_tensor(index, index[:1], torch.ones(1), (1, 1))
        torch.sparse_csc_tensor(index, index[:1], torch.ones(1), (1, 1))
    _QUIETED = True


def normalized_adjacency(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    add_self_loops: bool = False,
    layout: str = 'csr',
    edge_weight: Optional[Tensor] = None,
) -> Graph:
    r""":func:`normalized_edges` converted by :func:`to_adj` (``layout``
    one of :data:`LAYOUTS`)."""
    ei, w = normalized_edges(edge_index, num_users, num_items,
                             add_self_loops, edge_weight)
    return to_adj(ei, w, num_users + num_items, layout)


def bipartite_normalized(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""The ``[U, I]`` normalised interaction matrix (a CSR tensor)

    .. math::
        \tilde{R}_{ui} = \frac{R_{ui}}{\sqrt{|\mathcal{N}_u|\,|\mathcal{N}_i|}}

    used by LD4MRec's modality preference (Eq. 14) and its SVD encoder; as
    a sparse ``adj_t`` (rows = users = targets) it propagates items to
    users.  Users or items without interactions have empty rows/columns.
    """
    check_edge_index(edge_index, num_users, num_items)
    u, i = edge_index
    w = sym_norm_weights(u, i, num_users, num_items, dtype=dtype)
    return torch.sparse_coo_tensor(edge_index, w, (num_users, num_items)) \
        .coalesce().to_sparse_csr()
