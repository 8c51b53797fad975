r"""How cost grows: training-epoch time and peak memory of every model against
the number of users, of items and of training interactions (synthetic data
from :func:`mmdiff.data.make_synthetic`, one axis varied at a time over a
factor of 16 while the other two are held fixed), with fitted log-log
exponents, and full-ranking evaluation throughput against the number of
items.  Writes ``benchmarks/results/scaling.md`` and ``scaling.json``.

The one command (under 20 minutes on an idle 2-core machine, one thread;
``--quick`` takes well under a minute, tiny sizes, written to a temporary
folder)::

    python benchmarks/scaling.py
    python benchmarks/scaling.py --quick
    python benchmarks/scaling.py --models diffmm --axes items   # re-run a part

What is measured.  Each point (model, axis, size) runs in a fresh process
(forked from a server that has only imported torch, PyG and mmdiff): the
data set (generated once per size in another process and cached in a
temporary folder) is loaded, the model is built from its
``[synthetic]`` preset plus the reduced settings of :data:`MODELS`, and
:meth:`mmdiff.train.Trainer.fit` trains one warm-up epoch and then at least
two timed epochs; the epoch time is the median of the timed epochs' training
time (all phases and their after-phase hooks, e.g. DiffMM's graph
regeneration; validation is not part of it and is skipped during these
fits).  Memory is the process's peak resident set (``VmHWM``) minus its
resident set after the imports, i.e. data + model + optimiser + training
working set.  ``ru_maxrss`` is recorded as well; it is not used for the
fits because on Linux a process started by fork+exec (as
``multiprocessing``'s spawn does) reports its launcher's peak at that time
if that is larger (a child of an 800 MB launcher reads 790 MB).
Threads are set explicitly (``--threads``, default 1) and a 2048³ float32
matrix product is timed at the start and the end of the run.

Exponents are least-squares slopes of ``log(cost)`` on ``log(size)`` with
their standard errors, and the slope between the two largest sizes (fixed
per-batch overheads flatten the small sizes, so the tail slope is closer to
the asymptotic one).  Each model has an expected exponent per axis, written
down from its arithmetic in :data:`EXPECTED`; a slope above it by more than
``max(0.15, 2 SE)``, or a tail slope above it by more than 0.3, is
flagged (for evaluation users/s: below).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from speed import matmul_rate  # noqa: E402

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')

RESULTS = HERE / 'results'
ALL_MODELS = ('mf', 'lightgcn', 'diffrec', 'ld4mrec', 'diffmm')
AXES = ('users', 'items', 'interactions')

#: Per model: overrides of its ``[synthetic]`` preset (smaller networks for
#: the slow diffusion models, no modality screening, whose permutation tests
#: belong to the model build, not to an epoch), timed epochs after the
#: warm-up, and a factor applied to the base sizes of :data:`BASE`.
MODELS: Dict[str, Dict[str, Any]] = {
    'mf': {'overrides': {}, 'timed': 3, 'size': 1.0},
    'lightgcn': {'overrides': {}, 'timed': 3, 'size': 1.0},
    'diffrec': {'overrides': {}, 'timed': 3, 'size': 1.0},
    'ld4mrec': {'overrides': {'hidden_dim': 64, 'svd_dim': 16,
                              'modality_screening': False},
                'timed': 2, 'size': 1.0},
    'diffmm': {'overrides': {'embedding_dim': 32, 'hidden_dims': [64],
                             'modality_screening': False},
               'timed': 2, 'size': 1.0},
}

#: Base sizes: the users axis holds the training interactions fixed at
#: ``users * train_per_user_users_axis`` of its first point (so the last
#: point has 16x fewer interactions per user), the items axis holds users
#: and interactions per user, the interactions axis holds users and items.
BASE = {'users': 1000, 'items': 2000, 'train_per_user': 16,
        'train_per_user_users_axis': 64, 'items_for_interactions': 4000,
        'modalities': {'image': 64, 'text': 32}}
QUICK_BASE = {'users': 60, 'items': 80, 'train_per_user': 4,
              'train_per_user_users_axis': 16, 'items_for_interactions': 160,
              'modalities': {'image': 16, 'text': 8}}

#: Expected exponent of the epoch time and of the memory per axis, from the
#: operations of each model (``d`` embedding size, ``h`` hidden size,
#: ``B`` batch, ``L`` layers, ``f`` feature size, ``M`` modalities), with
#: the reason.  It is the exponent of the dominant term; terms with a much
#: smaller constant are named in the reason.
EXPECTED: Dict[str, Dict[str, Dict[str, Tuple[float, str]]]] = {
    'mf': {
        'time': {
            'users': (1, 'E/B batches, each a dense Adam step over the '
                         '(U+I) x d tables: E (U+I) d'),
            'items': (1, 'same: E (U+I) d'),
            'interactions': (1, 'E/B batches of B triples (+ negative '
                                'sampling, E log E)')},
        'memory': {
            'users': (1, '(U+I) d parameters, gradients, 2 Adam moments'),
            'items': (1, 'same'),
            'interactions': (1, 'edge lists and sorted keys, O(E)')}},
    'lightgcn': {
        'time': {
            'users': (1, 'E/B batches x [L E d propagation + (U+I) d '
                         'layer sums and Adam]; U enters through (U+I) d'),
            'items': (1, 'same, through (U+I) d'),
            'interactions': (2, 'E/B batches, each propagating the whole '
                                'graph (L E d): E^2 L d / B')},
        'memory': {
            'users': (1, '(U+I) d per layer kept for backward, Adam state'),
            'items': (1, 'same'),
            'interactions': (1, 'normalised adjacency (CSR + CSC), O(E)')}},
    'diffrec': {
        'time': {
            'users': (1, 'U/B batches of dense [B, I] rows through the '
                         'I-h-I MLP: U I h'),
            'items': (1, 'U I h'),
            'interactions': (0, 'rows are dense, the MLP cost does not see '
                                'E; only row slicing is O(E)')},
        'memory': {
            'users': (0, 'weights 2 I h (x4 with Adam) and [B, I] '
                         'activations do not grow with U; CSR row '
                         'pointers are O(U) but tiny'),
            'items': (1, 'weights and [B, I] activations, O(I h + B I)'),
            'interactions': (1, 'CSR of the training matrix, O(E), small '
                                'next to the weights')}},
    'ld4mrec': {
        'time': {
            'users': (1, 'U/B batches of [B, I] rows through C-Net '
                         '(I-h-I) and the modality preferences '
                         '(rows x features, B I f): U I (h + f)'),
            'items': (1, 'U I (h + f)'),
            'interactions': (0, 'dense rows; the SVD encoder is computed '
                                'once, at build')},
        'memory': {
            'users': (1, 'SVD user factors O(U k), small'),
            'items': (1, 'weights O(I h), features O(I f), [B, I] '
                         'activations'),
            'interactions': (1, 'CSR of the training matrix, O(E), small')}},
    'diffmm': {
        'time': {
            'users': (1, 'diffusion phase and graph regeneration: M U I h; '
                         'BPR phase: E/B batches x [propagation over E + '
                         'M U k edges + InfoNCE of the batch against all '
                         'U users, B U d]'),
            'items': (1, 'M U I h (diffusion, regeneration) + E/B batches x '
                         '[I f d feature transforms + InfoNCE against all '
                         'I items, B I d]'),
            'interactions': (2, 'E/B BPR batches, each propagating the '
                                'whole graph: E^2 L d / B')},
        'memory': {
            'users': (1, '(U+I) d embeddings, regenerated graphs O(U k M)'),
            'items': (1, 'denoisers O(M I h), features O(I f)'),
            'interactions': (1, 'adjacency O(E)')}},
}
#: Per-user evaluation cost is O(I) for every model (scores against all
#: items, mask, top-k), so users/s should fall as I^-1.
EXPECTED_EVAL = (-1, 'scores of one user against all I items: O(I d) or '
                     'O(I h), plus an O(I) top-k')


# --------------------------------------------------------------------------
# measurement

#: Imported once by the fork server, so that a point's process starts in a
#: fraction of a second instead of the ~5 s of importing torch, PyG and
#: mmdiff afresh.
PRELOAD = ['torch', 'torch_geometric', 'mmdiff.data', 'mmdiff.train',
           'mmdiff.nn.models']


def fresh_process(fn, *args, timeout: Optional[float] = None) -> Dict:
    r"""``fn(queue, *args)`` in a new process and what it puts on the queue.

    Like ``speed.in_subprocess`` (a fresh process per measurement, so its
    peak memory is its own), but forked from a fork server that has
    imported :data:`PRELOAD` and never run a computation, and a process
    that dies without answering is reported instead of waited for.  A
    forked child's peak memory starts at the server's (the imports only);
    a spawned one's ``ru_maxrss`` would start at its launcher's peak."""
    import multiprocessing as mp
    import queue as _queue
    ctx = mp.get_context('forkserver')
    ctx.set_forkserver_preload(PRELOAD)
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(q, *args))
    p.start()
    t0 = time.monotonic()
    while True:
        try:
            out = q.get(timeout=1.0)
            break
        except _queue.Empty:
            if not p.is_alive():
                out = {'error': f'process died (exit code {p.exitcode})'}
                break
            if timeout is not None and time.monotonic() - t0 > timeout:
                p.kill()
                out = {'error': f'timed out after {timeout:.0f} s'}
                break
    p.join()
    return out

def proc_status_mb(key: str) -> float:
    r"""``VmRSS`` / ``VmHWM`` of this process in MB (Linux), else
    ``ru_maxrss`` (then both are the peak)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sizes(base: float, factors: Sequence[float]) -> List[int]:
    return [int(round(base * f)) for f in factors]


