r"""Speed benchmark: per-phase epoch times, full evaluation time and peak
memory per model and dataset, plus the scaling of evaluation memory with the
number of users.  Writes ``benchmarks/results/speed.md`` (and a JSON per
section under ``benchmarks/results/speed_runs/``).

Every measurement runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) is its own.  The machine's float32 and bfloat16 matrix-product
rates are measured in the same run, so timings taken on different machines
can be compared as ratios.

Example::

    python benchmarks/speed.py --models lightgcn diffmm --datasets tiktok \
        --root ../shared/data --epochs 2
    python benchmarks/speed.py --eval-scaling
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List

import torch

# torch's one-time notices about its beta sparse-CSR support are noise here
warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')

HERE = Path(__file__).resolve().parent
RESULTS = HERE / 'results'
RUNS = RESULTS / 'speed_runs'


def peak_rss_mb() -> float:
    r"""Peak resident memory of this process in MB: ``VmHWM`` (Linux),
    which a spawned (fork + exec) measurement process does not inherit;
    ``ru_maxrss`` does (it keeps the parent's peak at the fork), so it is
    only the fallback."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def use_allocator(retained: bool = True) -> str:
    r"""Applies the C allocator setting of ``mmdiff train``
    (:func:`mmdiff.train.allocator.retain_freed_memory`) when ``retained``;
    returns the setting in force: ``'retained'`` or ``'system'`` (the C
    library's defaults, also where the setting is not available)."""
    if not retained:
        return 'system'
    from mmdiff.train.allocator import retain_freed_memory
    return 'retained' if retain_freed_memory() else 'system'


def matmul_rate(dtype=torch.float32, n: int = 2048, reps: int = 5) -> float:
    r"""GFLOP/s of an ``n x n`` matrix product in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def matmul_ms(dtype_name: str = 'float32', n: int = 2048,
              reps: int = 5) -> float:
    r"""Median milliseconds of one ``n x n`` matrix product in ``dtype_name``
    (``'float32'``, ``'bfloat16'``)."""
    import statistics
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def attach_features(data, features: Dict[str, int], seed: int = 0):
    r"""Give every item seeded Gaussian features ``name -> dim`` (for
    scale tests on interaction-only datasets such as Sports)."""
    if not features:
        return data
    n = data['item'].num_nodes
    g = torch.Generator().manual_seed(seed)
    for name, dim in features.items():
        data['item'][name] = torch.randn(n, dim, generator=g)
    return data


def _epoch_job(q, model, dataset, root, epochs, threads, overrides,
               features=None):
    torch.set_num_threads(threads)
    from mmdiff.train.run import dataset_key, load_data
    from mmdiff.nn.models import get_model_class
    from mmdiff.train import Trainer
    from mmdiff.train.config import preset, split_config
    from mmdiff.train.seed import seed_everything
    data = attach_features(load_data(dataset, root), features or {})
    cls = get_model_class(model)
    cfg = preset(cls.name, dataset_key(dataset))
    cfg.update(overrides)
    tkw, hp = split_config(cfg, cls)
    tkw.update(epochs=epochs, patience=0, track_test=False)
    seed_everything(0)
    t_build = time.perf_counter()
    base = peak_rss_mb()
    m = cls.from_data(data, **hp)
    tr = Trainer(m, data, device='cpu', **tkw)
    build_s = time.perf_counter() - t_build
    res = tr.fit()
    train_peak = peak_rss_mb()
    t = time.perf_counter()
    tr.evaluate('test')
    eval_s = time.perf_counter() - t
    q.put({'model': model, 'dataset': dataset, 'epochs': epochs,
           'threads': threads, 'overrides': overrides,
           'phases': {k: v for k, v in res.phase_seconds.items()},
           'seconds_per_epoch': res.seconds_per_epoch,
           'eval_test_seconds': eval_s, 'build_seconds': build_s,
           'features': features or {},
           'num_users': int(data['user'].num_nodes),
           'num_items': int(data['item'].num_nodes),
           'peak_rss_mb': peak_rss_mb(), 'data_rss_mb': base,
           'train_peak_rss_mb': train_peak})


def _inference_job(q, model, dataset, root, threads, k):
    torch.set_num_threads(threads)
    from mmdiff.train.run import dataset_key, load_data
    from mmdiff.data.hetero import edge_index_of, num_items, num_users
    from mmdiff.metrics import recommend_topk
    from mmdiff.nn.models import get_model_class
    from mmdiff.train import Trainer
    from mmdiff.train.config import preset, split_config
    data = load_data(dataset, root)
    cls = get_model_class(model)
    tkw, hp = split_config(preset(cls.name, dataset_key(dataset)), cls)
    tkw.update(epochs=1, patience=0, track_test=False)
    m = cls.from_data(data, **hp)
    Trainer(m, data, device='cpu', **tkw).fit()  # one epoch: graphs exist
    m.eval()
    U = num_users(data)
    users = torch.arange(U)
    best = float('inf')
    for _ in range(3):
        t = time.perf_counter()
        with torch.no_grad():
            m.prepare_scoring()
            recommend_topk(m.score, users, k, num_items(data),
                           train=edge_index_of(data), num_users=U)
        best = min(best, time.perf_counter() - t)
    q.put({'model': model, 'dataset': dataset, 'users': U, 'k': k,
           'seconds': best, 'users_per_second': U / best,
           'threads': threads})


def _eval_scaling_job(q, num_users, num_items, dim, chunk, threads):
    torch.set_num_threads(threads)
    from mmdiff.metrics import full_ranking_metrics
    g = torch.Generator().manual_seed(0)
    user_emb = torch.randn(num_users, dim, generator=g)
    item_emb = torch.randn(num_items, dim, generator=g)
    per = 7
    users = torch.arange(num_users).repeat_interleave(per)
    train = torch.stack([users, torch.randint(num_items, users.shape,
                                              generator=g)])
    key = torch.unique(train[0] * num_items + train[1])
    train = torch.stack([key // num_items, key % num_items])
    test = torch.stack([torch.arange(num_users),
                        torch.randint(num_items, (num_users,), generator=g)])
    key_t = test[0] * num_items + test[1]
    test = test[:, ~torch.isin(key_t, key)]
    base = peak_rss_mb()
    t = time.perf_counter()
    full_ranking_metrics(lambda u: user_emb[u] @ item_emb.t(), test,
                         num_users, num_items, train=train, ks=(10, 20),
                         chunk_size=chunk)
    q.put({'num_users': num_users, 'num_items': num_items, 'chunk': chunk,
           'seconds': time.perf_counter() - t,
           'peak_rss_mb': peak_rss_mb(), 'before_eval_rss_mb': base,
           'inputs_mb': (user_emb.numel() + item_emb.numel()) * 4 / 2 ** 20 +
           (train.numel() + test.numel()) * 8 / 2 ** 20})


def in_subprocess(fn, *args) -> Dict:
    ctx = mp.get_context('spawn')
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(q, *args))
    p.start()
    out = q.get()
    p.join()
    return out


def header() -> List[str]:
    import os
    return [
        f'Machine: {platform.machine()}, {os.cpu_count()} cores, torch '
        f'{torch.__version__}, Python {platform.python_version()}; '
        f'measured {dt.datetime.now().isoformat(timespec="seconds")}.',
        f'Matrix product rate measured in this run (2048², 1 thread): '
        f'float32 {matmul_rate(torch.float32):.0f} GFLOP/s, bfloat16 '
        f'{matmul_rate(torch.bfloat16):.0f} GFLOP/s.',
        f'Command: `python {" ".join(sys.argv)}`',
    ]


def write_report() -> None:
    parts = ['# Speed benchmark', '']
    for p in sorted(RUNS.glob('*.md')):
        parts.append(p.read_text())
    (RESULTS / 'speed.md').write_text('\n'.join(parts) + '\n')
    print((RESULTS / 'speed.md').read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--models', nargs='+', default=[])
    ap.add_argument('--datasets', nargs='+', default=['tiktok'])
    ap.add_argument('--root', default=None)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--threads', type=int, default=torch.get_num_threads())
    ap.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE')
    ap.add_argument('--features', nargs='+', default=[], metavar='NAME=DIM',
                    help='attach seeded random item features (e.g. '
                         'image=4096 text=384) to each dataset')
    ap.add_argument('--tag', default=None, help='name of this section')
    ap.add_argument('--eval-scaling', action='store_true')
    ap.add_argument('--inference', nargs='+', default=[], metavar='MODEL',
                    help='time top-20 recommendation for all users of the '
                         'first --datasets entry with these models')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    RUNS.mkdir(parents=True, exist_ok=True)
    lines = header()
    if args.models:
        from mmdiff.train.config import parse_overrides
        ov = parse_overrides(args.set)
        feats = {k: int(v) for k, v in (f.split('=', 1)
                                        for f in args.features)}
        fnote = (', synthetic features ' + ', '.join(
            f'{k} {v}' for k, v in feats.items())) if feats else ''
        lines += ['', f'## Epoch phases ({args.epochs} epochs, '
                      f'{args.threads} threads{", " + str(ov) if ov else ""}'
                      f'{fnote})',
                  '',
                  '| model | dataset | users x items | model build s | '
                  'phase seconds per epoch | train s/epoch'
                  ' | full test evaluation s | peak RSS MB |',
                  '|---|---|---|---|---|---|---|---|']
        recs = []
        for d in args.datasets:
            for m in args.models:
                r = in_subprocess(_epoch_job, m, d, args.root, args.epochs,
                                  args.threads, ov, feats)
                recs.append(r)
                ph = ', '.join(f'{k} {v:.2f}' for k, v in r['phases'].items()
                               if k not in ('train', 'epoch'))
                lines.append(f"| {m} | {d} | {r['num_users']:,} x "
                             f"{r['num_items']:,} | {r['build_seconds']:.1f} "
                             f"| {ph} | "
                             f"{r['seconds_per_epoch']:.2f} | "
                             f"{r['eval_test_seconds']:.2f} | "
                             f"{r['peak_rss_mb']:.0f} |")
                print(lines[-1], flush=True)
        tag = args.tag or ('epochs-' + '-'.join(args.models) + '-' +
                           '-'.join(args.datasets))
        (RUNS / f'{tag}.json').write_text(json.dumps(recs, indent=1))
        (RUNS / f'{tag}.md').write_text('\n'.join(lines) + '\n')
    if args.inference:
        d = args.datasets[0]
        lines = header() + [
            '', f'## Inference: top-20 recommendation for all users of {d}',
            '', 'Best of 3: one `prepare_scoring()` (shared propagation) then '
            'scores for every user in chunks of 1,024, training items masked, '
            f'top-20. Model state after one training epoch; {args.threads} '
            'threads.', '',
            '| model | users | seconds | users/s |', '|---|---|---|---|']
        recs = []
        for m in args.inference:
            r = in_subprocess(_inference_job, m, d, args.root, args.threads,
                              20)
            recs.append(r)
            lines.append(f"| {m} | {r['users']:,} | {r['seconds']:.2f} | "
                         f"{r['users_per_second']:,.0f} |")
            print(lines[-1], flush=True)
        (RUNS / f'inference-{d}.json').write_text(json.dumps(recs, indent=1))
        (RUNS / f'inference-{d}.md').write_text('\n'.join(lines) + '\n')
    if args.eval_scaling:
        lines = header() + [
            '', '## Full-ranking evaluation: time and peak memory vs users',
            '',
            'Random 64-d embeddings, 6,710 items (TikTok), 7 training items '
            'per user masked, one test item per user, K = 10, 20, chunk of '
            '1,024 users. Peak RSS minus the RSS before evaluation stays '
            'flat as users grow (memory is O(chunk x items)).', '',
            '| users | items | seconds | users/s | inputs MB | RSS before '
            'eval MB | peak RSS MB | eval overhead MB |',
            '|---|---|---|---|---|---|---|---|']
        for U in (9_308, 40_000, 160_000):
            r = in_subprocess(_eval_scaling_job, U, 6710, 64, 1024,
                              args.threads)
            lines.append(
                f"| {U:,} | 6,710 | {r['seconds']:.2f} | "
                f"{U / r['seconds']:,.0f} | {r['inputs_mb']:.0f} | "
                f"{r['before_eval_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{r['peak_rss_mb'] - r['before_eval_rss_mb']:.0f} |")
            print(lines[-1], flush=True)
        (RUNS / 'eval-scaling.md').write_text('\n'.join(lines) + '\n')
    write_report()
    return 0


if __name__ == '__main__':
    sys.exit(main())
