r"""DiffMM epoch time side by side: the official code and mmdiff, one run.

Runs the official DiffMM code (a local copy whose path you give; it is never
part of this repository) and mmdiff's DiffMM in float32, with bf16 for the
denoisers only (``precision=bf16-denoiser``) and with bf16 everywhere it is
allowed (``precision=bf16``; the bf16 contenders run by default only where
the CPU multiplies bfloat16 natively, :mod:`mmdiff.nn.precision`), on the
same split, machine and threads.  Every
contender lives in its own process, set up once; the script then runs one
epoch of each in turn, round after round (the order rotates every round), so
that a drift in the machine's speed hits all contenders alike.  The first
round is a warm-up and is not counted.

Per contender and epoch it records the phase times: denoiser training
("diffusion"), graph regeneration ("regeneration"), BPR + contrastive
training ("bpr_cl") and one evaluation ("eval": the official code's test
pass, mmdiff's validation pass), their sum ("epoch"), and the process's peak
resident memory.  For the official code the phase boundaries come from the
log lines its training loop prints ("Start to re-build UI matrix", "UI
matrix built!"), read through a wrapped ``log`` function, so that nothing in
its training code changes.  The matrix-product rate of the machine (2048³,
float32 and, where native, bfloat16; same threads) is measured before and
after the rounds; without native bfloat16 a small emulated bfloat16 product
is timed against float32 instead.

The official code is written for CUDA and for older torch/scipy; to run it on
a CPU with today's versions the script applies these runtime shims (listed in
the results file too), nothing else:

* ``Tensor.cuda()`` and ``Module.cuda()`` return the object unchanged;
* ``torch.sparse.FloatTensor(indices, values, shape)`` (removed from torch)
  builds ``torch.sparse_coo_tensor(indices, values, shape)``;
* ``scipy.sparse.coo_matrix.A`` (removed from scipy) is ``toarray()``;
* the unused ``setproctitle`` import is stubbed.

The official code reads the modalities of its ``baby`` layout (image and
text) from ``Datasets/baby/``; the script builds that folder in a temporary
directory with links to TikTok's ``image_feat.npy`` and ``audio_feat.npy``
(as ``text_feat.npy``), so both codes train on TikTok's image and audio
features, the two modalities mmdiff's TikTok preset uses.  The official
command line is the TikTok one of its README (``--reg 1e-4 --ssl_reg 1e-2
--trans 1 --e_loss 0.1 --cl_method 1``, batch 1024, keep rate 0.5, 5 steps,
hidden [1000]), which mmdiff's TikTok preset mirrors.

Example (writes ``benchmarks/results/diffmm_speed.md`` and ``.json``)::

    python benchmarks/diffmm_speed.py --official /path/to/DiffMM \
        --root ../shared/data --threads 2 --epochs 3
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from speed import matmul_ms, peak_rss_mb, use_allocator  # benchmarks/speed.py

HERE = Path(__file__).resolve().parent
RESULTS = HERE / 'results'

PHASES = ('diffusion', 'regeneration', 'bpr_cl', 'train', 'eval', 'epoch')

#: contender -> mmdiff preset overrides (None: the official code)
CONTENDERS: Dict[str, Optional[List[str]]] = {
    'official': None,
    'float32': [],
    'bf16-denoiser': ['precision=bf16-denoiser'],
    'bf16': ['precision=bf16'],
    'float32-system-malloc': [],
    'official-retained-malloc': None,
}
#: contenders whose process keeps freed memory for reuse
#: (:func:`mmdiff.train.allocator.retain_freed_memory`, the setting of
#: ``mmdiff train``); the others keep the C allocator's defaults
RETAINED_MALLOC = frozenset({'float32', 'bf16-denoiser', 'bf16',
                             'official-retained-malloc'})

OFFICIAL_ARGS = ['--data', 'baby', '--reg', '1e-4', '--ssl_reg', '1e-2',
                 '--trans', '1', '--e_loss', '0.1', '--cl_method', '1',
                 '--batch', '1024', '--keepRate', '0.5', '--steps', '5',
                 '--dims', '[1000]', '--epoch', '1000']

SHIMS = [
    '`Tensor.cuda()` / `Module.cuda()` return the object unchanged (CPU run)',
    '`torch.sparse.FloatTensor(i, v, shape)` -> '
    '`torch.sparse_coo_tensor(i, v, shape)` (removed from torch)',
    '`scipy.sparse.coo_matrix.A` -> `toarray()` (removed from scipy)',
    'the unused `setproctitle` import is stubbed',
]


# ---------------------------------------------------------------- official
def _apply_shims() -> None:
    import scipy.sparse as sp
    import torch
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.sparse.FloatTensor = \
        lambda i, v, shape: torch.sparse_coo_tensor(i, v, shape)
    if not hasattr(sp.coo_matrix, 'A'):
        sp.coo_matrix.A = property(lambda self: self.toarray())
    stub = types.ModuleType('setproctitle')
    stub.setproctitle = lambda *a, **k: None
    sys.modules.setdefault('setproctitle', stub)


def _official_layout(root: Path, dataset: str, workdir: Path) -> None:
    src = root / dataset
    dst = workdir / 'Datasets' / 'baby'
    dst.mkdir(parents=True)
    links = {'trnMat.pkl': 'trnMat.pkl', 'tstMat.pkl': 'tstMat.pkl',
             'image_feat.npy': 'image_feat.npy',
             'text_feat.npy': 'audio_feat.npy'}
    for name, target in links.items():
        if not (src / target).is_file():
            raise FileNotFoundError(f"{src / target} is missing")
        (dst / name).symlink_to((src / target).resolve())


class _Official:
    r"""The official training loop, one epoch per :meth:`epoch` call."""

    def __init__(self, path: Path, root: Path, dataset: str, seed: int):
        import torch
        path = path.resolve()
        if not (path / 'Main.py').is_file():
            raise FileNotFoundError(f"no Main.py in {path}: --official must "
                                    f"be a copy of the official DiffMM code")
        self._tmp = tempfile.TemporaryDirectory(prefix='diffmm-official-')
        work = Path(self._tmp.name)
        _official_layout(root, dataset, work)
        os.chdir(work)
        _apply_shims()
        sys.argv = ['Main.py'] + OFFICIAL_ARGS + ['--seed', str(seed)]
        sys.path.insert(0, str(path))
        import Main  # noqa: the official module (parses sys.argv)
        self.marks: Dict[str, float] = {}
        original = Main.log

        def log(msg, *a, **k):
            if msg == 'Start to re-build UI matrix':
                self.marks['diffusion_end'] = time.perf_counter()
            elif msg == 'UI matrix built!':
                self.marks['regeneration_end'] = time.perf_counter()
            if k.get('oneline'):
                return None  # per-step progress lines: not printed
            return original(msg, *a, **k)

        Main.log = log
        Main.seed_it(seed)
        handler = Main.DataHandler()
        handler.LoadData()
        self.coach = Main.Coach(handler)
        self.coach.prepareModel()
        tst = getattr(handler, 'tstLoader', None)
        self.eval_users = len(tst.dataset) if tst is not None else None

    def epoch(self) -> Dict[str, Any]:
        self.marks.clear()
        t0 = time.perf_counter()
        res = self.coach.trainEpoch()
        t1 = time.perf_counter()
        test = self.coach.testEpoch()
        t2 = time.perf_counter()
        d, r = self.marks['diffusion_end'], self.marks['regeneration_end']
        return {'diffusion': d - t0, 'regeneration': r - d, 'bpr_cl': t1 - r,
                'train': t1 - t0, 'eval': t2 - t1, 'epoch': t2 - t0,
                'loss': float(res['Loss']), 'recall@20': float(test['Recall'])}


# ---------------------------------------------------------------- mmdiff
def _measured(out: Dict[str, Any]) -> Dict[str, Any]:
    r"""An epoch's row plus the process's peak memory and whether the epoch
    ran in the process's main thread."""
    import threading
    out['rss_mb'] = peak_rss_mb()
    out['main_thread'] = threading.current_thread() is threading.main_thread()
    return out


