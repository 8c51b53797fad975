r"""The small protocol every :mod:`mmdiff` model follows, so that one fit loop
(:class:`mmdiff.train.Trainer`) trains them all.

A model is a :class:`torch.nn.Module` that

1. is built from the training data by the classmethod
   :meth:`Recommender.from_data` (``data`` is the canonical
   :class:`~torch_geometric.data.HeteroData`, hyper-parameters are keyword
   arguments with the readable names of the presets);
2. lists its **training phases** (:meth:`Recommender.phases`).  A phase names
   the kind of mini-batch it consumes (``'triplets'``: BPR triples
   ``(users, pos_items, neg_items)``; ``'users'``: a batch of user ids together
   with their dense training rows ``[B, I]``), the parameters its optimiser
   updates and its learning rate, a ``loss(batch)`` callable returning a dict
   of named scalar losses whose ``'loss'`` entry is minimised, and an optional
   ``after()`` hook run once the phase has seen all its batches (DiffMM's graph
   regeneration);
3. scores users against all items with :meth:`Recommender.score`.  The trainer
   calls :meth:`Recommender.prepare_scoring` once before evaluating, so a
   graph model propagates once per evaluation, not once per user batch.

The trainer knows nothing else about a model.  State that is neither a
parameter nor a fixed-size buffer (e.g. DiffMM's regenerated graphs) goes
through :meth:`torch.nn.Module.get_extra_state` /
:meth:`~torch.nn.Module.set_extra_state` as plain tensors, so checkpoints
round-trip with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from mmdiff.data.batch import TripletBatch, UserBatch  # noqa: F401


@dataclass
class TrainingPhase:
    r"""One phase of a training epoch.

    Args:
        name (str): Short name used in logs (``'bpr'``, ``'diffusion'``).
        batches (str): ``'triplets'`` or ``'users'``.
        loss (callable): ``loss(batch) -> {'loss': Tensor, ...}``; the other
            entries are logged (detached).
        parameters (list): The parameters stepped by this phase's optimiser.
        lr (float): Adam learning rate.
        weight_decay (float): Adam weight decay.  (default: ``0``)
        batch_size (int, optional): Overrides the trainer's batch size.
        after (callable, optional): Run without gradients once the phase has
            consumed all its batches; may return a dict of logged values.
        after_name (str, optional): Name under which the time of ``after``
            is logged (``time/<after_name>``; default ``<name>_after``).
    """
    name: str
    batches: str
    loss: Callable[[object], Dict[str, Tensor]]
    parameters: List[torch.nn.Parameter]
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: Optional[int] = None
    after: Optional[Callable[[], Optional[Dict[str, float]]]] = None
    after_name: Optional[str] = None

    def __post_init__(self):
        if self.batches not in ('triplets', 'users'):
            raise ValueError(f"phase '{self.name}': batches must be "
                             f"'triplets' or 'users', got {self.batches!r}")


class Recommender(torch.nn.Module):
    r"""Base class of the models trained by :class:`mmdiff.train.Trainer`."""

    #: registry name, e.g. ``'lightgcn'``
    name: str = 'recommender'
    #: whether the model needs at least one item modality
    requires_modalities: bool = False

    @classmethod
    def from_data(cls, data: HeteroData, **hparams) -> 'Recommender':
        raise NotImplementedError

    def phases(self) -> List[TrainingPhase]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        r"""Called before the first phase of every epoch."""

    def prepare_scoring(self) -> None:
        r"""Called (under :func:`torch.no_grad`) before a series of
        :meth:`score` calls; cache whatever all users share here."""

    def score(self, users: Tensor) -> Tensor:
        r"""Scores of ``users`` (``[B]``) against all items, ``[B, I]``.
        Higher is better; the caller masks training items."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device('cpu')
