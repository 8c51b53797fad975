r"""Mini-batch samplers over the training interactions.

* :class:`TripletSampler` yields BPR triples; negatives are drawn uniformly
  from the items a user has **not** interacted with in training, by
  vectorised rejection sampling (never a training positive).
* :class:`UserRowSampler` yields user batches with their training rows,
  sliced from CSR (a batch densifies its ``[B, I]`` rows only when a model
  asks for them).

Both take an explicit :class:`torch.Generator`, so a run is reproducible and
its sampler state can be checkpointed (``generator.get_state()``).
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from mmdiff.checks import check_int
from mmdiff.errors import DataError
from mmdiff.data.batch import TripletBatch, UserBatch
from mmdiff.sharding import Shard, shard_of


def _check_batch_size(batch_size: int) -> int:
    check_int('batch_size', batch_size, 1)
    return batch_size


def sample_negatives(users: Tensor, train_keys: Tensor, num_items: int,
                     generator: Optional[torch.Generator] = None,
                     max_rounds: int = 100) -> Tensor:
    r"""Uniform negatives for ``users``: for every entry an item the user
    has no training interaction with.

    Args:
        users (Tensor): ``[B]`` user ids.
        train_keys (Tensor): Sorted ``user * num_items + item`` keys of all
            training interactions.
        num_items (int): :math:`I`.

    Rejection rounds are vectorised over the whole batch; the expected number
    of rounds is :math:`1/(1-\text{density})`.  Users who interacted with every
    item have no negative and raise.
    """
    neg = torch.randint(num_items, users.shape, generator=generator)
    todo = torch.arange(users.numel())
    for _ in range(max_rounds):
        keys = users[todo] * num_items + neg[todo]
        pos = torch.searchsorted(train_keys, keys).clamp_(
            max=max(train_keys.numel() - 1, 0))
        hit = train_keys[pos] == keys
        todo = todo[hit]
        if todo.numel() == 0:
            return neg
        neg[todo] = torch.randint(num_items, (todo.numel(),),
                                  generator=generator)
    raise DataError(f"could not sample negatives for {todo.numel()} "
                    f"interactions after {max_rounds} rounds: some users "
                    f"interacted with (almost) every item")


class TripletSampler:
    r"""All training interactions once per epoch, shuffled, each paired with
    one fresh uniform negative (docs/algorithms.md §2.7).

    Args:
        edge_index (Tensor): ``[2, E]`` training (user, item) edges (CPU).
        num_items (int): :math:`I`.
        batch_size (int): Triples per batch.
        generator (torch.Generator, optional): Source of randomness.
    """

    def __init__(self, edge_index: Tensor, num_items: int, batch_size: int,
                 generator: Optional[torch.Generator] = None):
        self.batch_size = _check_batch_size(batch_size)
        self.edge_index = edge_index.cpu()
        self.num_items = num_items
        self.generator = generator
        self.keys = torch.sort(self.edge_index[0] * num_items +
                               self.edge_index[1]).values
        full = torch.bincount(self.edge_index[0]) >= num_items
        if bool(full.any()):
            raise DataError(f"user {int(full.nonzero()[0])} interacted with "
                            f"all {num_items} items: no negative exists")

    def __len__(self) -> int:
        return -(-self.edge_index.size(1) // self.batch_size)

    def __iter__(self) -> Iterator[TripletBatch]:
        E = self.edge_index.size(1)
        perm = torch.randperm(E, generator=self.generator)
        users, pos = self.edge_index[0, perm], self.edge_index[1, perm]
        neg = sample_negatives(users, self.keys, self.num_items,
                               self.generator)
        for start in range(0, E, self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield TripletBatch(users[sl], pos[sl], neg[sl])

    def shards(self, rank: int, world_size: int
               ) -> Iterator[Tuple[Shard, TripletBatch]]:
        r"""The batches of ``iter(sampler)`` (same permutation and negatives,
        drawn from the same generator as one process) cut to rank
        ``rank``'s :class:`~mmdiff.sharding.Shard` of each."""
        for batch in self:
            shard = shard_of(batch.users.numel(), rank, world_size)
            sl = slice(shard.start, shard.stop)
            yield shard, TripletBatch(batch.users[sl], batch.pos[sl],
                                      batch.neg[sl])


