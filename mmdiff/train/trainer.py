r"""The one fit loop of :mod:`mmdiff`.

Every model (:class:`~mmdiff.nn.models.base.Recommender`) is trained by
:class:`Trainer`: epochs made of the model's phases, validation every
``eval_every`` epochs, early stopping on validation Recall@20 with patience,
best weights restored, a final test evaluation.  Optionally (``out_dir``) it
writes the history as CSV and JSONL, an atomic checkpoint every epoch (model,
optimisers, RNG and sampler state, early-stopping state) from which
:meth:`Trainer.fit` resumes exactly, and ``metrics.json``.

Under ``torchrun`` (an initialised process group, or ``dist=``) the same
loop is data-parallel and equal to one process with the same global batch
(:mod:`mmdiff.train.distributed`): batches are sharded over ranks, gradients
averaged by :class:`~torch.nn.parallel.DistributedDataParallel`,
evaluation sharded over users, and rank 0 writes every file.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from mmdiff.data.hetero import (
    edge_index_of,
    interaction_csr,
    num_items,
    num_users,
)
from mmdiff.data.samplers import TripletSampler, UserRowSampler
from mmdiff.checks import check_int
from mmdiff.errors import CheckpointError, ConfigError, TrainingError
from mmdiff.metrics import METRIC_NAMES, check_ks, full_ranking_metrics
from mmdiff.nn.models.base import Recommender, TrainingPhase
from mmdiff.train.checkpoint import (
    FORMAT,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    state_dict_mismatch,
)
from mmdiff.sharding import ranks_context, sharded
from mmdiff.train.distributed import (
    DistributedContext,
    collective_error,
    wrap_phase,
)
from mmdiff.train.seed import resolve_device, seed_everything


@dataclass
class FitResult:
    r"""What :meth:`Trainer.fit` returns.

    ``test_metrics``/``val_metrics`` are those of the validation-selected
    model (the honest protocol); ``best_test_epoch_metrics`` are the test
    metrics of the epoch with the best *test* Recall@K (the DiffMM paper's
    protocol, reported for comparison only)."""
    best_epoch: int
    epochs_run: int
    val_metrics: Dict[str, float]
    test_metrics: Dict[str, float]
    best_test_epoch: int = -1
    best_test_epoch_metrics: Dict[str, float] = field(default_factory=dict)
    seconds_per_epoch: float = 0.0
    phase_seconds: Dict[str, float] = field(default_factory=dict)
    history: List[Dict[str, Any]] = field(default_factory=list)

    def metrics_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for split, m in (('test', self.test_metrics),
                         ('val', self.val_metrics)):
            for k, v in m.items():
                out[f'{split}/{k}'] = v
        for k, v in self.best_test_epoch_metrics.items():
            out[f'best_test_epoch/{k}'] = v
        out['best_epoch'] = self.best_epoch
        out['best_test_epoch'] = self.best_test_epoch
        out['epochs_run'] = self.epochs_run
        out['seconds_per_epoch'] = self.seconds_per_epoch
        for k, v in self.phase_seconds.items():
            out[f'seconds_per_epoch/{k}'] = v
        return out


class Trainer:
    r"""Fits a :class:`~mmdiff.nn.models.base.Recommender` on a canonical
    :class:`HeteroData`.

    Args:
        model (Recommender): The model (built from ``data``).
        data (HeteroData): Train/validation/test interactions.
        epochs (int): Maximum number of epochs.  (default: ``100``)
        batch_size (int): Default batch size of the phases (triples or
            users).  (default: ``2048``)
        eval_every (int): Validate every this many epochs.  (default: ``1``)
        patience (int): Stop after this many consecutive evaluations without
            an improvement of the monitored validation metric; ``0``
            disables early stopping.  (default: ``20``)
        ks (sequence of int): Cut-offs of the metrics.  (default: ``(10, 20)``)
        monitor (str): Validation metric used for model selection.
            (default: ``'recall@20'``)
        device (str): ``'auto'``, ``'cpu'`` or ``'cuda[:N]'``.
        seed (int): Global seed.  (default: ``0``)
        out_dir (str, optional): Folder for history, checkpoints and
            ``metrics.json``.
        resume (bool): Continue from ``out_dir/checkpoint.pt``.
        track_test (bool): Also evaluate the test split at every evaluation
            (to report the best-test-epoch protocol beside the honest one).
        eval_chunk (int): Users per evaluation chunk.  (default: ``1024``)
        progress (bool): tqdm bars for epochs and batches.
        log (callable, optional): Receives one line per epoch.
        on_epoch (callable, optional): Receives a copy of each epoch's
            history row (losses, ``val/...``/``test/...`` metrics and the
            ``time/<phase>`` seconds) once the epoch is complete.
        config (dict, optional): Saved in checkpoints, so that a run can be
            rebuilt (CLI ``evaluate`` / ``recommend``).
        max_grad_norm (float, optional): Clip gradients to this norm.
        dist (DistributedContext, optional): The data-parallel job this
            process is a rank of (default: the initialised default process
            group, if any, else one process).  Every rank must build the
            same model and trainer with the same seed; ``batch_size`` is
            the *global* batch.
    """

    def __init__(
        self,
        model: Recommender,
        data: HeteroData,
        *,
        epochs: int = 100,
        batch_size: int = 2048,
        eval_every: int = 1,
        patience: int = 20,
        ks: Sequence[int] = (10, 20),
        monitor: str = 'recall@20',
        device: str = 'cpu',
        seed: int = 0,
        out_dir: Optional[str] = None,
        resume: bool = False,
        track_test: bool = True,
        eval_chunk: int = 1024,
        progress: bool = False,
        log: Optional[Callable[[str], None]] = None,
        on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
        config: Optional[Dict[str, Any]] = None,
        max_grad_norm: Optional[float] = None,
        dist: Optional[DistributedContext] = None,
    ):
        self.epochs = check_int('epochs', epochs, 0)
        self.batch_size = check_int('batch_size', batch_size, 1)
        self.eval_every = check_int('eval_every', eval_every, 1)
        self.patience = check_int('patience', patience, 0)
        self.eval_chunk = check_int('eval_chunk', eval_chunk, 1)
        self.ks = check_ks(ks, num_items(data))
        computed = {f'{m}@{k}' for m in METRIC_NAMES for k in self.ks}
        if not isinstance(monitor, str) or monitor not in computed:
            raise ConfigError(f"monitor {monitor!r} is not one of the "
                              f"computed metrics (ks={self.ks})")
        self.monitor = monitor
        self.model = model
        self.data = data
        self.device = resolve_device(device)
        self.seed = seed
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume = resume
        self.track_test = track_test
        self.progress = progress
        self.log = log or (lambda s: None)
        self.on_epoch = on_epoch
        self.config = dict(config or {})
        self.max_grad_norm = max_grad_norm
        if resume and self.out_dir is None:
            raise ConfigError("resume needs an output folder (out_dir)")

        self._train = edge_index_of(data, 'train').cpu()
        self._val = edge_index_of(data, 'val').cpu()
        self._test = edge_index_of(data, 'test').cpu()
        self._U, self._I = num_users(data), num_items(data)
        self.generator = seed_everything(seed)
        self.model.to(self.device)
        self.phases = self.model.phases()
        # torch's default Adam (per-tensor loop on CPU).  foreach=True gives
        # the same numbers but no measurable epoch gain here and holds a
        # temporary per parameter at once (+~100 MB peak for DiffMM on
        # TikTok); fused=True is faster but rounds differently, which the
        # float32 golden test does not allow.
        self.optimizers = [
            torch.optim.Adam(p.parameters, lr=p.lr,
                             weight_decay=p.weight_decay)
            for p in self.phases
        ]
        self._phase_params = self._parameter_ids(self.phases)
        covered = set().union(*self._phase_params) if self._phase_params \
            else set()
        idle = [n for n, p in model.named_parameters()
                if p.requires_grad and id(p) not in covered]
        if idle:
            warnings.warn(f"{len(idle)} trainable parameter(s) of "
                          f"{type(model).__name__} belong to no training "
                          f"phase and will never be updated: "
                          f"{', '.join(idle[:5])}"
                          + (' ...' if len(idle) > 5 else ''), UserWarning)
        self._csr = None
        self.dist = dist if dist is not None else \
            DistributedContext.current()
        if self.dist.enabled:
            # One DDP per phase (each has its own parameters and optimiser);
            # rank 0's parameters are broadcast here.
            self._ddp = [wrap_phase(model, p.loss, p.parameters, self.dist)
                         for p in self.phases]

    @staticmethod
    def _parameter_ids(phases) -> List[set]:
        return [{id(p) for p in phase.parameters} for phase in phases]

    def _check_phases(self) -> None:
        r"""Raises :class:`~mmdiff.errors.TrainingError` if the model's
        phases no longer name the parameters the optimisers were built for
        (e.g. a denoiser replaced after the trainer was built, whose new
        parameters would otherwise never be updated)."""
        current = self.model.phases()
        now = self._parameter_ids(current)
        if [p.name for p in current] != [p.name for p in self.phases] or \
                now != self._phase_params:
            changed = [p.name for p, a, b in zip(current, now,
                                                 self._phase_params)
                       if a != b] or [p.name for p in current]
            raise TrainingError(
                f"the parameters of phase(s) {', '.join(changed)} changed "
                f"after the Trainer was built (a module of the model was "
                f"replaced?); its optimisers would never update the new "
                f"parameters.  Build the Trainer after the model is "
                f"complete.")

    # ------------------------------------------------------------------
    def _sampler(self, phase):
        bs = phase.batch_size or self.batch_size
        if phase.batches == 'triplets':
            return TripletSampler(self._train, self._I, bs, self.generator)
        if self._csr is None:
            self._csr = interaction_csr(self.data, 'train')
        return UserRowSampler(self._csr, bs, generator=self.generator)

    @torch.no_grad()
    def evaluate(self, split: str = 'test',
                 ks: Optional[Sequence[int]] = None) -> Dict[str, float]:
        r"""Full-ranking metrics of the current model on ``split`` (training
        items masked)."""
        target = {'val': self._val, 'test': self._test}.get(split)
        if target is None:
            raise ConfigError(f"unknown split {split!r}")
        self.model.eval()
        self.model.prepare_scoring()
        return full_ranking_metrics(
            self.model.score, target, self._U, self._I, train=self._train,
            ks=ks or self.ks, chunk_size=self.eval_chunk, device=self.device,
            rank=self.dist.rank, world_size=self.dist.world_size,
            all_reduce=self.dist.all_reduce_sum)

    def _state(self, epoch, best, history) -> Dict[str, Any]:
        return {
            'format': FORMAT,
            'model_name': getattr(self.model, 'name', type(self.model)
                                  .__name__),
            'num_users': self._U,
            'num_items': self._I,
            'config': self.config,
            'epoch': epoch,
            'model_state': self.model.state_dict(),
            'optimizers': [o.state_dict() for o in self.optimizers],
            'rng_torch': torch.get_rng_state(),
            'rng_cuda': (torch.cuda.get_rng_state_all()
                         if torch.cuda.is_available() else []),
            'rng_sampler': self.generator.get_state(),
            'best': best,
            'history': history,
        }

    def _write_history(self, history: List[Dict[str, Any]]) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        atomic_write_text(''.join(json.dumps(r) + '\n' for r in history),
                          self.out_dir / 'history.jsonl')
        keys: List[str] = []
        for r in history:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in history:
            w.writerow(r)
        atomic_write_text(buf.getvalue(), self.out_dir / 'history.csv')

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        if ckpt['num_items'] != self._I or ckpt['num_users'] != self._U:
            raise CheckpointError(
                f"checkpoint was trained on {ckpt['num_users']} users x "
                f"{ckpt['num_items']} items, this data has {self._U} x "
                f"{self._I}")
        name = getattr(self.model, 'name', type(self.model).__name__)
        if ckpt['model_name'] != name:
            raise CheckpointError(f"checkpoint belongs to model "
                                  f"{ckpt['model_name']!r}, not {name!r}")
        try:
            self.model.load_state_dict(ckpt['model_state'])
            if len(ckpt['optimizers']) != len(self.optimizers):
                raise ValueError(f"{len(ckpt['optimizers'])} optimiser "
                                 f"state(s) for {len(self.optimizers)} "
                                 f"training phase(s)")
            for opt, st in zip(self.optimizers, ckpt['optimizers']):
                opt.load_state_dict(st)
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint does not fit this {name!r} model (other "
                f"hyper-parameters?): {state_dict_mismatch(e)}") from None
        torch.set_rng_state(ckpt['rng_torch'])
        if ckpt['rng_cuda'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt['rng_cuda'])
        self.generator.set_state(ckpt['rng_sampler'])

    def _run_phase(self, epoch: int, phase: TrainingPhase,
                   opt: torch.optim.Optimizer
                   ) -> Tuple[Dict[str, float], int]:
        r"""One pass of ``phase`` over its mini-batches: loss, backward,
        step.  Returns the summed logged losses and the number of
        batches."""
        from tqdm.auto import tqdm

        sums: Dict[str, float] = {}
        n = 0
        sampler = self._sampler(phase)
        d = self.dist
        if d.enabled:
            batches = sampler.shards(d.rank, d.world_size)
            ddp = next(m for p, m in zip(self.phases, self._ddp)
                       if p is phase)
        else:
            batches = ((None, b) for b in sampler)
        for shard, batch in tqdm(batches, desc=phase.name, leave=False,
                                 total=len(sampler),
                                 disable=not self.progress):
            batch = batch.to(self.device)
            if shard is None:
                out = phase.loss(batch)
                values = {k: float(v.detach()) for k, v in out.items()}
            else:
                out, values = self._sharded_loss(ddp, phase, shard, batch,
                                                 epoch)
            bad = [k for k, v in values.items()
                   if not math.isfinite(v)]
            if bad:
                # name the culprit term rather than the total
                terms = [k for k in bad if k != 'loss'] or bad
                k = terms[0]
                also = [t for t in bad if t != k]
                raise TrainingError(
                    f"epoch {epoch}: the '{k}' loss of phase "
                    f"'{phase.name}' is {values[k]} (non-finite"
                    + (f"; also non-finite: {', '.join(also)}"
                       if also else '')
                    + "); training stopped"
                    + (f", last good checkpoint kept in "
                       f"{self.out_dir}" if self.out_dir else ''))
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            opt.zero_grad(set_to_none=True)
            if shard is None:
                out['loss'].backward()
            else:
                with collective_error('gradient all-reduce', d,
                                      f' (epoch {epoch}, phase '
                                      f'{phase.name!r})'):
                    # DDP averages over ranks: N * share sums the shares.
                    (out['loss'] * d.world_size).backward()
            if self.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(phase.parameters,
                                               self.max_grad_norm)
            opt.step()
            n += 1
        return sums, n

    def _sharded_loss(self, ddp, phase: TrainingPhase, shard, batch,
                      epoch: int) -> Tuple[Dict[str, Tensor],
                                           Dict[str, float]]:
        r"""This rank's additive share of the phase loss on its shard of a
        global batch, and the global logged values (shares all-reduced, so
        that every rank sees, and stops on, the same non-finite loss)."""
        d = self.dist
        with sharded(shard), collective_error(
                'forward', d, f' (epoch {epoch}, phase {phase.name!r})'):
            out = ddp(batch)
        if phase.reduction == 'mean':
            scale = shard.mean_scale
            out = {k: v * scale for k, v in out.items()}
        keys = sorted(out)
        shares = torch.stack([out[k].detach().double().reshape(())
                              for k in keys])
        d.all_reduce_sum(shares)
        return out, dict(zip(keys, shares.tolist()))

    # ------------------------------------------------------------------
    def fit(self) -> FitResult:
        r"""Trains, selects the best validation epoch and evaluates it."""
        from tqdm.auto import tqdm

        model = self.model
        has_val = self._val.size(1) > 0
        history: List[Dict[str, Any]] = []
        best: Dict[str, Any] = {'score': -math.inf, 'epoch': -1, 'bad': 0,
                                'state': None, 'test_score': -math.inf,
                                'test_epoch': -1, 'test_metrics': {}}
        start = 0
        if self.resume:
            ckpt = load_checkpoint(self.out_dir / 'checkpoint.pt')
            self._restore(ckpt)
            best = ckpt['best']
            history = list(ckpt['history'])
            start = ckpt['epoch'] + 1
            self.log(f"resumed from {self.out_dir / 'checkpoint.pt'} at "
                     f"epoch {start}")
        if self.out_dir is not None and self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(json.dumps(self.config, indent=2, default=str),
                              self.out_dir / 'config.json')

        phase_time: Dict[str, float] = {}
        epoch_times: List[float] = []
        stop = start < self.epochs and best['bad'] >= self.patience > 0
        bar = tqdm(range(start, self.epochs), desc='epochs',
                   disable=not self.progress, leave=False)
        for epoch in bar:
            if stop:
                break
            self._check_phases()
            t_epoch = time.perf_counter()
            model.train()
            model.on_epoch_start(epoch)
            row: Dict[str, Any] = {'epoch': epoch}
            for phase, opt in zip(self.phases, self.optimizers):
                t0 = time.perf_counter()
                # 'phase/<name>' labels the phase for torch.profiler
                # (benchmarks/profile_diffmm.py); free without a profiler
                with torch.profiler.record_function(f'phase/{phase.name}'):
                    sums, n = self._run_phase(epoch, phase, opt)
                for k, v in sums.items():
                    row[f'{phase.name}/{k}'] = v / max(n, 1)
                t1 = time.perf_counter()
                row[f'time/{phase.name}'] = t1 - t0
                if phase.after is not None:
                    after = phase.after_name or f'{phase.name}_after'
                    with torch.no_grad(), \
                            torch.profiler.record_function(f'phase/{after}'), \
                            ranks_context(self.dist.ranks), \
                            collective_error('after-phase hook', self.dist,
                                             f' ({after}, epoch {epoch})'):
                        extra = phase.after() or {}
                    row.update({f'{phase.name}/{k}': v
                                for k, v in extra.items()})
                    row[f'time/{after}'] = time.perf_counter() - t1
            row['time/train'] = time.perf_counter() - t_epoch
            last = epoch == self.epochs - 1
            if (epoch + 1) % self.eval_every == 0 or last:
                t0 = time.perf_counter()
                if has_val:
                    with torch.profiler.record_function('phase/eval'):
                        val = self.evaluate('val')
                    row.update({f'val/{k}': v for k, v in val.items()})
                    score = val[self.monitor]
                row['time/eval'] = time.perf_counter() - t0
                if self.track_test or not has_val:
                    test = self.evaluate('test')
                    row.update({f'test/{k}': v for k, v in test.items()})
                    if test[self.monitor] > best['test_score']:
                        best['test_score'] = test[self.monitor]
                        best['test_epoch'] = epoch
                        best['test_metrics'] = dict(test)
                if not has_val:
                    score = epoch  # no validation split: keep the last epoch
                # Taken once (rank 0) and broadcast, so that every rank
                # keeps the same best state and stops at the same epoch.
                improved = self.dist.broadcast_object(
                    bool(score > best['score']))
                if improved:
                    best.update(score=score, epoch=epoch, bad=0, state={
                        k: v.detach().clone().cpu()
                        for k, v in model.state_dict().items()
                        if isinstance(v, Tensor)} | {
                        k: copy.deepcopy(v)
                        for k, v in model.state_dict().items()
                        if not isinstance(v, Tensor)})
                else:
                    best['bad'] += 1
                stop = self.dist.broadcast_object(
                    bool(self.patience and best['bad'] >= self.patience))
            row['time/epoch'] = time.perf_counter() - t_epoch
            epoch_times.append(row['time/train'])
            for k, v in row.items():
                if k.startswith('time/'):
                    phase_time[k[5:]] = phase_time.get(k[5:], 0.0) + v
            history.append(row)
            self.log(self._line(row))
            if self.on_epoch is not None:
                self.on_epoch(dict(row))
            self._write_history(history)
            if self.out_dir is not None and self.dist.is_main:
                atomic_save(self._state(epoch, best, history),
                            self.out_dir / 'checkpoint.pt')

        if best['state'] is not None:
            model.load_state_dict(best['state'])
        val = self.evaluate('val') if has_val else {}
        test = self.evaluate('test')
        n_ep = max(len(epoch_times), 1)
        result = FitResult(
            best_epoch=best['epoch'],
            epochs_run=len(history),
            val_metrics=val,
            test_metrics=test,
            best_test_epoch=best['test_epoch'],
            best_test_epoch_metrics=best['test_metrics'],
            seconds_per_epoch=sum(epoch_times) / n_ep,
            phase_seconds={k: v / n_ep for k, v in phase_time.items()
                           if k not in ('epoch',)},
            history=history,
        )
        if self.out_dir is not None and self.dist.is_main:
            atomic_save({'format': FORMAT,
                         'model_name': getattr(model, 'name', ''),
                         'num_users': self._U, 'num_items': self._I,
                         'config': self.config,
                         'model_state': model.state_dict()},
                        self.out_dir / 'best_model.pt')
            atomic_write_text(json.dumps(result.metrics_dict(), indent=2),
                              self.out_dir / 'metrics.json')
        # the files of rank 0 exist when any rank returns
        self.dist.barrier()
        return result

    def _line(self, row: Dict[str, Any]) -> str:
        parts = [f"epoch {row['epoch']:4d}"]
        for k, v in row.items():
            if k.endswith('/loss'):
                parts.append(f"{k} {v:.4f}")
        for k in (f'val/{self.monitor}', f'test/{self.monitor}'):
            if k in row:
                parts.append(f"{k} {row[k]:.4f}")
        parts.append(f"{row['time/epoch']:.1f}s")
        return '  '.join(parts)