def axis_points(axis: str, base: Dict[str, Any], factors: Sequence[float],
                scale: float = 1.0) -> List[Dict[str, Any]]:
    r"""The data specs of one axis: ``{'users', 'items', 'train_edges'}``
    (target number of training interactions) per point."""
    U = int(round(base['users'] * scale))
    I = int(round(base['items'] * scale))
    if axis == 'users':
        E = U * base['train_per_user_users_axis']
        return [{'users': u, 'items': I, 'train_edges': E}
                for u in sizes(U, factors)]
    if axis == 'items':
        return [{'users': U, 'items': i, 'train_edges': U *
                 base['train_per_user']} for i in sizes(I, factors)]
    if axis == 'interactions':
        I2 = int(round(base['items_for_interactions'] * scale))
        k0 = base['train_per_user'] / 4
        return [{'users': U, 'items': I2,
                 'train_edges': int(round(U * k0 * f))} for f in factors]
    raise ValueError(f'unknown axis {axis!r}')


def make_data(users: int, items: int, train_edges: int,
              modalities: Dict[str, int], seed: int = 0, tol: float = 0.02,
              rounds: int = 6):
    r"""A :func:`~mmdiff.data.make_synthetic` dataset whose number of
    training interactions is within ``tol`` of ``train_edges`` (the mean
    interactions per user is adjusted a few times: clipping and the
    per-user split make the realised count differ from the requested
    mean).  Returns ``(data, info)``."""
    from mmdiff.data.hetero import edge_index_of
    from mmdiff.data.synthetic import make_synthetic
    per_user = train_edges / users / 0.8 + 1.0
    best = None
    for _ in range(rounds):
        data = make_synthetic(users, items, modalities,
                              interactions_per_user=per_user,
                              min_interactions=3, seed=seed)
        E = edge_index_of(data).size(1)
        err = E / train_edges - 1
        if best is None or abs(err) < abs(best[1]):
            best = (data, err, per_user)
        if abs(err) <= tol:
            break
        per_user *= train_edges / E
    data, err, per_user = best
    return data, {'requested_per_user': per_user,
                  'train_edges': int(edge_index_of(data).size(1)),
                  'target_train_edges': train_edges,
                  'edge_error': err}