def _row_entries(crow: Tensor, col: Tensor, users: Tensor
                 ) -> Tuple[Tensor, Tensor]:
    r"""``(counts [B], cols [nnz])``: the number of stored entries of each
    of ``users`` and their columns, concatenated in batch order."""
    start, end = crow[users], crow[users + 1]
    counts = end - start
    total = int(counts.sum())
    offsets = torch.arange(total, device=col.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    return counts, col[torch.repeat_interleave(start, counts) + offsets]


def dense_rows(crow: Tensor, col: Tensor, users: Tensor, num_items: int,
               dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Dense ``[B, I]`` 0/1 rows of ``users`` from a CSR structure
    ``(crow, col)`` without any Python loop over users."""
    counts, cols = _row_entries(crow, col, users)
    out = torch.zeros(users.numel(), num_items, dtype=dtype,
                      device=col.device)
    if cols.numel() == 0:
        return out
    row_ids = torch.repeat_interleave(
        torch.arange(users.numel(), device=col.device), counts)
    out[row_ids, cols] = 1
    return out


def sparse_rows(crow: Tensor, col: Tensor, users: Tensor, num_items: int,
                dtype: torch.dtype = torch.float32) -> Tensor:
    r"""The 0/1 rows of ``users`` as a ``[B, I]`` sparse CSR tensor (the
    same matrix as :func:`dense_rows`, never densified; columns keep the
    order of ``col``)."""
    counts, cols = _row_entries(crow, col, users)
    out_crow = torch.zeros(users.numel() + 1, dtype=crow.dtype,
                           device=col.device)
    torch.cumsum(counts, 0, out=out_crow[1:])
    return torch.sparse_csr_tensor(
        out_crow, cols, torch.ones(cols.numel(), dtype=dtype,
                                   device=col.device),
        size=(users.numel(), num_items))


def _sort_within_rows(crow: Tensor, col: Tensor) -> Tensor:
    r"""``col`` with the columns of every CSR row in increasing order."""
    if col.numel() < 2:
        return col
    row = torch.repeat_interleave(
        torch.arange(crow.numel() - 1, device=col.device),
        crow[1:] - crow[:-1])
    key = row * (int(col.max()) + 1) + col
    if bool((key[1:] >= key[:-1]).all()):
        return col
    return col[torch.argsort(key)]


class UserRowSampler:
    r"""Shuffled batches of users (all users or a given subset) with their
    training rows (dense or sparse CSR, see :class:`~mmdiff.data.batch.UserBatch`).

    Args:
        csr (Tensor): ``[U, I]`` training interactions as a sparse CSR tensor.
        batch_size (int): Users per batch.
        users (Tensor, optional): The users to iterate over (default: all).
        shuffle (bool): Shuffle every epoch.  (default: :obj:`True`)
        generator (torch.Generator, optional): Source of randomness.
    """

    def __init__(self, csr: Tensor, batch_size: int,
                 users: Optional[Tensor] = None, shuffle: bool = True,
                 generator: Optional[torch.Generator] = None):
        self.batch_size = _check_batch_size(batch_size)
        self.crow = csr.crow_indices()
        self.col = _sort_within_rows(self.crow, csr.col_indices())
        self.num_users, self.num_items = csr.shape
        self.users = (torch.arange(self.num_users) if users is None
                      else users.cpu())
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return -(-self.users.numel() // self.batch_size)

    def rows(self, users: Tensor) -> Tensor:
        r"""Dense ``[B, I]`` training rows of ``users``."""
        return dense_rows(self.crow, self.col, users, self.num_items)

    def sparse_rows(self, users: Tensor) -> Tensor:
        r"""The training rows of ``users`` as a ``[B, I]`` sparse CSR
        tensor (columns sorted within every row)."""
        return sparse_rows(self.crow, self.col, users, self.num_items)

    def _user_batches(self) -> Iterator[Tensor]:
        r"""The epoch's user-id batches (one permutation when shuffling)."""
        users = self.users
        if self.shuffle:
            users = users[torch.randperm(users.numel(),
                                         generator=self.generator)]
        for start in range(0, users.numel(), self.batch_size):
            yield users[start:start + self.batch_size]

    def __iter__(self) -> Iterator[UserBatch]:
        for b in self._user_batches():
            yield UserBatch(b, sparse_rows=self.sparse_rows(b))

    def shards(self, rank: int, world_size: int
               ) -> Iterator[Tuple[Shard, UserBatch]]:
        r"""The batches of ``iter(sampler)`` (same permutation) cut to rank
        ``rank``'s :class:`~mmdiff.sharding.Shard` of each; only the
        shard's rows are sliced (``[B/N, I]``)."""
        for b in self._user_batches():
            shard = shard_of(b.numel(), rank, world_size)
            b = b[shard.start:shard.stop]
            yield shard, UserBatch(b, sparse_rows=self.sparse_rows(b))
