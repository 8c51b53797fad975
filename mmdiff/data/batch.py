r"""Mini-batch containers produced by :mod:`mmdiff.data.samplers` and
consumed by the models' training phases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass
class TripletBatch:
    r"""A BPR mini-batch: ``users[k]`` interacted with ``pos[k]`` and not with
    ``neg[k]``.  All three are ``[B]`` long tensors on the model's device."""
    users: Tensor
    pos: Tensor
    neg: Tensor

    def to(self, device) -> 'TripletBatch':
        return TripletBatch(self.users.to(device), self.pos.to(device),
                            self.neg.to(device))


class UserBatch:
    r"""A mini-batch of users with their training rows.

    ``users`` is ``[B]`` (long).  The rows exist in two forms: ``rows``, the
    dense ``[B, I]`` 0/1 rows (float), and ``sparse_rows``, the same rows
    as a sparse CSR tensor.  A batch is built from either (or both); the
    other form is made on first access and kept, so a model that reads only
    ``sparse_rows`` never densifies the batch."""

    def __init__(self, users: Tensor, rows: Optional[Tensor] = None,
                 sparse_rows: Optional[Tensor] = None):
        if rows is None and sparse_rows is None:
            raise ValueError("UserBatch needs rows or sparse_rows")
        self.users = users
        self._rows = rows
        self._sparse_rows = sparse_rows

    @property
    def rows(self) -> Tensor:
        r"""Dense ``[B, I]`` rows."""
        if self._rows is None:
            self._rows = self._sparse_rows.to_dense()
        return self._rows

    @property
    def sparse_rows(self) -> Tensor:
        r"""The rows as a ``[B, I]`` sparse CSR tensor."""
        if self._sparse_rows is None:
            self._sparse_rows = self._rows.to_sparse_csr()
        return self._sparse_rows

    def to(self, device) -> 'UserBatch':
        return UserBatch(
            self.users.to(device),
            None if self._rows is None else self._rows.to(device),
            None if self._sparse_rows is None
            else self._sparse_rows.to(device))

    def __repr__(self) -> str:
        rows = self._rows if self._rows is not None else self._sparse_rows
        return (f'{self.__class__.__name__}(users={tuple(self.users.shape)}, '
                f'rows={tuple(rows.shape)})')