def _data_job(q, spec: Dict[str, Any], path: str) -> None:
    torch.set_num_threads(spec.get('threads', 1))
    data, info = make_data(spec['users'], spec['items'],
                           spec['train_edges'], spec['modalities'])
    torch.save(data, path)
    q.put(info)


def dataset_file(spec: Dict[str, Any], cache: Path, threads: int
                 ) -> Tuple[str, Dict[str, Any]]:
    r"""Path of the cached dataset of ``spec`` (generated in a subprocess
    on first use, so that the launcher stays small)."""
    key = json.dumps({k: spec[k] for k in ('users', 'items', 'train_edges',
                                           'modalities')}, sort_keys=True)
    name = hashlib.sha1(key.encode()).hexdigest()[:16]
    path, meta = cache / f'{name}.pt', cache / f'{name}.json'
    if not (path.exists() and meta.exists()):
        info = fresh_process(_data_job, dict(spec, threads=threads),
                             str(path))
        if 'error' in info:
            raise RuntimeError(f'generating {key}: {info["error"]}')
        meta.write_text(json.dumps(info))
    return str(path), json.loads(meta.read_text())


def measure(model: str, data, overrides: Dict[str, Any], timed: int,
            threads: int, evaluate: bool = False) -> Dict[str, Any]:
    r"""Trains ``model`` on ``data`` for one warm-up and ``timed`` epochs
    through :meth:`mmdiff.train.Trainer.fit` and returns the epoch times,
    the median timed epoch and memory; with ``evaluate``, also the time of
    one full-ranking evaluation of the test split (users/s).  Runs in the
    calling process (the benchmark calls it in a fresh subprocess)."""
    from mmdiff.data.hetero import edge_index_of, num_items, num_users
    from mmdiff.nn.models import get_model_class
    from mmdiff.train import Trainer
    from mmdiff.train.config import preset, split_config
    from mmdiff.train.seed import seed_everything
    torch.set_num_threads(threads)
    cls = get_model_class(model)
    cfg = preset(cls.name, 'synthetic')
    cfg.update(overrides)
    tkw, hp = split_config(cfg, cls)
    epochs = 1 + timed
    tkw.update(epochs=epochs, patience=0, track_test=False,
               eval_every=epochs)
    seed_everything(0)
    rss_data = proc_status_mb('VmRSS')
    t0 = time.perf_counter()
    m = cls.from_data(data, **hp)
    tr = Trainer(m, data, device='cpu', **tkw)
    build_s = time.perf_counter() - t0
    # Validation is not part of an epoch's training time (time/train);
    # skip the evaluations of fit to save wall time and keep their memory
    # out of the training peak.
    real_evaluate = tr.evaluate
    tr.evaluate = lambda split='test', ks=None: {tr.monitor: 0.0}
    res = tr.fit()
    tr.evaluate = real_evaluate
    times = [row['time/train'] for row in res.history]
    phases = {k[5:]: statistics.median(row[k] for row in res.history[1:])
              for k in res.history[0] if k.startswith('time/')
              and k not in ('time/train', 'time/epoch', 'time/eval')}
    out = {'model': model, 'threads': torch.get_num_threads(),
           'num_users': num_users(data), 'num_items': num_items(data),
           'train_edges': int(edge_index_of(data).size(1)),
           'epochs_timed': timed, 'epoch_seconds': times,
           'epoch_s': statistics.median(times[1:]),
           'warmup_s': times[0], 'phase_s': phases, 'build_s': build_s,
           'rss_data_mb': rss_data,
           'train_peak_mb': proc_status_mb('VmHWM'),
           'overrides': overrides,
           'batch_size': tkw.get('batch_size', 2048)}
    if evaluate:
        n_eval = int(torch.unique(edge_index_of(data, 'test')[0]).numel())
        best = float('inf')
        for _ in range(2):
            t = time.perf_counter()
            tr.evaluate('test')
            best = min(best, time.perf_counter() - t)
        out.update(eval_s=best, eval_users=n_eval,
                   eval_users_per_s=n_eval / best,
                   eval_peak_mb=proc_status_mb('VmHWM'))
    return out