class _Stop(Exception):
    r"""Ends :meth:`_Ours.serve` (the parent asked to stop)."""


class _Ours:
    r"""mmdiff's DiffMM trainer.  :meth:`serve` runs :meth:`Trainer.fit`
    in the calling (main) thread and, after each epoch, reports it and
    waits for the parent's next command.  (The fit loop must not run in a
    helper thread: there the epoch was 10-20 % slower than ``mmdiff
    train``'s, see ``results/diffmm_speed_helper_thread_2026-12-07.md``;
    cause not identified.)"""

    def __init__(self, overrides: List[str], root: Path, dataset: str,
                 seed: int):
        from mmdiff.nn.models import get_model_class
        from mmdiff.train import Trainer
        from mmdiff.train.config import parse_overrides, preset, split_config
        from mmdiff.train.run import dataset_key, load_data
        from mmdiff.train.seed import seed_everything

        from mmdiff.data.hetero import edge_index_of
        data = load_data(dataset, str(root))
        self.eval_users = int(edge_index_of(data, 'val')[0].unique().numel())
        cls = get_model_class('diffmm')
        cfg = preset(cls.name, dataset_key(dataset))
        cfg.update(parse_overrides(overrides))
        tkw, hp = split_config(cfg, cls)
        seed_everything(seed)
        model = cls.from_data(data, **hp)
        self._conn = None
        tkw.update(epochs=10 ** 6, patience=0, track_test=False,
                   eval_every=1)
        self.trainer = Trainer(model, data, device='cpu', seed=seed,
                               on_epoch=self._on_epoch, **tkw)

    @staticmethod
    def row(r: Dict[str, Any]) -> Dict[str, Any]:
        return {'diffusion': r['time/diffusion'],
                'regeneration': r['time/regenerate'],
                'bpr_cl': r['time/bpr'], 'train': r['time/train'],
                'eval': r['time/eval'],
                'epoch': r['time/epoch'],
                'loss': float(r['bpr/loss']),
                'recall@20': float(r['val/recall@20'])}

    def _on_epoch(self, r: Dict[str, Any]) -> None:
        self._conn.send(('epoch', _measured(self.row(r))))
        if self._conn.recv() != 'epoch':
            raise _Stop

    def serve(self, conn) -> None:
        r"""Runs epochs while the parent sends ``'epoch'``."""
        self._conn = conn
        if conn.recv() != 'epoch':
            return
        try:
            self.trainer.fit()
        except _Stop:
            pass


