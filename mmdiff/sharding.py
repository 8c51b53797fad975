r"""Row sharding of one global mini-batch over the ranks of a
data-parallel job, exact with respect to a single process.

A global batch of :math:`n` rows (BPR triples or users) is cut into
``world_size`` contiguous shards of :func:`torch.tensor_split` sizes
(:math:`\lceil n/N \rceil` or :math:`\lfloor n/N \rfloor` rows); rank
:math:`r` holds rows ``start:stop``.  A batch with fewer rows than ranks is
*replicated*: every rank holds all of it and contributes :math:`1/N` of it.

Two things make a sharded step equal to the single-process step:

1. **Loss additivity.**  Every rank returns its *share* :math:`\ell_r` of
   the global loss, :math:`\sum_r \ell_r = \mathcal{L}`.  A batch-mean loss
   :math:`\bar\ell_r` over the local rows becomes
   :math:`\ell_r = \bar\ell_r \cdot n_r / n` (:attr:`Shard.mean_scale`); a
   sum over rows divided by a constant is already additive
   (:attr:`Shard.sum_scale`, :math:`1`); a term computed identically on
   every rank (e.g. an L2 penalty on a full table) contributes
   :math:`1/N` of itself (:attr:`Shard.replica_scale`).
   :class:`~torch.nn.parallel.DistributedDataParallel` averages gradients,
   so the trainer back-propagates :math:`N \ell_r`.
2. **Randomness drawn for the global batch.**  Every per-row random draw
   inside a loss (diffusion steps, Gaussian noise, dropout masks) is made
   for all :math:`n` rows from the generator every rank shares and then
   sliced to the local rows (:func:`draw_rows`), so each row sees the
   numbers it would see in one process and every rank's generator stays in
   the same state.  This costs :math:`O(n \times I)` random numbers per
   rank, against :math:`O(n/N \times I \times h)` for the network.

The current shard is held in a ``contextvars.ContextVar`` for the
duration of one loss call (:func:`sharded`), so models need no extra
argument and a single process (no shard) runs its original code path.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional

import torch
from torch import Tensor

__all__ = ['Shard', 'Ranks', 'shard_of', 'shard_bounds', 'sharded',
           'current_shard', 'ranks_context', 'current_ranks', 'draw_rows',
           'gather_rows', 'all_gather_varlen']


@dataclass(frozen=True)
class Shard:
    r"""This rank's rows ``start:stop`` of a global batch of
    ``global_size`` rows.

    Args:
        rank (int): This process's rank :math:`r`.
        world_size (int): :math:`N`.
        start (int): First global row of the shard.
        stop (int): One past the last global row.
        global_size (int): :math:`n`.
    """
    rank: int
    world_size: int
    start: int
    stop: int
    global_size: int

    @property
    def local_size(self) -> int:
        r""":math:`n_r`, the rows this rank holds."""
        return self.stop - self.start

    @property
    def replicated(self) -> bool:
        r"""Whether every rank holds the whole batch (:math:`n < N`)."""
        return self.local_size == self.global_size and self.world_size > 1

    @property
    def mean_scale(self) -> float:
        r"""Factor turning a mean over the local rows into this rank's share
        of the global mean: :math:`n_r / n` (:math:`1/N` if replicated)."""
        if self.replicated:
            return 1.0 / self.world_size
        return self.local_size / self.global_size

    @property
    def sum_scale(self) -> float:
        r"""The factor of a sum over the local rows, :math:`1`
        (:math:`1/N` if replicated)."""
        return 1.0 / self.world_size if self.replicated else 1.0

    @property
    def replica_scale(self) -> float:
        r"""The factor of a term every rank computes identically,
        :math:`1/N`."""
        return 1.0 / self.world_size

    def slice(self, x: Tensor) -> Tensor:
        r"""Rows ``start:stop`` of a ``[n, ...]`` tensor."""
        if x.size(0) != self.global_size:
            raise ValueError(f"expected {self.global_size} rows (the global "
                             f"batch), got {x.size(0)}")
        return x[self.start:self.stop]


def shard_bounds(global_size: int, world_size: int) -> List[int]:
    r"""The ``N + 1`` row offsets of the shards of a batch of ``global_size``
    rows (sizes of :func:`torch.tensor_split`); a batch with fewer rows than
    ranks gives every rank all rows (see :attr:`Shard.replicated`)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if global_size < 0:
        raise ValueError(f"global_size must be >= 0, got {global_size}")
    q, rem = divmod(global_size, world_size)
    out = [0]
    for r in range(world_size):
        out.append(out[-1] + q + (1 if r < rem else 0))
    return out


