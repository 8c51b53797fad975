r"""Epoch times of two versions of mmdiff, side by side in one run.

Extracts an earlier git revision of this repository (``--before REV``,
``git archive``) into a temporary folder and times training epochs of each
model there and in the current working tree, alternating: every round runs
one fresh process per version (the order rotates between rounds), each
training ``--epochs`` epochs of the model's dataset preset, of which the
first is a warm-up and not counted.  Reports, per model, the median
per-phase epoch times of each version over all counted epochs, their range,
and the ratio before/after per round.

Example (writes ``benchmarks/results/<tag>.md`` and ``.json``)::

    python benchmarks/revisions.py --before 5ef6b00 --models diffrec ld4mrec \
        diffmm --root ../shared/data --rounds 2 --epochs 3 --threads 2 \
        --tag revisions_issue18
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / 'results'

# Runs in a fresh interpreter whose import path starts with one version's
# tree; uses only API that both versions have (presets, Trainer.fit's
# history with its 'time/<phase>' entries).  A version that has
# mmdiff.train.allocator runs with its setting, as its `mmdiff train` does.
JOB = r'''
import json, resource, sys, warnings
warnings.filterwarnings('ignore')
import torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec['threads'])
import mmdiff
try:
    from mmdiff.train.allocator import retain_freed_memory
except ImportError:
    retain_freed_memory = None
if retain_freed_memory is not None and spec.get('allocator', True):
    retain_freed_memory()
from mmdiff.nn.models import get_model_class
from mmdiff.train import Trainer
from mmdiff.train.config import parse_overrides, preset, split_config
from mmdiff.train.run import dataset_key, load_data
from mmdiff.train.seed import seed_everything
data = load_data(spec['dataset'], spec['root'])
cls = get_model_class(spec['model'])
cfg = preset(cls.name, dataset_key(spec['dataset']))
cfg.update(parse_overrides(spec['set']))
tkw, hp = split_config(cfg, cls)
tkw.update(epochs=spec['epochs'], patience=0, track_test=False, eval_every=1)
seed_everything(0)
model = cls.from_data(data, **hp)
res = Trainer(model, data, device='cpu', seed=0, **tkw).fit()
rows = [{k[5:]: v for k, v in r.items() if k.startswith('time/')}
        for r in res.history]
# VmHWM: this process's own peak (ru_maxrss would keep the launcher's
# peak at the fork)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            peak = int(line.split()[1]) / 1024
except OSError:
    pass
print('RESULT ' + json.dumps({
    'module': mmdiff.__file__, 'epochs': rows, 'rss_mb': peak}))
'''


def extract(rev: str, dest: Path) -> str:
    r"""Writes the tree of ``rev`` into ``dest``; returns its full hash."""
    full = subprocess.run(['git', 'rev-parse', rev], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(['git', 'archive', full], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', str(dest)], input=archive, check=True)
    return full


def run_job(tree: Path, spec: Dict[str, Any]) -> Dict[str, Any]:
    # one processed-data cache per version (formats may differ)
    cache = Path(os.environ['MMDIFF_CACHE_DIR']) / tree.name
    env = dict(os.environ, PYTHONPATH=str(tree), MMDIFF_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, '-c', JOB, json.dumps(spec)],
                         env=env, cwd=str(tree), capture_output=True,
                         text=True)
    for line in out.stdout.splitlines():
        if line.startswith('RESULT '):
            res = json.loads(line[7:])
            if not Path(res['module']).resolve().is_relative_to(
                    tree.resolve()):
                raise RuntimeError(f"imported mmdiff from {res['module']}, "
                                   f"not from {tree}")
            return res
    raise RuntimeError(f"job failed in {tree}:\n{out.stderr[-3000:]}")


def summarise(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    r"""Per version: median [min, max] of each phase over the counted
    epochs (the first epoch of every process is a warm-up); per round: the
    ratio before/after of the median epoch time."""
    out: Dict[str, Any] = {}
    for ver, procs in runs.items():
        rows = [r for p in procs for r in p['epochs'][1:]]
        phases = sorted({k for r in rows for k in r})
        out[ver] = {k: {'median': statistics.median(r[k] for r in rows),
                        'min': min(r[k] for r in rows),
                        'max': max(r[k] for r in rows)}
                    for k in phases}
        out[ver]['rss_mb'] = max(p['rss_mb'] for p in procs)
    if 'before' in runs and 'after' in runs:
        ratios = []
        for b, a in zip(runs['before'], runs['after']):
            mb = statistics.median(r['epoch'] for r in b['epochs'][1:])
            ma = statistics.median(r['epoch'] for r in a['epochs'][1:])
            ratios.append(mb / ma)
        out['ratio'] = {'median': statistics.median(ratios),
                        'min': min(ratios), 'max': max(ratios),
                        'per_round': ratios}
    return out


def render(rec: Dict[str, Any]) -> str:
    lines = [f"# Epoch times before and after: {rec['before']} vs "
             f"{rec['after']}", '',
             f"- Date: {rec['date']}. Machine: {rec['machine']}.",
             f"- Command: `{rec['command']}`",
             f"- before = `{rec['before_hash']}`, after = the working tree "
             f"at `{rec['after_hash']}`{' (with uncommitted changes)' if rec['dirty'] else ''}.",
             f"- Each round runs one fresh process per version (order "
             f"rotating), {rec['epochs']} epochs each; the first epoch of "
             f"every process is a warm-up. {rec['rounds']} rounds. Times: "
             'median over the counted epochs [min–max], seconds.',
             '- A version that has `mmdiff.train.allocator` runs with its '
             'setting (glibc malloc keeps freed memory for reuse), as its '
             '`mmdiff train` does.', '']
    for key, s in rec['summary'].items():
        model, dataset, sets = key.split('|')
        phases = [k for k in s['after'] if k != 'rss_mb']
        order = [p for p in phases if p not in ('train', 'epoch')] + \
            [p for p in ('train', 'epoch') if p in phases]
        lines += [f"## {model} on {dataset}" + (f" ({sets})" if sets else ''),
                  '', '| phase | before | after |', '|---|---|---|']
        for p in order:
            cells = []
            for ver in ('before', 'after'):
                v = s[ver].get(p)
                cells.append('–' if v is None else
                             f"{v['median']:.2f} [{v['min']:.2f}–"
                             f"{v['max']:.2f}]")
            lines.append(f"| {p} | {cells[0]} | {cells[1]} |")
        lines.append(f"| peak RSS (MB) | {s['before']['rss_mb']:.0f} | "
                     f"{s['after']['rss_mb']:.0f} |")
        r = s['ratio']
        lines += ['', f"Speed-up (before/after, epoch): **{r['median']:.2f}×**"
                  f" [{r['min']:.2f}–{r['max']:.2f} over rounds].", '']
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--before', required=True, help='git revision')
    ap.add_argument('--models', nargs='+', required=True)
    ap.add_argument('--dataset', default='tiktok')
    ap.add_argument('--root', required=True)
    ap.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE')
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--tag', default='revisions')
    ap.add_argument('--out', default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error('--epochs must be at least 2 (the first is a warm-up)')
    os.environ.setdefault('MMDIFF_CACHE_DIR',
                          str(Path(tempfile.gettempdir()) / 'mmdiff-bench'))
    import torch
    root = str(Path(args.root).resolve())
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO,
                          check=True, capture_output=True,
                          text=True).stdout.strip()
    dirty = bool(subprocess.run(['git', 'status', '--porcelain', '--',
                                 'mmdiff'], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout)
    summary: Dict[str, Any] = {}
    raw: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix='mmdiff-before-') as tmp:
        before_hash = extract(args.before, Path(tmp))
        trees = {'before': Path(tmp), 'after': REPO}
        for model in args.models:
            key = f"{model}|{args.dataset}|{' '.join(args.set)}"
            runs: Dict[str, List[Dict[str, Any]]] = {'before': [],
                                                     'after': []}
            for rnd in range(args.rounds):
                order = ['before', 'after'] if rnd % 2 == 0 else \
                    ['after', 'before']
                for ver in order:
                    spec = {'model': model, 'dataset': args.dataset,
                            'root': root, 'set': args.set,
                            'epochs': args.epochs, 'threads': args.threads}
                    res = run_job(trees[ver], spec)
                    runs[ver].append(res)
                    ep = [round(r['epoch'], 2) for r in res['epochs']]
                    print(f"{model} round {rnd} {ver}: epochs {ep}",
                          flush=True)
            summary[key] = summarise(runs)
            raw[key] = runs
    rec = {
        'command': 'python ' + ' '.join(
            [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        'date': dt.datetime.now().isoformat(timespec='seconds'),
        'machine': f'{platform.machine()}, {os.cpu_count()} cores, '
                   f'torch {torch.__version__}, {args.threads} threads',
        'before': args.before, 'before_hash': before_hash,
        'after': 'working tree', 'after_hash': head, 'dirty': dirty,
        'rounds': args.rounds, 'epochs': args.epochs,
        'summary': summary, 'runs': raw,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f'{args.tag}.json').write_text(json.dumps(rec, indent=1))
    (out / f'{args.tag}.md').write_text(render(rec))
    print(render(rec))
    return 0


if __name__ == '__main__':
    sys.exit(main())
