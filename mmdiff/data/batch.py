r"""Mini-batch containers produced by :mod:`mmdiff.data.samplers` and
consumed by the models' training phases."""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class UserBatch:
    r"""A mini-batch of users with their dense training rows.

    ``users`` is ``[B]`` (long) and ``rows`` is ``[B, I]`` (float, 0/1).  Only
    the rows of the batch are ever densified."""
    users: Tensor
    rows: Tensor

    def to(self, device) -> 'UserBatch':
        return UserBatch(self.users.to(device), self.rows.to(device))