def _worker(conn, name: str, official: Optional[str], root: str,
            dataset: str, threads: int, seed: int,
            extra: List[str]) -> None:
    warnings.filterwarnings('ignore')
    import torch
    torch.set_num_threads(threads)
    try:
        devnull = open(os.devnull, 'w')
        sys.stdout = devnull
        t0 = time.perf_counter()
        malloc = use_allocator(name in RETAINED_MALLOC)
        if CONTENDERS[name] is None:
            runner = _Official(Path(official), Path(root), dataset, seed)
        else:
            runner = _Ours(list(extra) + CONTENDERS[name], Path(root),
                           dataset, seed)
        conn.send(('ready', {'seconds': time.perf_counter() - t0,
                             'malloc': malloc,
                             'eval_users': runner.eval_users}))
        if isinstance(runner, _Ours):
            runner.serve(conn)   # the fit loop in this (main) thread
        else:
            while conn.recv() == 'epoch':
                conn.send(('epoch', _measured(runner.epoch())))
    except BaseException:
        try:
            conn.send(('error', traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass  # the parent is gone
    finally:
        conn.close()


# ---------------------------------------------------------------- report
def summarise(epochs: Dict[str, List[Dict[str, float]]]) -> Dict[str, Any]:
    r"""Median, min and max of every phase per contender; ratios of the
    official epoch to each contender's (median of per-round ratios, and
    their min/max: each round pairs the official epoch with the same
    round's epoch of the contender)."""
    out: Dict[str, Any] = {}
    for name, rows in epochs.items():
        out[name] = {p: {'median': statistics.median(r[p] for r in rows),
                         'min': min(r[p] for r in rows),
                         'max': max(r[p] for r in rows)}
                     for p in PHASES}
        out[name]['rss_mb'] = max(r['rss_mb'] for r in rows)
    if 'official' in epochs:
        ref = epochs['official']
        for name, rows in epochs.items():
            if name == 'official':
                continue
            ratios = {}
            for p in PHASES:
                rr = [a[p] / b[p] for a, b in zip(ref, rows) if b[p] > 0]
                ratios[p] = {'median': statistics.median(rr),
                             'min': min(rr), 'max': max(rr)}
            out[name]['speedup'] = ratios
    return out


#: size of the bfloat16 product timed on a device without native bfloat16
#: (emulated: a 2048³ product would take minutes)
EMULATED_N = 512


def default_contenders(bf16_native: bool) -> List[str]:
    r"""Every contender, less the bf16 ones where bfloat16 is emulated."""
    return [n for n in CONTENDERS if bf16_native or not n.startswith('bf16')]


def _matmul_rates(bf16_native: bool) -> Dict[str, float]:
    r"""Milliseconds of a 2048³ product in float32 and, where bfloat16 is
    native, in bfloat16; otherwise float32 and bfloat16 at
    :data:`EMULATED_N`³ (keys with the size appended)."""
    out = {'float32': matmul_ms('float32')}
    if bf16_native:
        out['bfloat16'] = matmul_ms('bfloat16')
    else:
        for d in ('float32', 'bfloat16'):
            out[f'{d}_{EMULATED_N}'] = matmul_ms(d, n=EMULATED_N, reps=1)
    return out


def _matmul_line(rec: Dict[str, Any]) -> str:
    b, a = rec['matmul_ms']['before'], rec['matmul_ms']['after']
    line = (f"- 2048³ matrix product (same threads), before / after the "
            f"rounds: float32 {b['float32']:.1f} / {a['float32']:.1f} ms")
    if 'bfloat16' in b:
        return line + (f", bfloat16 {b['bfloat16']:.1f} / "
                       f"{a['bfloat16']:.1f} ms.")
    n = EMULATED_N
    f, h = f'float32_{n}', f'bfloat16_{n}'
    return line + (
        f". This CPU has no native bfloat16 (neither AVX512-BF16 nor AMX): "
        f"a {n}³ product takes {b[h]:.1f} / {a[h]:.1f} ms in bfloat16 "
        f"against {b[f]:.2f} / {a[f]:.2f} ms in float32 "
        f"({b[h] / b[f]:.0f}× slower), so the bf16 contenders are not run "
        f"by default.")


def render(rec: Dict[str, Any]) -> str:
    s = rec['summary']
    names = list(s)
    lines = [
        '# DiffMM epoch time: the official code and mmdiff side by side',
        '',
        f"- Date: {rec['date']}. Machine: {rec['machine']}.",
        f"- Command: `{rec['command']}`",
        _matmul_line(rec),
        f"- {rec['dataset']} (image + audio), seed {rec['seed']}; one warm-up "
        f"round, then {rec['rounds']} timed rounds; each round runs one "
        'epoch of every contender (order rotating). Times are the median '
        'over the timed rounds [min–max].',
        f"- Official code: `{rec['official']}`, command line "
        f"`{' '.join(OFFICIAL_ARGS[:-2])}` (the `--data baby` layout with "
        "TikTok's image and audio features); per-phase times from its own "
        'log lines. Runtime shims (nothing else changed):',
    ]
    lines += [f'  - {x}' for x in rec['shims']]
    lines += [
        f"- mmdiff: the {rec['dataset']} preset of "
        '`mmdiff/configs/diffmm.toml` plus the overrides in the contender '
        'name (`float32` = none), with the allocator setting of `mmdiff '
        'train` (glibc malloc keeps freed memory for reuse, '
        '`mmdiff.train.allocator`). Context: `float32-system-malloc` is the '
        'float32 preset with the C allocator\'s defaults (as the official '
        'code runs), `official-retained-malloc` the official code with '
        'mmdiff\'s allocator setting'
        + (f" and `{' '.join(rec['set'])}`" if rec['set'] else '') + '.',
        '- train = diffusion + regeneration + bpr_cl; eval: the one '
        'evaluation per epoch each code runs (full ranking; the official '
        'code scores the test users, mmdiff the validation users: '
        f"{rec.get('eval_users', '?')}); epoch = train + eval (+ the "
        "trainer's bookkeeping).",
        '',
        '| seconds per epoch | ' + ' | '.join(names) + ' |',
        '|---' * (len(names) + 1) + '|',
    ]
    for p in PHASES:
        cells = []
        for n in names:
            v = s[n][p]
            cells.append(f"{v['median']:.2f} [{v['min']:.2f}–{v['max']:.2f}]")
        label = f'**{p}**' if p == 'epoch' else p
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    lines.append('| peak RSS (MB) | ' + ' | '.join(
        f"{s[n]['rss_mb']:.0f}" for n in names) + ' |')
    if 'official' in s:
        lines.append('| **speed-up vs official (epoch)** | 1× | ' + ' | '.join(
            f"**{s[n]['speedup']['epoch']['median']:.2f}×** "
            f"[{s[n]['speedup']['epoch']['min']:.2f}–"
            f"{s[n]['speedup']['epoch']['max']:.2f}]"
            for n in names if n != 'official') + ' |')
        for p in PHASES[:-1]:
            lines.append(f'| speed-up, {p} | 1× | ' + ' | '.join(
                f"{s[n]['speedup'][p]['median']:.2f}×"
                for n in names if n != 'official') + ' |')
    lines += ['', 'Speed-ups are medians over rounds of the official epoch '
              'divided by the same round\'s epoch of the contender '
              '[min–max over rounds].', '',
              '## Every epoch', '',
              '| round | contender | diffusion | regeneration | bpr_cl | '
              'eval | epoch | loss | recall@20 |',
              '|---|---|---|---|---|---|---|---|---|']
    for i, rnd in enumerate(rec['log']):
        for name, r in rnd:
            lines.append(
                f"| {'warm-up' if i == 0 else i} | {name} | "
                f"{r['diffusion']:.2f} | {r['regeneration']:.2f} | "
                f"{r['bpr_cl']:.2f} | {r['eval']:.2f} | {r['epoch']:.2f} | "
                f"{r['loss']:.4f} | {r['recall@20']:.4f} |")
    lines += ['', 'loss: the BPR loss of the epoch (official: its total '
              'training loss, which also holds the regulariser and the '
              'contrastive terms); recall@20: the evaluation after the '
              'epoch (official: test, mmdiff: validation).', '']
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--official', default=None,
                    help='path of a local copy of the official DiffMM code '
                         '(the folder holding Main.py); without it only '
                         'mmdiff runs')
    ap.add_argument('--root', required=True, help='data root (<root>/tiktok)')
    ap.add_argument('--dataset', default='tiktok')
    ap.add_argument('--contenders', nargs='*', default=None,
                    choices=list(CONTENDERS),
                    help='default: all, less the bf16 ones on a device '
                         'without native bfloat16 (mmdiff.nn.precision)')
    ap.add_argument('--epochs', type=int, default=3,
                    help='timed rounds (after one warm-up round)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                    help='preset overrides for every mmdiff contender')
    ap.add_argument('--tag', default='diffmm_speed')
    ap.add_argument('--out', default=str(RESULTS))
    args = ap.parse_args(argv)
    from mmdiff.nn.precision import native_bf16
    bf16_native = native_bf16('cpu')
    contenders = args.contenders
    if contenders is None:
        contenders = default_contenders(bf16_native)
    names = [n for n in contenders
             if CONTENDERS[n] is not None or args.official is not None]
    if not names:
        ap.error('nothing to run (official needs --official PATH)')
    if args.epochs < 1:
        ap.error('--epochs must be at least 1')
    os.environ.setdefault('MMDIFF_CACHE_DIR',
                          str(Path(tempfile.gettempdir()) / 'mmdiff-bench'))
    import torch
    torch.set_num_threads(args.threads)
    before = _matmul_rates(bf16_native)

    ctx = mp.get_context('spawn')
    procs, conns, setup = {}, {}, {}
    log: List[List[Any]] = []
    epochs: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    try:
        for name in names:  # set up one after the other: no contention
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(
                child, name, args.official, args.root, args.dataset,
                args.threads, args.seed, args.set), daemon=True)
            p.start()
            procs[name], conns[name] = p, parent
            kind, val = parent.recv()
            if kind == 'error':
                raise SystemExit(f'{name} failed to start:\n{val}')
            setup[name] = val
            print(f"{name}: ready in {val['seconds']:.1f} s", flush=True)
        for rnd in range(args.epochs + 1):
            k = rnd % len(names)
            order = names[k:] + names[:k]
            this = []
            for name in order:
                conns[name].send('epoch')
                kind, val = conns[name].recv()
                if kind == 'error':
                    raise SystemExit(f'{name} failed:\n{val}')
                this.append((name, val))
                if rnd > 0:
                    epochs[name].append(val)
                print(f"round {rnd} {name}: epoch {val['epoch']:.2f} s "
                      f"(diffusion {val['diffusion']:.2f}, regeneration "
                      f"{val['regeneration']:.2f}, bpr_cl "
                      f"{val['bpr_cl']:.2f}, eval {val['eval']:.2f})",
                      flush=True)
            log.append(this)
    finally:
        for name in procs:
            try:
                conns[name].send('stop')
            except (BrokenPipeError, OSError):
                pass
            procs[name].join(timeout=30)
            if procs[name].is_alive():
                procs[name].kill()
    after = _matmul_rates(bf16_native)
    # the epoch rows in one order for the report (official first)
    epochs = {n: epochs[n] for n in names}
    rec = {
        'command': 'python ' + ' '.join(
            [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        'date': dt.datetime.now().isoformat(timespec='seconds'),
        'machine': f'{platform.machine()}, {os.cpu_count()} cores, '
                   f'torch {torch.__version__}, {args.threads} threads',
        'dataset': args.dataset, 'seed': args.seed, 'set': args.set,
        'official': 'given' if args.official else None,
        'rounds': args.epochs,
        'shims': SHIMS if args.official else [],
        'setup_seconds': setup,
        'matmul_ms': {'before': before, 'after': after},
        'native_bf16': bf16_native,
        'epochs': epochs,
        'log': log,
        'summary': summarise(epochs),
        'eval_users': ', '.join(f"{n} {v['eval_users']}"
                                for n, v in setup.items()
                                if v['eval_users'] is not None),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f'{args.tag}.json').write_text(json.dumps(rec, indent=1))
    (out / f'{args.tag}.md').write_text(render(rec))
    print(render(rec))
    return 0


if __name__ == '__main__':
    sys.exit(main())
