r"""Full-ranking top-:math:`K` metrics (docs/algorithms.md §3).

For a user :math:`u` with held-out items :math:`T_u` and ranked list
:math:`L_u` of the top-:math:`K` items (training items excluded):

.. math::
    \mathrm{Recall@}K = \frac{|L_u \cap T_u|}{|T_u|},\quad
    \mathrm{Precision@}K = \frac{|L_u \cap T_u|}{K},\quad
    \mathrm{HitRate@}K = \mathbf{1}[|L_u \cap T_u| > 0],

.. math::
    \mathrm{NDCG@}K = \frac{\sum_{r=1}^{K} \mathbf{1}[L_u[r] \in T_u] /
    \log_2(r+1)}{\sum_{r=1}^{\min(K, |T_u|)} 1/\log_2(r+1)},

averaged over the users with :math:`|T_u| \geq 1`.  Only training items are
masked (the MMRec convention, docs/algorithms.md D23): validation items stay
rankable at test time.  Users are processed in chunks, so memory is
:math:`O(\text{chunk} \times I)`, and there is no Python loop over users.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
from torch import Tensor

from mmdiff.checks import check_int
from mmdiff.errors import ConfigError, DataError

#: The metric names, each reported at every cut-off as ``f'{name}@{k}'``
#: by :func:`full_ranking_metrics` (the one list: the trainer, the CLI and
#: the benchmarks read it from here).
METRIC_NAMES = ('recall', 'ndcg', 'precision', 'hit')
#: Former name of :data:`METRIC_NAMES`.
METRICS = METRIC_NAMES


def check_ks(ks: Sequence[int], num_items: int) -> list:
    r"""Validates the cut-offs: positive integers not larger than the number
    of items."""
    if isinstance(ks, (int, float, str, bytes)) or not hasattr(ks,
                                                              '__iter__'):
        ks = [ks]  # a single cut-off (validated below)
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(f"K must be an integer, got {k!r}")
        if k < 1:
            raise ConfigError(f"K must be >= 1, got {k}")
        if k > num_items:
            raise ConfigError(f"K={k} is larger than the number of items "
                              f"({num_items})")
        out.append(k)
    if not out:
        raise ConfigError("at least one K is needed")
    return sorted(set(out))


def _rows(crow: Tensor, col: Tensor, users: Tensor, num_items: int,
          device) -> Tensor:
    from mmdiff.data.samplers import dense_rows
    return dense_rows(crow, col, users.cpu(), num_items,
                      dtype=torch.bool).to(device)


def _csr_parts(edge_index: Tensor, num_users: int, num_items: int):
    from mmdiff.data.hetero import edges_to_csr
    csr = edges_to_csr(edge_index.cpu(), num_users, num_items)
    return csr.crow_indices(), csr.col_indices()


def topk_hits(scores: Tensor, target: Tensor, k: int,
              exclude: Optional[Tensor] = None) -> Tensor:
    r"""``[B, k]`` boolean hit matrix of the top-``k`` of ``scores``
    (``[B, I]``) against the boolean ``target`` rows; ``exclude`` items are
    never ranked."""
    if exclude is not None:
        scores = scores.masked_fill(exclude, float('-inf'))
    idx = scores.topk(k, dim=1).indices
    return target.gather(1, idx)


def metrics_from_hits(hits: Tensor, num_targets: Tensor,
                      ks: Sequence[int]) -> Dict[str, Tensor]:
    r"""Per-user metric sums from a ``[B, max(ks)]`` hit matrix.

    Returns ``{f'{metric}@{k}': [B] tensor}``; rows with no target get 0 and
    must be excluded by the caller."""
    hits = hits.float()
    n = num_targets.float().clamp(min=1)
    max_k = hits.size(1)
    disc = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float,
                                         device=hits.device))
    cum_disc = torch.cumsum(disc, 0)
    out = {}
    for k in ks:
        h = hits[:, :k]
        nh = h.sum(1)
        dcg = (h * disc[:k]).sum(1)
        idcg = cum_disc[(num_targets.clamp(min=1, max=k) - 1).long()]
        values = {'recall': nh / n, 'ndcg': dcg / idcg, 'precision': nh / k,
                  'hit': (nh > 0).float()}
        for name in METRIC_NAMES:  # a new name must be computed above
            out[f'{name}@{k}'] = values[name]
    return out


@torch.no_grad()
def full_ranking_metrics(
    score_fn: Callable[[Tensor], Tensor],
    target: Tensor,
    num_users: int,
    num_items: int,
    train: Optional[Tensor] = None,
    ks: Sequence[int] = (10, 20),
    chunk_size: int = 1024,
    device: Optional[torch.device] = None,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: Optional[Callable[[Tensor], Tensor]] = None,
) -> Dict[str, float]:
    r"""Full-ranking Recall/NDCG/Precision/HitRate at several cut-offs.

    Args:
        score_fn (callable): Maps a ``[B]`` tensor of user ids (on
            ``device``) to ``[B, I]`` scores.
        target (Tensor): ``[2, E]`` held-out (user, item) edges.
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        train (Tensor, optional): ``[2, E']`` training edges, masked from the
            ranking.
        ks (sequence of int): Cut-offs.  (default: ``(10, 20)``)
        chunk_size (int): Users scored at once.  (default: ``1024``)
        device (torch.device, optional): Where scores are computed.
        rank (int): This process's rank in a sharded evaluation: it scores
            the user chunks :math:`c` with :math:`c \bmod N = r`.
            (default: ``0``)
        world_size (int): :math:`N`.  (default: ``1``)
        all_reduce (callable, optional): In-place sum over ranks of a
            float64 tensor (needed when ``world_size > 1``).  The
            ``[chunks, metrics]`` table of per-chunk sums is all-reduced
            (every entry comes from exactly one rank, so the reduction adds
            zeros only) and summed in chunk order: the result equals the
            single-process one exactly, and the average is over all
            evaluated users, never an average of per-rank averages.

    Returns:
        ``{'recall@10': ..., 'ndcg@10': ..., 'precision@10': ...,
        'hit@10': ..., ..., 'num_users': n}`` averaged over the users with at
        least one target item.
    """
    ks = check_ks(ks, num_items)
    check_int('chunk_size', chunk_size, 1)
    device = torch.device(device) if device is not None else torch.device(
        'cpu')
    t_crow, t_col = _csr_parts(target, num_users, num_items)
    users = torch.nonzero(t_crow[1:] > t_crow[:-1]).view(-1)
    if train is not None:
        r_crow, r_col = _csr_parts(train, num_users, num_items)
    max_k = max(ks)
    if world_size > 1 and all_reduce is None:
        raise ValueError("a sharded evaluation (world_size > 1) needs "
                         "all_reduce")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    keys = [f'{m}@{k}' for k in ks for m in METRIC_NAMES]
    starts = range(0, users.numel(), chunk_size)
    table = torch.zeros(len(starts), len(keys), dtype=torch.float64)
    for c, start in enumerate(starts):
        if c % world_size != rank:
            continue
        b = users[start:start + chunk_size]
        scores = score_fn(b.to(device)).float()
        if scores.shape != (b.numel(), num_items):
            raise DataError(f"score_fn returned shape {tuple(scores.shape)}, "
                            f"expected {(b.numel(), num_items)}")
        tgt = _rows(t_crow, t_col, b, num_items, scores.device)
        exclude = (_rows(r_crow, r_col, b, num_items, scores.device)
                   if train is not None else None)
        hits = topk_hits(scores, tgt, max_k, exclude)
        per_user = metrics_from_hits(hits, tgt.sum(1), ks)
        table[c] = torch.tensor([float(per_user[key].sum()) for key in keys],
                                dtype=torch.float64)
    if world_size > 1:
        table = all_reduce(table)
    sums = {key: 0.0 for key in keys}
    for row in table.tolist():  # chunk order, as one process adds them
        for key, v in zip(keys, row):
            sums[key] += v
    n = max(int(users.numel()), 1)
    out = {key: v / n for key, v in sums.items()}
    out['num_users'] = int(users.numel())
    return out


@torch.no_grad()
def recommend_topk(
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor,
    k: int,
    num_items: int,
    train: Optional[Tensor] = None,
    num_users: Optional[int] = None,
    chunk_size: int = 1024,
    device: Optional[torch.device] = None,
):
    r"""Top-``k`` unseen items for ``users``: returns ``(items [B, k],
    scores [B, k])``."""
    k = check_ks([k], num_items)[0]
    device = torch.device(device) if device is not None else torch.device(
        'cpu')
    if train is not None:
        r_crow, r_col = _csr_parts(train, num_users, num_items)
    items, vals = [], []
    for start in range(0, users.numel(), chunk_size):
        b = users[start:start + chunk_size]
        s = score_fn(b.to(device)).float()
        if train is not None:
            s = s.masked_fill(_rows(r_crow, r_col, b, num_items, s.device),
                              float('-inf'))
        top = s.topk(k, dim=1)
        items.append(top.indices.cpu())
        vals.append(top.values.cpu())
    return torch.cat(items), torch.cat(vals)
