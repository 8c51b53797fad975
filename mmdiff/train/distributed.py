r"""Data-parallel training over processes (``torchrun``) with
:mod:`torch.distributed`, exact with respect to one process.

A job of :math:`N` ranks trains like one process with the same global
batch :math:`B`:

* every rank holds the whole model, the data, and the *same* random
  generators (same seed), so sampler permutations, negatives and every
  per-row draw of a loss are the global ones (:mod:`mmdiff.sharding`);
* each global mini-batch is cut into contiguous shards of
  :math:`\lceil B/N\rceil` / :math:`\lfloor B/N\rfloor` rows
  (:func:`~mmdiff.sharding.shard_of`); rank :math:`r` computes its additive
  share :math:`\ell_r` of the loss and back-propagates :math:`N\ell_r`
  through :class:`~torch.nn.parallel.DistributedDataParallel`, whose
  gradient average then equals :math:`\nabla\mathcal{L}` of the global
  batch;
* evaluation is sharded over user chunks; per-chunk metric sums are
  all-reduced and added in chunk order (exactly the single-process sum);
* early-stopping decisions are taken by rank 0 and broadcast;
* rank 0 alone writes checkpoints, history and ``metrics.json``.

The process group is created from the ``torchrun`` environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) with
backend ``gloo`` on CPU and ``nccl`` on CUDA, and a collective *timeout*:
a rank that dies makes its peers' next collective fail, a rank that hangs
makes it time out, and either ends the job with
:class:`~mmdiff.errors.TrainingError` instead of a silent hang.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from mmdiff.errors import ConfigError, TrainingError
from mmdiff.sharding import Ranks, Shard, all_gather_varlen, shard_of

__all__ = ['DistributedContext', 'init_distributed', 'env_world_size',
           'PhaseModule', 'wrap_phase', 'collective_error']

#: Default collective timeout in seconds (``--dist-timeout``).
DEFAULT_TIMEOUT = 300.0

_ENV = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def env_world_size() -> int:
    r"""``WORLD_SIZE`` of the ``torchrun`` environment (``1`` if unset)."""
    value = os.environ.get('WORLD_SIZE', '1')
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={value!r} is not an integer") from None
    if n < 1:
        raise ConfigError(f"WORLD_SIZE must be >= 1, got {n}")
    return n


@dataclass(frozen=True)
class DistributedContext:
    r"""Rank and world of this process (``world_size == 1``: a single
    process, no process group).

    Args:
        rank (int): Global rank :math:`r`.
        world_size (int): :math:`N`.
        local_rank (int): Rank on this node (selects the CUDA device).
        timeout (float): Collective timeout in seconds.
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout: float = DEFAULT_TIMEOUT

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        r"""Whether this is rank 0 (the rank that writes files)."""
        return self.rank == 0

    @classmethod
    def current(cls) -> 'DistributedContext':
        r"""The context of the initialised default process group, or a
        single-process context."""
        if dist.is_available() and dist.is_initialized() and \
                dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get('LOCAL_RANK', '0')),
                       _group_timeout())
        return cls()

    # Sharding ----------------------------------------------------------
    def shard(self, global_size: int) -> Optional[Shard]:
        r"""This rank's :class:`~mmdiff.sharding.Shard` of a batch of
        ``global_size`` rows (:obj:`None` in one process)."""
        if not self.enabled:
            return None
        return shard_of(global_size, self.rank, self.world_size)

    @property
    def ranks(self) -> Optional[Ranks]:
        r"""The :class:`~mmdiff.sharding.Ranks` of this job (:obj:`None`
        in one process)."""
        return Ranks(self.rank, self.world_size) if self.enabled else None

    # Collectives -------------------------------------------------------
    @property
    def comm_device(self) -> torch.device:
        r"""The device collectives run on, the current CUDA device for
        ``nccl`` (which reduces only CUDA tensors), else the CPU."""
        if self.enabled and dist.get_backend() == 'nccl':
            return torch.device('cuda', torch.cuda.current_device())
        return torch.device('cpu')

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        r"""Element-wise sum over ranks, in place, on :attr:`comm_device`
        whatever the device of ``x`` (identity in one process)."""
        if self.enabled:
            with collective_error('all_reduce', self):
                y = x.to(self.comm_device)
                dist.all_reduce(y, op=dist.ReduceOp.SUM)
                if y is not x:
                    x.copy_(y)
        return x

    def all_gather_rows(self, x: Tensor) -> Tensor:
        r"""Concatenation over ranks, in rank order, of ``[n_r, ...]``
        tensors whose ``n_r`` may differ (identity in one process)."""
        if not self.enabled:
            return x
        with collective_error('all_gather', self):
            return all_gather_varlen(x.to(self.comm_device),
                                     self.world_size).to(x.device)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        r"""``obj`` of rank ``src`` on every rank (pickled; small objects
        such as an early-stopping decision)."""
        if not self.enabled:
            return obj
        with collective_error('broadcast', self):
            box = [obj]
            dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            with collective_error('barrier', self):
                dist.barrier()


