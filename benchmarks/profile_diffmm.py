r"""Per-phase, per-operator profile of one DiffMM training epoch.

Trains the TikTok preset (or any ``--model``/``--dataset``) for one warm-up
epoch, then profiles the next epoch with :mod:`torch.profiler`.  Every
operator's *self* CPU time is attributed to the training phase it ran in
(the trainer labels its phases ``phase/<name>``), so the report says, per
phase, which operators (with their input shapes) take the time.  The
un-profiled wall time of each phase comes from the warm-up epoch and a
third, un-profiled epoch (the profiler itself adds per-operator overhead).

Writes ``benchmarks/results/<tag>.md`` and ``.json``.

Example::

    python benchmarks/profile_diffmm.py --root ../shared/data --threads 2 \
        --tag diffmm_profile_fp32
    python benchmarks/profile_diffmm.py --root ../shared/data --threads 2 \
        --set precision=bf16 --tag diffmm_profile_bf16
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

import torch

from speed import use_allocator  # benchmarks/speed.py

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')
# epoch 0 is the warm-up (run plain, before the profiler's active step)
warnings.filterwarnings('ignore', message=".*Profiler won't be using warmup")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / 'results'
PREFIX = 'phase/'


def _phase_of(event) -> str:
    r"""Name of the ``phase/<name>`` range enclosing a profiler event."""
    e = event
    while e is not None:
        if e.name.startswith(PREFIX):
            return e.name[len(PREFIX):]
        e = e.cpu_parent
    return 'other'


def attribute(events, top: int) -> Dict[str, Any]:
    r"""Self CPU time (s) per phase, per operator and per (operator,
    shapes), from the profiler's event tree."""
    per_op: Dict[str, Dict[str, List[float]]] = defaultdict(
        lambda: defaultdict(lambda: [0.0, 0]))
    per_shape: Dict[str, Dict[str, List[float]]] = defaultdict(
        lambda: defaultdict(lambda: [0.0, 0]))
    for e in events:
        if e.name.startswith(PREFIX):
            continue
        self_s = e.self_cpu_time_total / 1e6
        if self_s <= 0:
            continue
        ph = _phase_of(e)
        rec = per_op[ph][e.name]
        rec[0] += self_s
        rec[1] += 1
        shapes = [list(s) for s in (e.input_shapes or []) if s]
        key = f'{e.name} {shapes}'
        rs = per_shape[ph][key]
        rs[0] += self_s
        rs[1] += 1
    out: Dict[str, Any] = {}
    for ph in per_op:
        ops = sorted(per_op[ph].items(), key=lambda kv: -kv[1][0])
        shp = sorted(per_shape[ph].items(), key=lambda kv: -kv[1][0])
        out[ph] = {
            'self_seconds': sum(v[0] for v in per_op[ph].values()),
            'ops': [{'op': k, 'seconds': v[0], 'calls': v[1]}
                    for k, v in ops[:top]],
            'shapes': [{'op_shapes': k, 'seconds': v[0], 'calls': v[1]}
                       for k, v in shp[:top]],
        }
    return out


GROUPS = {
    'matrix products': ('aten::mm', 'aten::addmm', 'aten::addmm_',
                        'aten::bmm', 'aten::matmul', 'aten::_mm'),
    'sparse products': ('aten::_sparse_csr_mm', 'aten::_sparse_mm',
                        'aten::_sparse_addmm', 'aten::addmm_out_sparse_csr',
                        'aten::sparse_sampled_addmm', 'aten::_spmm',
                        'torch_sparse::spmm_sum', 'aten::_sparse_sum',
                        'aten::sspaddmm', 'aten::_sparse_csr_sum'),
    'random numbers': ('aten::normal_', 'aten::uniform_', 'aten::bernoulli_',
                       'aten::randint', 'aten::random_', 'aten::randperm',
                       'aten::multinomial', 'aten::randn', 'aten::rand'),
    'optimizer': ('Optimizer.step', 'aten::_foreach_', 'aten::_fused_adam'),
}


