r"""Normalised adjacencies of the user-item bipartite graph.

Node numbering of the joint graph: users are ``0..U-1`` and items are
``U..U+I-1`` (users first, as in PyG's ``AmazonBook`` example and the
DiffMM code).  All functions are vectorised and follow the device of their
inputs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from mmdiff.errors import DataError


def _check_bipartite(edge_index: Tensor, num_users: int, num_items: int):
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise DataError(f"edge_index must have shape [2, E], got "
                        f"{tuple(edge_index.shape)}")
    if edge_index.numel():
        if int(edge_index.min()) < 0:
            raise DataError("edge_index contains negative ids")
        if int(edge_index[0].max()) >= num_users:
            raise DataError(f"user id {int(edge_index[0].max())} out of range "
                            f"for {num_users} users")
        if int(edge_index[1].max()) >= num_items:
            raise DataError(f"item id {int(edge_index[1].max())} out of range "
                            f"for {num_items} items")


def bipartite_to_symmetric(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    edge_weight: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Turns ``[2, E]`` (user, item) edges into the ``[2, 2E]`` edge list of
    the symmetric :math:`(U+I) \times (U+I)` adjacency
    :math:`\begin{bmatrix} 0 & R \\ R^\top & 0 \end{bmatrix}`."""
    _check_bipartite(edge_index, num_users, num_items)
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
    edge_weight)`` over :math:`N = U + I` nodes, sorted by (row, col).

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
    if w is None:
        w = torch.ones(ei.size(1), dtype=dtype, device=ei.device)
    else:
        w = w.to(dtype)
    if add_self_loops:
        loop = torch.arange(num_nodes, device=ei.device)
        ei = torch.cat([ei, torch.stack([loop, loop])], dim=1)
        w = torch.cat([w, torch.ones(num_nodes, dtype=dtype,
                                     device=ei.device)])
    deg = torch.zeros(num_nodes, dtype=dtype, device=ei.device)
    deg.scatter_add_(0, ei[0], w)
    inv_sqrt = deg.pow(-0.5)
    inv_sqrt[torch.isinf(inv_sqrt)] = 0.0
    w = inv_sqrt[ei[0]] * w * inv_sqrt[ei[1]]
    perm = torch.argsort(ei[0] * num_nodes + ei[1])
    return ei[:, perm], w[perm]


def to_sparse_csr(edge_index: Tensor, edge_weight: Tensor,
                  size: Tuple[int, int]) -> Tensor:
    r"""A sparse CSR tensor of shape ``size`` from ``(edge_index,
    edge_weight)``; duplicate entries are summed."""
    num_rows, num_cols = size
    coo = torch.sparse_coo_tensor(edge_index, edge_weight, size=size)
    return coo.coalesce().to_sparse_csr()


def normalized_adjacency(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    add_self_loops: bool = False,
    layout: str = 'csr',
    edge_weight: Optional[Tensor] = None,
):
    r"""The normalised joint adjacency of :func:`normalized_edges` in the form
    a PyG layer consumes.

    Args:
        layout (str): ``'edge_index'`` returns ``(edge_index, edge_weight)``;
            ``'csr'`` a :obj:`torch.sparse_csr` tensor; ``'coo'`` a coalesced
            :obj:`torch.sparse_coo` tensor; ``'edge_index_obj'`` a PyG
            :class:`~torch_geometric.EdgeIndex` sorted by column, paired with
            its weights as ``(EdgeIndex, edge_weight)``, which
            :class:`~torch_geometric.nn.conv.MessagePassing` layers that
            support fused ``EdgeIndex`` propagation (ours do) multiply with a
            cached CSR/CSC pair.
    """
    ei, w = normalized_edges(edge_index, num_users, num_items,
                             add_self_loops, edge_weight)
    n = num_users + num_items
    if layout == 'edge_index':
        return ei, w
    if layout == 'csr':
        return to_sparse_csr(ei, w, (n, n))
    if layout == 'coo':
        return torch.sparse_coo_tensor(ei, w, (n, n)).coalesce()
    if layout == 'edge_index_obj':
        return to_edge_index_obj(ei, w, n)
    raise ValueError(f"unknown layout {layout!r}; expected 'edge_index', "
                     f"'csr', 'coo' or 'edge_index_obj'")


def to_edge_index_obj(edge_index: Tensor, edge_weight: Tensor,
                      num_nodes: int):
    r"""``(EdgeIndex sorted by column, permuted weights)`` for the fused
    propagation path of PyG (cached CSC for the forward, CSR for the
    backward)."""
    from torch_geometric import EdgeIndex
    ei = EdgeIndex(edge_index, sparse_size=(num_nodes, num_nodes))
    ei, perm = ei.sort_by('col')
    w = edge_weight if perm is None else edge_weight[perm]
    return ei, w


def bipartite_normalized(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""The ``[U, I]`` normalised interaction matrix (a CSR tensor)

    .. math::
        \tilde{R}_{ui} = \frac{R_{ui}}{\sqrt{|\mathcal{N}_u|\,|\mathcal{N}_i|}}

    used by LD4MRec's modality preference (Eq. 14) and its SVD encoder.
    Users or items without interactions have empty rows/columns.
    """
    _check_bipartite(edge_index, num_users, num_items)
    u, i = edge_index
    du = torch.bincount(u, minlength=num_users).to(dtype)
    di = torch.bincount(i, minlength=num_items).to(dtype)
    w = (du[u] * di[i]).rsqrt()
    return to_sparse_csr(edge_index, w, (num_users, num_items))
