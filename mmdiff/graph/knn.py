r"""Item-item k-nearest-neighbour graphs from features, and degree-sensitive
pruning of the user-item graph (the two graphs of FREEDOM, Zhou & Shen,
ACM MM 2023; the kNN graph also of LATTICE, Zhang et al., ACM MM 2021).

Both follow the convention of :mod:`mmdiff.graph.adjacency`: a graph is a
source-to-target ``(edge_index, edge_weight)``, propagation computes
:math:`\mathbf{X}' = G\mathbf{X}` with :math:`G_{ij} = w_{ji}`, and
:func:`~mmdiff.graph.to_adj` converts it for the layers.  Everything is
vectorised (no Python loop over nodes; :func:`knn_graph` loops over row
chunks only) and runs on the device of its inputs; neither ``faiss`` nor
``pyg-lib``/``torch-cluster`` is needed.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdiff.checks import check_choice, check_float, check_int
from mmdiff.errors import DataError
from mmdiff.graph.adjacency import check_edge_index
from mmdiff.graph.norm import inv_sqrt_degree, sym_norm_weights


def _topk_stable(sim: Tensor, k: int) -> Tensor:
    r"""Column indices of the ``k`` largest entries of every row of ``sim``
    ``[c, n]``, ties broken towards the lower index, ordered by
    (value descending, index ascending).  Deterministic on every device,
    unlike :func:`torch.topk`'s choice among tied values."""
    n = sim.size(1)
    kth = sim.topk(k, dim=1).values[:, -1:]                      # [c, 1]
    # Strictly better than the k-th value: always kept (fewer than k);
    # equal to it: kept by lowest index.  One integer key orders both.
    level = (sim > kth).long() * 2 + (sim == kth).long()         # [c, n]
    col = torch.arange(n, device=sim.device)
    idx = (level * (n + 1) + (n - col)).topk(k, dim=1).indices   # [c, k]
    # final order: value descending, then index ascending (stable sorts)
    idx = idx.sort(dim=1).values
    order = sim.gather(1, idx).sort(dim=1, descending=True,
                                    stable=True).indices
    return idx.gather(1, order)


