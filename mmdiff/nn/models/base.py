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

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from mmdiff.data.batch import TripletBatch, UserBatch  # noqa: F401
from mmdiff.data.hetero import edges_to_csr
from mmdiff.data.samplers import dense_rows
from mmdiff.errors import ConfigError


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
        reduction (str): How ``loss`` behaves when a distributed trainer
            shards a batch over ranks (:mod:`mmdiff.sharding`).
            ``'mean'``: every returned entry is a mean over the batch's
            rows (the trainer weights it by :math:`n_r/n`).  ``'shard'``:
            ``loss`` reads :func:`~mmdiff.sharding.current_shard` and returns
            this rank's additive share of every entry itself (entries
            that are sums over rows divided by a constant, or terms shared
            by all rows).  In one process both are the plain loss.
            (default: ``'mean'``)
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
    reduction: str = 'mean'

    def __post_init__(self):
        if self.batches not in ('triplets', 'users'):
            raise ValueError(f"phase '{self.name}': batches must be "
                             f"'triplets' or 'users', got {self.batches!r}")
        if self.reduction not in ('mean', 'shard'):
            raise ValueError(f"phase '{self.name}': reduction must be "
                             f"'mean' or 'shard', got {self.reduction!r}")


class Recommender(torch.nn.Module):
    r"""Base class of the models trained by :class:`mmdiff.train.Trainer`."""

    #: registry name, e.g. ``'lightgcn'``
    name: str = 'recommender'
    #: whether the model needs at least one item modality
    requires_modalities: bool = False
    #: other accepted names of hyper-parameters, ``{alias: name}`` (e.g.
    #: the official DiffMM names); see :meth:`canonical_hparams`
    hparam_aliases: Mapping[str, str] = {}

    @classmethod
    def from_data(cls, data: HeteroData, **hparams) -> 'Recommender':
        raise NotImplementedError

    @classmethod
    def hparam_names(cls) -> set:
        r"""The hyper-parameters :meth:`from_data` accepts (keyword
        arguments of ``from_data`` and ``__init__`` other than the data and
        the tensors derived from it)."""
        names = set()
        for fn in (cls.from_data, cls.__init__):
            names |= {p.name for p in inspect.signature(fn).parameters
                      .values() if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                              p.KEYWORD_ONLY)}
        return names - {'self', 'cls', 'data', 'num_users', 'num_items',
                        'edge_index', 'features'}

    @classmethod
    def validated_hparams(cls, hparams: Mapping[str, Any]
                          ) -> Dict[str, Any]:
        r""":meth:`canonical_hparams`, then a
        :class:`~mmdiff.errors.ConfigError` naming every unknown
        hyper-parameter.  Every :meth:`from_data` starts with this."""
        hparams = cls.canonical_hparams(hparams)
        allowed = cls.hparam_names()
        unknown = sorted(k for k in hparams if k not in allowed)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown hyper-parameter(s) "
                f"{', '.join(unknown)}; valid: {', '.join(sorted(allowed))}"
                + (f" (also accepted: {', '.join(sorted(cls.hparam_aliases))})"
                   if cls.hparam_aliases else ''))
        return hparams

    @classmethod
    def canonical_hparams(cls, hparams: Mapping[str, Any],
                          prefer_alias: bool = False) -> Dict[str, Any]:
        r"""``hparams`` with every alias of :attr:`hparam_aliases` replaced
        by its name.  An alias given together with its name raises
        :class:`~mmdiff.errors.ConfigError` if the values differ, unless
        ``prefer_alias`` (used for merged configurations, where an alias can
        only come from a user's override of a preset written with the
        names)."""
        out: Dict[str, Any] = {}
        aliases = {k: v for k, v in hparams.items()
                   if k in cls.hparam_aliases}
        for k, v in hparams.items():
            if k not in cls.hparam_aliases:
                out[k] = v
        for alias, v in aliases.items():
            name = cls.hparam_aliases[alias]
            if name in out and out[name] != v and not prefer_alias:
                raise ConfigError(
                    f"{cls.__name__}: {alias!r} is another name of "
                    f"{name!r}; got both ({alias}={v!r}, {name}="
                    f"{out[name]!r})")
            out[name] = v
        return out

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


class RowDiffusionRecommender(Recommender):
    r"""Base of the recommenders trained by one diffusion phase over user
    interaction rows (DiffRec, LD4MRec).

    A subclass sets ``num_users``, ``num_items``, ``lr``, ``weight_decay``
    and ``batch_size`` (:obj:`None`: the trainer's), calls
    :meth:`register_interactions` and implements ``loss(batch)`` (a
    :class:`UserBatch`) and :meth:`score`.  The training matrix is kept as
    the persistent CSR buffers ``crow`` / ``col`` (scoring needs the rows,
    so checkpoints carry them)."""

    def register_interactions(self, edge_index: Tensor) -> None:
        r"""Stores the ``[2, E]`` (user, item) training edges as CSR."""
        csr = edges_to_csr(edge_index.cpu().long(), self.num_users,
                           self.num_items)
        self.register_buffer('crow', csr.crow_indices().clone())
        self.register_buffer('col', csr.col_indices().clone())

    def rows(self, users: Tensor) -> Tensor:
        r"""Dense ``[B, I]`` training rows of ``users`` (only the batch is
        densified)."""
        return dense_rows(self.crow, self.col, users.to(self.crow.device),
                          self.num_items)

    def phases(self) -> List[TrainingPhase]:
        r"""One phase, ``'diffusion'``, over user batches, stepping every
        parameter with Adam."""
        return [TrainingPhase('diffusion', 'users', self.loss,
                              list(self.parameters()), lr=self.lr,
                              weight_decay=self.weight_decay,
                              batch_size=self.batch_size)]