def shard_of(global_size: int, rank: int, world_size: int) -> Shard:
    r"""Rank ``rank``'s :class:`Shard` of a batch of ``global_size`` rows."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if global_size < world_size:
        return Shard(rank, world_size, 0, global_size, global_size)
    b = shard_bounds(global_size, world_size)
    return Shard(rank, world_size, b[rank], b[rank + 1], global_size)


_CURRENT: contextvars.ContextVar[Optional[Shard]] = contextvars.ContextVar(
    'mmdiff_shard', default=None)


@contextlib.contextmanager
def sharded(shard: Optional[Shard]) -> Iterator[Optional[Shard]]:
    r"""Makes ``shard`` the current shard (:func:`current_shard`) inside the
    ``with`` block; :obj:`None` (one process) leaves nothing set."""
    token = _CURRENT.set(shard)
    try:
        yield shard
    finally:
        _CURRENT.reset(token)


@dataclass(frozen=True)
class Ranks:
    r"""The data-parallel group a training phase runs in (for work outside
    the mini-batches, e.g. DiffMM's graph regeneration)."""
    rank: int
    world_size: int

    def block_range(self, num_blocks: int) -> range:
        r"""The contiguous blocks of ``num_blocks`` assigned to this rank."""
        b = shard_bounds(num_blocks, self.world_size)
        return range(b[self.rank], b[self.rank + 1])


_RANKS: contextvars.ContextVar[Optional[Ranks]] = contextvars.ContextVar(
    'mmdiff_ranks', default=None)


@contextlib.contextmanager
def ranks_context(ranks: Optional[Ranks]) -> Iterator[Optional[Ranks]]:
    r"""Makes ``ranks`` the current group (:func:`current_ranks`)."""
    token = _RANKS.set(ranks)
    try:
        yield ranks
    finally:
        _RANKS.reset(token)


def current_ranks() -> Optional[Ranks]:
    r"""The group of the running phase with more than one rank, or
    :obj:`None` (one process)."""
    r = _RANKS.get()
    return r if r is not None and r.world_size > 1 else None


def all_gather_varlen(x: Tensor, world_size: int) -> Tensor:
    r"""Concatenation in rank order of every rank's ``[n_r, ...]`` tensor
    (``n_r`` may differ; trailing dimensions must agree).  Collective: all
    ranks call it."""
    import torch.distributed as dist
    n = torch.tensor([x.size(0)], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    pad = x.new_zeros((max(counts),) + tuple(x.shape[1:]))
    pad[:x.size(0)] = x
    parts = [torch.empty_like(pad) for _ in range(world_size)]
    dist.all_gather(parts, pad)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def current_shard() -> Optional[Shard]:
    r"""The shard of the loss being computed, or :obj:`None` in a single
    process (and outside a training step)."""
    return _CURRENT.get()


def draw_rows(num_rows: int, draw: Callable[[int], Any]) -> Any:
    r"""A per-row random draw, exact under sharding.

    ``draw(m)`` must return an ``[m, ...]`` tensor whose row :math:`k`
    depends only on the generator state and :math:`k` (e.g.
    ``lambda m: torch.randn(m, I)``).  In one process (or when
    ``num_rows`` is not this rank's shard size) it is ``draw(num_rows)``;
    under a shard of :math:`n_r` = ``num_rows`` rows it is
    ``draw(n)[start:stop]``, the rows this rank's samples would get in a
    single process.  ``draw`` may return a tuple of such tensors (each is
    sliced)."""
    shard = current_shard()
    if shard is None or shard.world_size == 1 or \
            num_rows != shard.local_size:
        return draw(num_rows)
    out = draw(shard.global_size)
    if isinstance(out, tuple):
        return tuple(shard.slice(x) for x in out)
    return shard.slice(out)


def gather_rows(x: Tensor) -> Tensor:
    r"""The ``[n, ...]`` global-batch tensor from every rank's ``[n_r,
    ...]`` rows, in global row order (no gradient).  Identity in one
    process or for a replicated batch."""
    shard = current_shard()
    if shard is None or shard.world_size == 1 or shard.replicated:
        return x
    import torch.distributed as dist
    if x.size(0) != shard.local_size:
        raise ValueError(f"expected this rank's {shard.local_size} rows, "
                         f"got {x.size(0)}")
    bounds = shard_bounds(shard.global_size, shard.world_size)
    size = bounds[1] - bounds[0]  # the largest shard
    pad = x.new_zeros((size,) + tuple(x.shape[1:]))
    pad[:x.size(0)] = x.detach()
    parts = [torch.empty_like(pad) for _ in range(shard.world_size)]
    dist.all_gather(parts, pad)
    return torch.cat([p[:bounds[r + 1] - bounds[r]]
                      for r, p in enumerate(parts)])