def group_of(op: str) -> str:
    for g, names in GROUPS.items():
        if any(op == n or (n.endswith('_') and op.startswith(n))
               for n in names):
            return g
    if 'sparse' in op:
        return 'sparse products'
    return 'element-wise, copies and other'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', default='diffmm')
    ap.add_argument('--dataset', default='tiktok')
    ap.add_argument('--root', default=None)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                    help='preset overrides, e.g. precision=bf16')
    ap.add_argument('--top', type=int, default=30)
    ap.add_argument('--tag', default='diffmm_profile')
    ap.add_argument('--out', default=str(RESULTS))
    ap.add_argument('--system-allocator', action='store_true',
                    help="keep the C allocator's defaults instead of the "
                         "setting of `mmdiff train`")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    malloc = use_allocator(not args.system_allocator)
    from mmdiff.train.config import parse_overrides
    from mmdiff.nn.models import get_model_class
    from mmdiff.train import Trainer
    from mmdiff.train.config import preset, split_config
    from mmdiff.train.run import dataset_key, load_data
    from mmdiff.train.seed import seed_everything

    data = load_data(args.dataset, args.root)
    cls = get_model_class(args.model)
    cfg = preset(cls.name, dataset_key(args.dataset))
    cfg.update(parse_overrides(args.set))
    tkw, hp = split_config(cfg, cls)
    seed_everything(0)
    model = cls.from_data(data, **hp)

    from torch.profiler import ProfilerActivity, profile, schedule
    epochs: List[Dict[str, float]] = []
    # epoch 0: warm-up, not recorded; epoch 1: profiled; epoch 2: plain
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                   schedule=schedule(wait=1, warmup=0, active=1, repeat=1))

    def on_epoch(line: str) -> None:
        prof.step()
        print(line, flush=True)

    tkw.update(epochs=3, patience=0, track_test=False, eval_every=1)
    trainer = Trainer(model, data, device='cpu', seed=0, log=on_epoch,
                      **tkw)
    with prof:
        res = trainer.fit()
    for row in res.history:
        epochs.append({k[5:]: v for k, v in row.items()
                       if k.startswith('time/')})
    events = prof.events()
    phases = attribute(events, args.top)
    groups: Dict[str, Dict[str, float]] = {}
    for e in events:
        if e.name.startswith(PREFIX) or e.self_cpu_time_total <= 0:
            continue
        ph = _phase_of(e)
        g = groups.setdefault(ph, {})
        k = group_of(e.name)
        g[k] = g.get(k, 0.0) + e.self_cpu_time_total / 1e6

    when = dt.datetime.now().isoformat(timespec='seconds')
    record = {
        'command': 'python ' + ' '.join(sys.argv),
        'date': when,
        'machine': f'{platform.machine()}, {os.cpu_count()} cores, torch '
                   f'{torch.__version__}, {args.threads} threads',
        'model': args.model, 'dataset': args.dataset,
        'overrides': args.set,
        'malloc': malloc,
        'epoch_seconds': epochs,
        'profiled_epoch': 1,
        'phases': phases,
        'groups': groups,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f'{args.tag}.json').write_text(json.dumps(record, indent=1))
    (out / f'{args.tag}.md').write_text(render(record))
    print(render(record))
    return 0


_MALLOC = {
    'retained': 'the setting of `mmdiff train` (freed memory kept for '
                'reuse, `mmdiff.train.allocator`)',
    'system': "the C library's defaults",
}


def render(r: Dict[str, Any]) -> str:
    lines = [f"# Profile of one {r['model']} epoch on {r['dataset']}"
             + (f" ({' '.join(r['overrides'])})" if r['overrides'] else ''),
             '',
             f"- Date: {r['date']}. Machine: {r['machine']}.",
             f"- Command: `{r['command']}`",
             f"- C allocator: {_MALLOC.get(r.get('malloc'), 'not recorded')}"
             '.  The trainer runs in the main thread.',
             '- Epoch 0 warms up, epoch 1 runs under torch.profiler (self '
             'CPU time per operator, attributed to the trainer phase it '
             'ran in), epoch 2 runs plain.  The profiler inflates small '
             'operators; the wall times below are the un-profiled epochs.',
             '']
    names = sorted({k for e in r['epoch_seconds'] for k in e})
    lines.append('| wall time (s) | ' + ' | '.join(names) + ' |')
    lines.append('|---|' + '---|' * len(names))
    for i, e in enumerate(r['epoch_seconds']):
        tag = 'profiled' if i == r['profiled_epoch'] else 'plain'
        lines.append(f'| epoch {i} ({tag}) | ' + ' | '.join(
            f"{e.get(k, float('nan')):.2f}" for k in names) + ' |')
    lines.append('')
    lines.append('Self CPU time of the profiled epoch by kind of work (s):')
    lines.append('')
    kinds = sorted({k for g in r['groups'].values() for k in g})
    lines.append('| phase | ' + ' | '.join(kinds) + ' | total |')
    lines.append('|---|' + '---|' * (len(kinds) + 1))
    for ph, g in sorted(r['groups'].items()):
        lines.append(f'| {ph} | ' + ' | '.join(
            f'{g.get(k, 0.0):.2f}' for k in kinds)
            + f' | {sum(g.values()):.2f} |')
    for ph, d in sorted(r['phases'].items(),
                        key=lambda kv: -kv[1]['self_seconds']):
        lines += ['', f"## {ph}: {d['self_seconds']:.2f} s self CPU", '',
                  '| operator | s | calls |', '|---|---|---|']
        lines += [f"| {o['op']} | {o['seconds']:.3f} | {o['calls']} |"
                  for o in d['ops']]
        lines += ['', '| operator and input shapes | s | calls |',
                  '|---|---|---|']
        lines += [f"| `{o['op_shapes']}` | {o['seconds']:.3f} | "
                  f"{o['calls']} |" for o in d['shapes']]
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    sys.exit(main())
