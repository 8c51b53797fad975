r"""Data-parallel epochs: 1 process x 1 thread against N processes x 1
thread (gloo on CPU, the ``torchrun`` environment), and the dense-memory
scaling of the row-diffusion denoisers.

Per model and world size it records the training time of one epoch (all
phases, DiffMM's regeneration included; evaluation apart), the speed-up
over one process, every rank's peak resident memory, and the bytes DDP
all-reduces per optimiser step (measured by a communication hook that
counts the gradient buckets, then runs the default all-reduce).

``--dense`` measures the peak memory of one DiffRec training step (the
``[B, I]`` rows and the ``I x hidden`` first and last layers of the MLP
denoiser that DiffRec, DiffMM and LD4MRec's C-Net share in form) on
synthetic data at the given item counts, to extrapolate where one device
runs out (``docs/guide/distributed.md``).

Usage::

    python benchmarks/distributed.py --root DATA --dataset sports \
        --models lightgcn diffmm --worlds 1 2 --features image=4096 text=384
    python benchmarks/distributed.py --dense 10000 100000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / 'results'
RUNS = RESULTS / 'distributed_runs'


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------
def worker(args) -> int:
    r"""One rank: one epoch of ``args.model``; writes its record."""
    import warnings
    warnings.simplefilter('ignore')
    import torch
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from speed import attach_features
    from mmdiff.nn.models import get_model_class
    from mmdiff.train import Trainer
    from mmdiff.train.config import preset, split_config
    from mmdiff.train.distributed import init_distributed
    from mmdiff.train.run import dataset_key, load_data
    from mmdiff.train.seed import seed_everything

    ctx = init_distributed('cpu', timeout=1800)
    cls = get_model_class(args.model)
    data = load_data(args.dataset, args.root)
    if cls.requires_modalities:
        data = attach_features(data, {k: int(v) for k, v in (
            f.split('=', 1) for f in args.features)})
    cfg = preset(cls.name, dataset_key(args.dataset))
    cfg.update(epochs=1, patience=0)
    trainer_kw, hparams = split_config(cfg, cls)
    seed_everything(0)
    model = cls.from_data(data, **hparams)
    trainer = Trainer(model, data, device='cpu', seed=0, **trainer_kw)
    counts: List[Dict[str, int]] = []
    if ctx.enabled:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks \
            import allreduce_hook
        for ddp in trainer._ddp:
            c = {'bytes': 0, 'buckets': 0}
            counts.append(c)

            def hook(state, bucket, c=c):
                buf = bucket.buffer()
                c['bytes'] += buf.numel() * buf.element_size()
                c['buckets'] += 1
                return allreduce_hook(None, bucket)
            ddp.register_comm_hook(None, hook)
    steps = [len(trainer._sampler(p)) for p in trainer.phases]
    cpu0 = time.process_time()
    result = trainer.fit()
    cpu = time.process_time() - cpu0
    row = result.history[0]
    rec = {
        'model': cls.name, 'dataset': args.dataset, 'rank': ctx.rank,
        'world': ctx.world_size, 'threads': args.threads,
        'num_users': trainer._U, 'num_items': trainer._I,
        'train_seconds': row['time/train'],
        'phase_seconds': {k[5:]: v for k, v in row.items()
                          if k.startswith('time/')},
        'peak_rss_mb': peak_rss_mb(),
        # CPU seconds of the whole fit (training and evaluation): with
        # ``train_seconds`` it shows how much of a core the rank had
        'cpu_seconds': cpu,
        'phases': [p.name for p in trainer.phases],
        'steps': steps,
        'param_bytes': [4 * sum(q.numel() for q in p.parameters)
                        for p in trainer.phases],
        'allreduce_bytes': [c['bytes'] for c in counts],
        'features': args.features if cls.requires_modalities else [],
    }
    Path(args.record).write_text(json.dumps(rec))
    return 0


def run_epoch(model: str, world: int, args) -> List[Dict]:
    r"""Launches ``world`` ranks (the ``torchrun`` environment) and returns
    their records."""
    port = _free_port()
    RUNS.mkdir(parents=True, exist_ok=True)
    procs, records = [], []
    for r in range(world):
        rec = RUNS / f'{model}-{args.dataset}-w{world}-r{r}.json'
        records.append(rec)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads), RANK=str(r),
                   LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
                   PYTHONPATH=str(ROOT))
        cmd = [sys.executable, str(Path(__file__).resolve()), '--worker',
               '--model', model, '--dataset', args.dataset,
               '--threads', str(args.threads), '--record', str(rec),
               '--features', *args.features]
        if args.root:
            cmd += ['--root', args.root]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{model} world={world}: a rank failed")
    return [json.loads(r.read_text()) for r in records]


# ----------------------------------------------------------------------
def dense_step(num_items: int, batch: int, hidden: int) -> Dict:
    r"""Peak memory of one DiffRec training step (run in a fresh
    process)."""
    code = f"""
import json, resource, torch, warnings
warnings.simplefilter('ignore')
torch.set_num_threads(1)
from mmdiff.data.synthetic import make_synthetic
from mmdiff.data.hetero import edge_index_of
from mmdiff.nn.models import DiffRec
from mmdiff.train import Trainer
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
data = make_synthetic(num_users={batch}, num_items={num_items},
                      interactions_per_user=20, modalities={{}}, seed=0)