def knn_graph(x: Tensor, k: int, *, cosine: bool = True, loop: bool = False,
              chunk_size: int = 1024) -> Tuple[Tensor, Tensor]:
    r"""The k-nearest-neighbour graph of the rows of ``x`` by (cosine)
    similarity, as the source-to-target ``(edge_index, edge_weight)`` in
    which **every node is the target of its** :math:`k` **most similar
    nodes** (the node aggregates its neighbours, as in LATTICE and FREEDOM:
    :math:`\mathbf{h}'_i = \sum_{j \in \mathrm{kNN}(i)} s_{ij}\mathbf{h}_j`):

    .. math::
        s_{ij} = \frac{\mathbf{x}_i^\top \mathbf{x}_j}
        {\|\mathbf{x}_i\|\,\|\mathbf{x}_j\|},\qquad
        \mathrm{kNN}(i) = \operatorname{top-}k_{\,j \ne i}\; s_{ij},\qquad
        \mathcal{E} = \{(j, i) : j \in \mathrm{kNN}(i)\}

    (plain inner products :math:`\mathbf{x}_i^\top\mathbf{x}_j` if
    ``cosine=False``; rows of norm zero have similarity 0 to every node).
    The similarities are computed ``chunk_size`` target rows at a time, so
    memory is :math:`O(\text{chunk\_size}\cdot N + N k)`; the dense
    :math:`N \times N` matrix is never formed.

    **Self-matches** are excluded by default (``loop=False``, as PyG's
    ``knn_graph``): each node gets :math:`k` *other* nodes.  The official
    FREEDOM/LATTICE code takes the top-:math:`k` of the full similarity
    matrix, whose diagonal (similarity 1) is almost always among them, i.e.
    the node itself plus :math:`k-1` others: pass ``loop=True`` for that
    (the node's own entry then competes like any other).

    **Ties** (equal similarities) are broken deterministically towards the
    lower node index (:func:`torch.topk` leaves the choice among tied values
    unspecified), so the graph is reproducible; it is the same for every
    ``chunk_size`` up to the float rounding of the similarity blocks.

    Args:
        x (Tensor): Node features :math:`(N, F)`, floating point.
        k (int): Neighbours per node, :math:`1 \le k \le N - 1`
            (:math:`\le N` with ``loop=True``).
        cosine (bool): Cosine similarity (default) or inner product.
        loop (bool): Allow a node to be its own neighbour.
            (default: :obj:`False`)
        chunk_size (int): Target rows per similarity block.
            (default: ``1024``)

    Returns:
        ``edge_index`` :math:`(2, Nk)` (row 0: the neighbour :math:`j`,
        source; row 1: the node :math:`i`, target), sorted by target and,
        within a target, by decreasing similarity; ``edge_weight``
        :math:`(Nk)`, the similarities :math:`s_{ij}` (in ``x``'s dtype).

    Example::

        ei, s = knn_graph(image_features, k=10)
        w = normalize_knn_graph(ei, image_features.size(0))  # FREEDOM
        adj = to_adj(ei, w, image_features.size(0))
    """
    if not isinstance(x, Tensor):
        raise DataError(f"x must be a 2-D floating-point tensor [N, F], got "
                        f"{type(x).__name__}")
    if x.dim() != 2 or not x.is_floating_point():
        raise DataError(f"x must be a 2-D floating-point tensor [N, F], got "
                        f"{tuple(x.shape)} of {x.dtype}")
    n = x.size(0)
    if n == 0 or x.size(1) == 0:
        raise DataError(f"x must have at least one row and one column, got "
                        f"{tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise DataError("x contains NaN or infinite values")
    k = check_int('k', k, 1, n if loop else n - 1)
    chunk_size = check_int('chunk_size', chunk_size, 1)
    if cosine:
        x = F.normalize(x, p=2.0, dim=1)
    cols, weights = [], []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sim = x[start:stop] @ x.t()                                 # [c, N]
        if not loop:
            rows = torch.arange(stop - start, device=x.device)
            sim[rows, rows + start] = -float('inf')
        idx = _topk_stable(sim, k)                                  # [c, k]
        cols.append(idx)
        weights.append(sim.gather(1, idx))
    src = torch.cat(cols).reshape(-1)
    row = torch.arange(n, device=x.device).repeat_interleave(k)
    return torch.stack([src, row]), torch.cat(weights).reshape(-1)


def normalize_knn_graph(edge_index: Tensor, num_nodes: int,
                        edge_weight: Optional[Tensor] = None,
                        degree: str = 'target') -> Tensor:
    r"""Symmetric degree normalisation of a (directed) kNN graph
    :math:`S` (:math:`S_{ij} = w_{ji}` for the edges :math:`(j, i)` of
    :func:`knn_graph`), FREEDOM's Eq. (2)
    :math:`\tilde{S} = D^{-1/2} S D^{-1/2}`:

    .. math::
        \tilde{w}_{ji} = \frac{w_{ji}}{\sqrt{d_i\, d'_j}}

    * ``degree='target'`` (default; what the official FREEDOM and LATTICE
      code computes): :math:`d = d' = S\mathbf{1}`, the degree of every node
      *as a target* (the sum of its own neighbour weights; :math:`k` for
      unweighted kNN lists, so every weight becomes :math:`1/k`).
    * ``degree='both'``: :math:`d = S\mathbf{1}`, :math:`d' =
      S^\top\mathbf{1}` (the degree of :math:`j` as a source, i.e. how
      often it is someone's neighbour), :math:`D_r^{-1/2} S D_c^{-1/2}` by
      :func:`~mmdiff.graph.sym_norm_weights`; down-weights hub items.

    Both use the library's one normalisation
    (:func:`~mmdiff.graph.inv_sqrt_degree`, on which
    :func:`~mmdiff.graph.sym_norm_weights` is built); nodes of degree zero
    get weight zero.

    Args:
        edge_index (Tensor): :math:`(2, E)` source-to-target edges.
        num_nodes (int): :math:`N`.
        edge_weight (Tensor, optional): :math:`(E)` weights :math:`w_{ji}`
            (default: ones, FREEDOM's binary kNN graph).
        degree (str): ``'target'`` or ``'both'``.

    Returns:
        :math:`(E)` float32 weights, in the order of ``edge_index``.
    """
    num_nodes = check_int('num_nodes', num_nodes, 1)
    degree = check_choice('degree', degree, ('target', 'both'))
    check_edge_index(edge_index, num_nodes, num_nodes, 'source', 'target')
    src, dst = edge_index[0], edge_index[1]
    if edge_weight is not None and (edge_weight.dim() != 1 or
                                    edge_weight.numel() != src.numel()):
        raise DataError(f"edge_weight must have shape [{src.numel()}], got "
                        f"{tuple(edge_weight.shape)}")
    if degree == 'both':
        return sym_norm_weights(dst, src, num_nodes, num_nodes, edge_weight)
    w = torch.ones(src.numel(), device=src.device) if edge_weight is None \
        else edge_weight.float()
    inv = inv_sqrt_degree(dst, w, num_nodes)
    return inv[dst] * w * inv[src]


def degree_sensitive_prune(edge_index: Tensor, num_users: int,
                           num_items: int, keep_rate: float,
                           generator: Optional[torch.Generator] = None
                           ) -> Tensor:
    r"""FREEDOM's degree-sensitive edge pruning of the user-item graph:
    keeps :math:`\lfloor\rho E\rfloor` of the :math:`E` (user, item) edges,
    sampled **without replacement** with probability proportional to

    .. math::
        p_{ui} = \frac{1}{\sqrt{|\mathcal{N}_u|}\sqrt{|\mathcal{N}_i|}}

    (degrees of the unpruned graph), so edges between high-degree nodes are
    the likeliest to be pruned.  This is what the official code does
    (``torch.multinomial`` over the normalised edge values, the sampled
    edges being the ones *kept*); here the sample is drawn with exponential
    keys (Efraimidis & Spirakis: keep the :math:`\lfloor\rho E\rfloor`
    smallest :math:`\varepsilon_e / p_e`, :math:`\varepsilon_e \sim
    \mathrm{Exp}(1)`), the same distribution without
    :func:`torch.multinomial`'s limit of :math:`2^{24}` categories.
    Normalise the result as usual, e.g. with
    :func:`~mmdiff.graph.normalized_edges` (FREEDOM renormalises with the
    degrees of the pruned graph).

    Args:
        edge_index (Tensor): :math:`(2, E)` (user, item) edges, as
            ``data['user', 'interacts', 'item'].edge_index``.
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        keep_rate (float): :math:`\rho \in (0, 1]` (FREEDOM's
            ``1 - dropout``); 1 returns ``edge_index`` unchanged.
        generator (torch.Generator, optional): Source of randomness (on the
            device of ``edge_index``).

    Returns:
        The kept :math:`(2, \lfloor\rho E\rfloor)` (user, item) edges, in
        their original order.
    """
    keep_rate = check_float('keep_rate', keep_rate, 0.0, 1.0, lo_open=True)
    check_edge_index(edge_index, num_users, num_items)
    if keep_rate == 1.0:
        return edge_index
    p = sym_norm_weights(edge_index[0], edge_index[1], num_users, num_items)
    keys = torch.empty_like(p).exponential_(generator=generator) / p
    n_keep = int(edge_index.size(1) * keep_rate)
    keep = keys.topk(n_keep, largest=False).indices.sort().values
    return edge_index[:, keep]


__all__ = ['knn_graph', 'normalize_knn_graph', 'degree_sensitive_prune']