def _point_job(q, model: str, path: str, overrides, timed: int,
               threads: int, evaluate: bool) -> None:
    torch.set_num_threads(threads)
    # LD4MRec's SVD notes the many components of sparse synthetic data
    warnings.filterwarnings('ignore', message='.*connected components.*')
    try:
        from mmdiff.nn.models import get_model_class  # noqa: F401
        from mmdiff.train import Trainer  # noqa: F401
        gc.collect()
        rss0 = proc_status_mb('VmRSS')
        data = torch.load(path, weights_only=False)
        out = measure(model, data, overrides, timed, threads, evaluate)
        out['rss_imports_mb'] = rss0
        out['memory_mb'] = out['train_peak_mb'] - rss0
        out['ru_maxrss_mb'] = (resource.getrusage(resource.RUSAGE_SELF)
                               .ru_maxrss / 1024.0)
    except Exception as e:  # report, do not hang the launcher
        out = {'model': model, 'error': f'{type(e).__name__}: {e}'}
    q.put(out)


# --------------------------------------------------------------------------
# analysis

def fit_exponent(x: Sequence[float], y: Sequence[float]) -> Dict[str, float]:
    r"""Least-squares slope of ``log y`` on ``log x``, its standard error
    (:obj:`nan` with two points), the intercept and the slope between the
    last two points (``x`` increasing)."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(x, y)
           if a > 0 and b > 0]
    n = len(pts)
    if n < 2:
        return {'slope': float('nan'), 'se': float('nan'), 'n': n,
                'intercept': float('nan'), 'tail': float('nan')}
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    slope = sxy / sxx if sxx > 0 else float('nan')
    icpt = my - slope * mx
    if n > 2 and sxx > 0:
        ssr = sum((p[1] - icpt - slope * p[0]) ** 2 for p in pts)
        se = math.sqrt(ssr / (n - 2) / sxx)
    else:
        se = float('nan')
    (x1, y1), (x2, y2) = pts[-2], pts[-1]
    tail = (y2 - y1) / (x2 - x1) if x2 != x1 else float('nan')
    return {'slope': slope, 'se': se, 'n': n, 'intercept': icpt,
            'tail': tail}


def tolerance(se: float) -> float:
    return max(0.15, 2 * se) if math.isfinite(se) else 0.15


#: A tail slope (two points, no standard error) above the expected exponent
#: by more than this is flagged too: a faster term that only shows at the
#: largest sizes.
TAIL_MARGIN = 0.3


def check(fit: Dict[str, float], expected: float, lower: bool = False
          ) -> str:
    r"""``''``, or why the fitted series grows faster than ``expected``
    (for a throughput, ``lower``: falls faster): the slope by more than
    ``max(0.15, 2 SE)``, or the tail slope by more than
    :data:`TAIL_MARGIN`."""
    sign = -1.0 if lower else 1.0
    slope, se, tail = fit['slope'], fit['se'], fit['tail']
    if math.isfinite(slope) and sign * (slope - expected) > tolerance(se):
        return 'slope'
    if fit['n'] > 2 and math.isfinite(tail) and \
            sign * (tail - expected) > TAIL_MARGIN:
        return 'tail'
    return ''


AXIS_KEY = {'users': 'num_users', 'items': 'num_items',
            'interactions': 'train_edges'}


def analyse(model: str, axis: str, points: List[Dict[str, Any]]
            ) -> Dict[str, Any]:
    r"""Exponents and flags of one series of measured points."""
    ok = sorted((p for p in points if 'error' not in p),
                key=lambda p: p[AXIS_KEY[axis]])
    x = [p[AXIS_KEY[axis]] for p in ok]
    out: Dict[str, Any] = {'model': model, 'axis': axis, 'flags': []}
    for what, key in (('time', 'epoch_s'), ('memory', 'memory_mb')):
        fit = fit_exponent(x, [p[key] for p in ok])
        exp, why = EXPECTED[model][what][axis]
        fit.update(expected=exp, reason=why, flag=check(fit, exp))
        out[what] = fit
        if fit['flag']:
            out['flags'].append(
                f"{model} {what} vs {axis}: slope {fit['slope']:.2f} ± "
                f"{fit['se']:.2f}, tail {fit['tail']:.2f} > expected {exp} "
                f"({fit['flag']}; {why})")
    if axis == 'items' and all('eval_users_per_s' in p for p in ok) and ok:
        fit = fit_exponent(x, [p['eval_users_per_s'] for p in ok])
        exp, why = EXPECTED_EVAL
        fit.update(expected=exp, reason=why,
                   flag=check(fit, exp, lower=True))
        out['eval'] = fit
        if fit['flag']:
            out['flags'].append(
                f"{model} evaluation users/s vs items: slope "
                f"{fit['slope']:.2f} ± {fit['se']:.2f}, tail "
                f"{fit['tail']:.2f} < expected {exp} ({fit['flag']})")
    return out


# --------------------------------------------------------------------------
# report

def _f(v: float, nd: int = 2) -> str:
    return f'{v:.{nd}f}' if isinstance(v, (int, float)) and \
        math.isfinite(v) else '–'


def _fit_cell(fit: Dict[str, Any]) -> str:
    flag = f" **FLAG ({fit['flag']})**" if fit.get('flag') else ''
    return (f"{_f(fit['slope'])} ± {_f(fit['se'])} (tail "
            f"{_f(fit['tail'])}; expected {fit['expected']}){flag}")


def format_report(result: Dict[str, Any]) -> str:
    r"""Markdown of a result dict (as written to ``scaling.json``)."""
    lines = ['# How cost grows with users, items and interactions', '']
    for run in result['runs']:
        lines += [f"- Run {run['id']}: {run['date']}, {run['machine']}; "
                  f"{run['threads']} thread(s); 2048³ float32 matmul "
                  f"{_f(run['matmul_s'][0], 3)} s at start, "
                  f"{_f(run['matmul_s'][1], 3)} s at end; load average "
                  f"{run['loadavg'][0]} → {run['loadavg'][1]}; wall "
                  f"{_f(run['wall_s'], 0)} s.",
                  f"  Command: `{run['command']}`"]
    lines += ['', 'Epoch time: median of the timed epochs after one warm-up '
              '(training phases and their hooks, no validation). Memory: '
              'peak resident set (VmHWM) minus the resident set after the '
              'imports. Exponent: least-squares log-log slope ± standard '
              'error over all sizes, tail = slope between the two largest '
              'sizes; flagged when the slope exceeds the expected exponent '
              'by more than max(0.15, 2 SE), or the tail slope by more than '
              f'{TAIL_MARGIN} (for users/s: falls below it). Fixed per-batch '
              'and per-process costs flatten the small sizes, so slopes '
              'below the expected exponent are normal.', '']
    series = result['series']
    lines += ['## Exponents', '',
              '| model | axis | epoch time | memory | eval users/s |',
              '|---|---|---|---|---|']
    for key in sorted(series, key=_order):
        s = series[key]
        a = s['analysis']
        ev = _fit_cell(a['eval']) if 'eval' in a else ''
        lines.append(f"| {s['model']} | {s['axis']} | {_fit_cell(a['time'])}"
                     f" | {_fit_cell(a['memory'])} | {ev} |")
    flags = [f for k in sorted(series, key=_order)
             for f in series[k]['analysis']['flags']]
    lines += ['', '## Flags', '']
    lines += [f'- {f}' for f in flags] or ['None: no cost grows faster than '
                                          'its expected exponent.']
    lines += ['', '## Expected exponents (from each model\'s arithmetic)',
              '', '| model | cost | users | items | interactions |',
              '|---|---|---|---|---|']
    for m in ALL_MODELS:
        for what in ('time', 'memory'):
            e = EXPECTED[m][what]
            lines.append(f'| {m} | {what} | ' + ' | '.join(
                f'{e[a][0]}: {e[a][1]}' for a in AXES) + ' |')
    lines.append(f'| all | eval users/s | | {EXPECTED_EVAL[0]}: '
                 f'{EXPECTED_EVAL[1]} | |')
    lines += ['', '## Measurements', '']
    for key in sorted(series, key=_order):
        s = series[key]
        lines += [f"### {s['model']}, {s['axis']} (run {s['run']})", '',
                  '| users | items | train interactions | epoch s | epochs '
                  '(warm-up first) | phases s | build s | memory MB | peak '
                  'VmHWM MB | ru_maxrss MB | eval users/s |',
                  '|---|---|---|---|---|---|---|---|---|---|---|']
        for p in s['points']:
            if 'error' in p:
                lines.append(f"| {p.get('spec', '')} | error: {p['error']} "
                             '| | | | | | | | | |')
                continue
            ph = ', '.join(f'{k} {v:.3f}' for k, v in p['phase_s'].items())
            ep = ' '.join(f'{t:.3f}' for t in p['epoch_seconds'])
            ev = f"{p['eval_users_per_s']:,.0f}" if 'eval_users_per_s' in p \
                else ''
            lines.append(
                f"| {p['num_users']:,} | {p['num_items']:,} | "
                f"{p['train_edges']:,} | {p['epoch_s']:.3f} | {ep} | {ph} | "
                f"{p['build_s']:.2f} | {p['memory_mb']:.0f} | "
                f"{p['train_peak_mb']:.0f} | {p['ru_maxrss_mb']:.0f} | {ev} |")
        lines.append('')
    return '\n'.join(lines) + '\n'


def _order(key: str) -> Tuple[int, int]:
    m, a = key.split('/')
    return (ALL_MODELS.index(m) if m in ALL_MODELS else 99,
            AXES.index(a) if a in AXES else 99)


# --------------------------------------------------------------------------
# driver

def _matmul_job(q, threads: int) -> None:
    torch.set_num_threads(threads)
    q.put(2 * 2048 ** 3 / matmul_rate(torch.float32, 2048) / 1e9)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return (f'{cpu}, {os.cpu_count()} cores, {platform.system()} '
            f'{platform.release()}, Python {platform.python_version()}, '
            f'torch {torch.__version__}')


def run(models: Sequence[str], axes: Sequence[str], *, threads: int,
        factors: Sequence[float], base: Dict[str, Any],
        cache: Path, quick: bool, log=print) -> Dict[str, Any]:
    r"""Measures every (model, axis) series; returns ``{run, series}``."""
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    mm0 = fresh_process(_matmul_job, threads)
    log(f'2048^3 float32 matmul: {mm0:.3f} s ({threads} thread(s))')
    series: Dict[str, Any] = {}
    for model in models:
        cfg = MODELS[model]
        timed = 2 if quick else cfg['timed']
        for axis in axes:
            pts = []
            for spec in axis_points(axis, base, factors, cfg['size']):
                spec = dict(spec, modalities=base['modalities'])
                path, info = dataset_file(spec, cache, threads)
                r = fresh_process(_point_job, model, path, cfg['overrides'],
                                  timed, threads, axis == 'items')
                r['data'] = info
                r['spec'] = {k: spec[k] for k in ('users', 'items',
                                                  'train_edges')}
                pts.append(r)
                if 'error' in r:
                    log(f"{model:9s} {axis:12s} {r['spec']}: {r['error']}")
                else:
                    log(f"{model:9s} {axis:12s} U={r['num_users']:<7,} "
                        f"I={r['num_items']:<7,} E={r['train_edges']:<8,} "
                        f"epoch {r['epoch_s']:.3f} s  memory "
                        f"{r['memory_mb']:.0f} MB" +
                        (f"  eval {r['eval_users_per_s']:,.0f} users/s"
                         if 'eval_users_per_s' in r else ''))
            series[f'{model}/{axis}'] = {
                'model': model, 'axis': axis, 'points': pts,
                'analysis': analyse(model, axis, pts)}
    mm1 = fresh_process(_matmul_job, threads)
    load1 = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    run_info = {
        'date': dt.datetime.now().isoformat(timespec='seconds'),
        'machine': machine(), 'threads': threads,
        'command': 'python ' + ' '.join(
            shlex.quote(a) for a in ['benchmarks/scaling.py'] + sys.argv[1:]),
        'matmul_s': [mm0, mm1], 'loadavg': [round(load0, 2),
                                            round(load1, 2)],
        'wall_s': time.perf_counter() - t_start, 'factors': list(factors),
        'base': base, 'models': {m: MODELS[m] for m in models},
        'quick': quick}
    return {'run': run_info, 'series': series}


def merge(old: Optional[Dict[str, Any]], new: Dict[str, Any]
          ) -> Dict[str, Any]:
    r"""Adds a run to the stored results: its series replace those of the
    same (model, axis); runs no series refers to any more are dropped."""
    runs = list(old['runs']) if old else []
    series = dict(old['series']) if old else {}
    rid = max((r['id'] for r in runs), default=0) + 1
    runs.append(dict(new['run'], id=rid))
    for k, s in new['series'].items():
        series[k] = dict(s, run=rid)
    used = {s['run'] for s in series.values()}
    return {'runs': [r for r in runs if r['id'] in used], 'series': series}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--models', nargs='+', default=list(ALL_MODELS),
                    choices=ALL_MODELS)
    ap.add_argument('--axes', nargs='+', default=list(AXES), choices=AXES)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--points', type=int, default=5,
                    help='sizes per axis, geometric (default 5: 1, 2, 4, 8 '
                         'and 16 times the base)')
    ap.add_argument('--span', type=float, default=16.0,
                    help='largest / smallest size per axis (default 16)')
    ap.add_argument('--quick', action='store_true',
                    help='tiny sizes, 2 timed epochs, written to a '
                         'temporary folder unless --out is given')
    ap.add_argument('--out', default=None,
                    help='folder for scaling.md / scaling.json (default '
                         'benchmarks/results)')
    ap.add_argument('--fresh', action='store_true',
                    help='do not merge with the stored results')
    ap.add_argument('--cache', default=None,
                    help='folder for the generated datasets (default: a '
                         'temporary folder, removed at the end)')
    args = ap.parse_args(argv)
    if args.points < 2 or args.span <= 1:
        ap.error('need --points >= 2 and --span > 1')
    torch.set_num_threads(1)
    factors = [args.span ** (k / (args.points - 1))
               for k in range(args.points)]
    base = QUICK_BASE if args.quick else BASE
    out = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / 'mmdiff-scaling-quick' if args.quick
        else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='mmdiff-scaling-') as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        new = run(args.models, args.axes, threads=args.threads,
                  factors=factors, base=base, cache=cache, quick=args.quick)
    jpath = out / 'scaling.json'
    old = None
    if jpath.exists() and not args.fresh:
        old = json.loads(jpath.read_text())
        if any(r.get('quick') != args.quick for r in old.get('runs', [])):
            old = None  # never mix quick and full runs
    result = merge(old, new)
    jpath.write_text(json.dumps(result, indent=1))
    (out / 'scaling.md').write_text(format_report(result))
    print(f'wrote {out / "scaling.md"} and {jpath}')
    flags = [f for s in result['series'].values()
             for f in s['analysis']['flags']]
    print('\n'.join(['flags:'] + flags) if flags else 'no flags')
    return 0


if __name__ == '__main__':
    sys.exit(main())