base = rss()
model = DiffRec.from_data(data, hidden_dims=[{hidden}], batch_size={batch})
params = sum(p.numel() for p in model.parameters())
opt = torch.optim.Adam(model.parameters())
from mmdiff.data.samplers import UserRowSampler
from mmdiff.data.hetero import interaction_csr
b = next(iter(UserRowSampler(interaction_csr(data, 'train'), {batch})))
import time; t = time.perf_counter()
out = model.loss(b); out['loss'].backward(); opt.step()
print(json.dumps({{'num_items': {num_items}, 'batch': {batch},
                  'hidden': {hidden}, 'params': params,
                  'step_seconds': time.perf_counter() - t,
                  'peak_mb': rss() - base}}))
"""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------
def _mb(x: float) -> str:
    return f'{x:,.0f}'


def report(epochs: Dict[str, Dict[int, List[Dict]]], dense: List[Dict],
           command: str) -> str:
    lines = ['# Distributed training: epoch time and communication', '',
             f'Machine: {platform.processor() or platform.machine()}, '
             f'{os.cpu_count()} CPU cores (shared with other work while '
             f'measured), gloo over localhost, one thread per process.  '
             f'Date: {time.strftime("%Y-%m-%d")}.', '',
             f'Command: `{command}`', '']
    if epochs:
        lines += ['| model | data | processes x threads | epoch (train) s '
                  '| speed-up | phases s (rank 0) | peak RSS per rank MB '
                  '| all-reduced per step |',
                  '|---|---|---|---|---|---|---|---|']
        for model, by_world in epochs.items():
            t1 = None
            for world, recs in sorted(by_world.items()):
                r0 = recs[0]
                t = max(r['train_seconds'] for r in recs)
                t1 = t if world == 1 else t1
                sp = f'{t1 / t:.2f}x' if t1 else '-'
                phases = ', '.join(f'{k} {v:.1f}' for k, v in
                                   r0['phase_seconds'].items()
                                   if k not in ('train', 'epoch'))
                rss = ' / '.join(_mb(r['peak_rss_mb']) for r in recs)
                if world > 1:
                    comm = '; '.join(
                        f'{name}: {b / s / 2 ** 20:.2f} MiB'
                        for name, b, s in zip(r0['phases'],
                                              r0['allreduce_bytes'],
                                              r0['steps']))
                else:
                    comm = '-'
                size = f"{r0['num_users']:,} x {r0['num_items']:,}"
                lines.append(f"| {model} | {r0['dataset']} {size} | "
                             f"{world} x {r0['threads']} | {t:.1f} | {sp} "
                             f"| {phases} | {rss} | {comm} |")
        lines += ['', 'Epoch time is the slowest rank\'s training time of '
                  'one epoch (evaluation excluded, listed as `eval`).  '
                  '"All-reduced per step" is the gradient payload DDP sums '
                  'per optimiser step of each phase (counted by a '
                  'communication hook; with gloo\'s ring all-reduce each '
                  'rank sends and receives about twice that).  It equals '
                  '4 bytes x the phase\'s parameters: '
                  + '; '.join(
                      f"{m} {', '.join(f'{n} {b / 2 ** 20:.2f} MiB' for n, b in zip(bw[max(bw)][0]['phases'], bw[max(bw)][0]['param_bytes']))}"
                      for m, bw in epochs.items()) + '.', '']
    if dense:
        lines += ['## Dense rows and item-sized layers (one DiffRec step)',
                  '',
                  '| items I | batch B | hidden | parameters | step s | '
                  'peak memory of the step MB |', '|---|---|---|---|---|---|']
        for d in dense:
            lines.append(f"| {d['num_items']:,} | {d['batch']} | "
                         f"{d['hidden']} | {d['params']:,} | "
                         f"{d['step_seconds']:.2f} | {_mb(d['peak_mb'])} |")
        if len(dense) >= 2:
            a, b = dense[0], dense[-1]
            slope = (b['peak_mb'] - a['peak_mb']) / (b['num_items'] -
                                                    a['num_items'])
            lines += ['', f'Linear fit: {slope * 1000:.1f} MB per 1,000 '
                      f'items at B = {b["batch"]}, hidden = {b["hidden"]} '
                      f'(float32, Adam).', '']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--root', default=None)
    ap.add_argument('--dataset', default='sports')
    ap.add_argument('--models', nargs='+', default=['lightgcn', 'diffmm'])
    ap.add_argument('--worlds', nargs='+', type=int, default=[1, 2])
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--features', nargs='*', default=['image=4096',
                                                      'text=384'])
    ap.add_argument('--dense', nargs='*', type=int, default=None,
                    metavar='ITEMS')
    ap.add_argument('--dense-batch', type=int, default=1024)
    ap.add_argument('--dense-hidden', type=int, default=1000)
    ap.add_argument('--no-epochs', action='store_true')
    ap.add_argument('--out', default=str(RESULTS / 'distributed.md'))
    # worker mode (internal)
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--model', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--record', default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    epochs: Dict[str, Dict[int, List[Dict]]] = {}
    if not args.no_epochs:
        for model in args.models:
            epochs[model] = {w: run_epoch(model, w, args)
                             for w in args.worlds}
    dense = [dense_step(i, args.dense_batch, args.dense_hidden)
             for i in (args.dense or [])]
    cmd = 'python benchmarks/distributed.py ' + ' '.join(
        a if a != args.root else 'DATA' for a in (argv or sys.argv[1:]))
    text = report(epochs, dense, cmd)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