def _group_timeout() -> float:
    r"""The collective timeout of the default group, in seconds (private
    API, hence the fallback to the default)."""
    try:
        from torch.distributed.distributed_c10d import _get_default_group
        pg = _get_default_group()
        dev = torch.device('cuda' if dist.get_backend() == 'nccl' else 'cpu')
        return pg._get_backend(dev).options._timeout.total_seconds()
    except Exception:  # noqa: BLE001 - other torch versions
        return DEFAULT_TIMEOUT


def init_distributed(device: str = 'auto',
                     timeout: float = DEFAULT_TIMEOUT,
                     backend: Optional[str] = None
                     ) -> DistributedContext:
    r"""Creates the default process group from the ``torchrun``
    environment, once; returns the :class:`DistributedContext`.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is created and
    a single-process context is returned.

    Args:
        device (str): ``'cpu'``, ``'cuda'`` or ``'auto'``; picks the backend
            (``gloo`` / ``nccl``) unless ``backend`` is given.  On CUDA,
            rank ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``.
        timeout (float): Seconds after which a collective that some rank
            never joins fails (a dead or hung rank).  (default: ``300``)
        backend (str, optional): Overrides the backend.
    """
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) \
            or not timeout > 0:
        raise ConfigError(f"the distributed timeout must be a positive "
                          f"number of seconds, got {timeout!r}")
    world = env_world_size()
    if world == 1:
        return DistributedContext(timeout=float(timeout))
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} "
                          f"not set: start distributed runs with torchrun "
                          f"(torchrun --nproc_per_node N -m mmdiff train "
                          f"...)")
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed")
    rank = int(os.environ['RANK'])
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    cuda = (device == 'auto' and torch.cuda.is_available()) or \
        str(device).startswith('cuda')
    if backend is None:
        backend = 'nccl' if cuda else 'gloo'
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=float(timeout)))
    return DistributedContext(rank, world, local_rank, float(timeout))


class collective_error:
    r"""Context manager turning the failure of a collective (a peer that
    died, hung past the timeout, or closed its connection) into a
    :class:`~mmdiff.errors.TrainingError` that names the rank, the
    operation and the remedy."""

    def __init__(self, what: str, ctx: DistributedContext,
                 where: str = ''):
        self.what, self.ctx, self.where = what, ctx, where

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, TrainingError) or \
                not isinstance(exc, RuntimeError):
            return False
        raise TrainingError(
            f"rank {self.ctx.rank}/{self.ctx.world_size}: collective "
            f"'{self.what}'{self.where} failed - another rank died, hung "
            f"longer than the {self.ctx.timeout:g} s timeout, or lost its "
            f"connection ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}).  The job is "
            f"stopped; restart it with --resume from the last checkpoint"
        ) from exc


class PhaseModule(torch.nn.Module):
    r"""The module a :class:`~torch.nn.parallel.DistributedDataParallel`
    wraps for one training phase: its ``forward(batch)`` is the phase's
    ``loss(batch)``, and every parameter of the model outside the phase is
    ignored by DDP (each phase has its own optimiser and parameters).

    Args:
        model (torch.nn.Module): The recommender (registered as a
            submodule, not copied).
        loss (callable): The phase's ``loss(batch) -> dict``.
        parameters (list): The phase's parameters.
    """

    def __init__(self, model: torch.nn.Module, loss, parameters:
                 Sequence[torch.nn.Parameter]):
        super().__init__()
        self.model = model
        self._loss = loss
        keep = {id(p) for p in parameters}
        self.ignored = [f'model.{n}' for n, p in model.named_parameters()
                        if id(p) not in keep] + \
            [f'model.{n}' for n, _ in model.named_buffers()]

    def forward(self, batch) -> Dict[str, Tensor]:
        return self._loss(batch)


def wrap_phase(model: torch.nn.Module, loss, parameters,
               ctx: DistributedContext
               ) -> torch.nn.parallel.DistributedDataParallel:
    r"""A :class:`~torch.nn.parallel.DistributedDataParallel` over the
    ``parameters`` of one phase.  Buffers are ignored (never broadcast:
    every rank keeps them identical by construction, e.g. the step
    sampler's history is updated from the gathered global batch).  The
    phase's parameters are broadcast from rank 0 once, here.
    ``find_unused_parameters`` is on, because a phase's loss need not touch
    every parameter of the phase in every batch (one extra traversal of
    the autograd graph per step)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    module = PhaseModule(model, loss, parameters)
    DDP._set_params_and_buffers_to_ignore_for_model(module, module.ignored)
    dev = next(iter(parameters)).device if parameters else \
        torch.device('cpu')
    with collective_error('DDP init', ctx):
        return DDP(module,
                   device_ids=[dev.index] if dev.type == 'cuda' else None,
                   find_unused_parameters=True)
