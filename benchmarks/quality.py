r"""Quality benchmark: models x datasets x seeds through the same code path as
``mmdiff train`` (:func:`mmdiff.cli.train_run`).

Every finished run is stored as ``benchmarks/results/quality_runs/<tag>.json``
(metrics, config, command, machine, date), so grids can be run piecemeal and
the tables are always rebuilt from all stored runs:
``benchmarks/results/quality.md`` and ``quality.csv`` hold mean ± std of
Recall/NDCG/Precision@10/20 of the validation-selected epoch, the
best-test-epoch numbers (the DiffMM paper's protocol) beside them, epochs and
seconds per epoch, and the papers' numbers where they exist.

Example::

    python benchmarks/quality.py --models lightgcn --datasets tiktok baby \
        --seeds 0 --root ../shared/data
    python benchmarks/quality.py --report-only
    python benchmarks/quality.py --readme-table   # README "Results so far"

``tests/test_readme_results.py`` checks the README table and the prose
numbers of that section, ``quality.md`` and ``ablation.md`` against the run
records.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

from mmdiff.metrics import METRIC_NAMES

# torch's one-time notices about its beta sparse-CSR support are noise here
warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')

HERE = Path(__file__).resolve().parent
RESULTS = HERE / 'results'
RUNS = RESULTS / 'quality_runs'

#: (model, dataset) -> (source, R@20, N@20, P@20); best-test-epoch protocol
#: for DiffMM's Table 1, mean over runs for LD4MRec's Table 2.
#: (model, dataset) -> (R@20, N@20): the official DiffMM code (HKUDS/DiffMM)
#: run on this project's machine with the README's TikTok command line and
#: the same two modalities (image + audio), seed 421, best test epoch
#: (issue #3).
OFFICIAL_HERE = {
    ('diffmm', 'tiktok'): (0.1070, 0.0450),
    ('diffmm-bf16', 'tiktok'): (0.1070, 0.0450),
    ('diffmm-bf16-denoiser', 'tiktok'): (0.1070, 0.0450),
    ('diffmm-bf16-plaintopk', 'tiktok'): (0.1070, 0.0450),
    ('diffmm-rebuild5', 'tiktok'): (0.1070, 0.0450),
}

PAPER = {
    ('lightgcn', 'tiktok'): ('DiffMM T1', 0.0653, 0.0282, 0.0033),
    ('lightgcn', 'baby'): ('DiffMM T1', 0.0698, 0.0319, 0.0037),
    ('lightgcn', 'sports'): ('DiffMM T1', 0.0782, 0.0369, 0.0042),
    ('diffmm', 'tiktok'): ('DiffMM T1 (3 modalities)', 0.1129, 0.0456,
                           0.0056),
    ('diffmm', 'baby'): ('DiffMM T1', 0.0975, 0.0411, 0.0051),
    ('diffmm', 'sports'): ('DiffMM T1', 0.1017, 0.0458, 0.0054),
    ('mf', 'baby'): ('LD4MRec T2', 0.0575, 0.0249, None),
    ('mf', 'sports'): ('LD4MRec T2', 0.0653, 0.0298, None),
    ('ld4mrec', 'baby'): ('LD4MRec T2 (with features)', 0.0981, 0.0437,
                          None),
    ('ld4mrec', 'sports'): ('LD4MRec T2 (with features)', 0.1115, 0.0502,
                            None),
    ('ld4mrec-wobg', 'baby'): ('LD4MRec T2, DiffRec row', 0.0774, 0.0339,
                               None),
    ('ld4mrec-wobg', 'sports'): ('LD4MRec T2, DiffRec row', 0.0900, 0.0408,
                                 None),
    ('diffrec', 'baby'): ('LD4MRec T2, DiffRec row', 0.0774, 0.0339, None),
    ('diffrec', 'sports'): ('LD4MRec T2, DiffRec row', 0.0900, 0.0408, None),
}

#: table columns: every metric of mmdiff.metrics.METRIC_NAMES but the hit
#: rate, at 10 and 20
METRICS = [f'{m}@{k}' for k in (10, 20) for m in METRIC_NAMES if m != 'hit']

#: The dataset columns of the README's "Results so far" table.
README_COLUMNS = (('tiktok', 'TikTok (image+audio)'), ('baby', 'Baby'),
                  ('sports', 'Sports'))
#: Header of its column of TikTok best-test-epoch numbers.
README_BEST_TEST = 'TikTok, best test epoch'
#: Its rows: (name, note, {dataset: model name in the run records},
#: reference text).  The cells are means over *all* stored noise-free runs of
#: that model and dataset (:func:`summarize`), and the label states their
#: number (:func:`readme_label`).  Numbers in the reference text must be
#: :data:`PAPER` or :data:`OFFICIAL_HERE` entries of the row's runs
#: (``tests/test_readme_results.py`` checks all of it).
README_ROWS = [
    ('LightGCN', '',
     {'tiktok': 'lightgcn', 'baby': 'lightgcn', 'sports': 'lightgcn'},
     'DiffMM paper: 0.0653 / 0.0282, 0.0698 / 0.0319, 0.0782 / 0.0369'),
    ('DiffMM', 'float32', {'tiktok': 'diffmm'},
     'official code on this machine: 0.1070 / 0.0450 (best test epoch, '
     'one seed); DiffMM paper (3 modalities): 0.1129 / 0.0456'),
    ('DiffMM', 'bf16 autocast', {'tiktok': 'diffmm-bf16'}, ''),
    ('LD4MRec', '', {'tiktok': 'ld4mrec'}, ''),
    ('LD4MRec w/o BG', 'interactions only',
     {'baby': 'ld4mrec-wobg', 'sports': 'ld4mrec-wobg'},
     "DiffRec row of LD4MRec's table: 0.0774 / 0.0339, 0.0900 / 0.0408"),
    ('DiffRec', 'control; Baby preset lr 5e-5, Sports lr 5e-4',
     {'baby': 'diffrec', 'sports': 'diffrec-lr5e-4'},
     'same DiffRec row: our DiffRec misses it by as much as LD4MRec w/o BG '
     '(`ld4mrec_tuning.md`)'),
]


def machine() -> str:
    import os
    return (f"{platform.machine()} {platform.processor() or ''} "
            f"{os.cpu_count()} cores, torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}").strip()


def run_one(model: str, dataset: str, seed: int, root: str, device: str,
            overrides: Dict, variant: str, noise: float = 0.0) -> Dict:
    from mmdiff.cli import dataset_key, train_run
    from mmdiff.nn.models import get_model_class
    from mmdiff.train.config import preset
    cls = get_model_class(model)
    cfg = preset(cls.name, dataset_key(dataset))
    cfg.update(overrides)
    t0 = time.time()
    # Each run keeps its checkpoints in runs/quality/<tag>/ (git-ignored), so
    # an interrupted run continues where it stopped when the script is rerun.
    out = HERE.parent / 'runs' / 'quality' / tag_of(variant or model, dataset,
                                                    seed, noise)
    resume = (out / 'checkpoint.pt').exists()
    result, _, _ = train_run(model, dataset, root=root, seed=seed,
                             device=device, cfg=cfg, noise=noise,
                             out=str(out), resume=resume,
                             log=lambda s: print(s, flush=True))
    rec = {
        'model': variant or model, 'dataset': dataset, 'seed': seed,
        'noise': noise, 'config': cfg, 'metrics': result.metrics_dict(),
        'history': compact_history(out),
        'wall_seconds': time.time() - t0,
        'command': ' '.join(sys.argv), 'machine': machine(),
        'date': dt.datetime.now().isoformat(timespec='seconds'),
    }
    return rec


#: per-epoch values kept in each run record (for capped comparisons)
HISTORY_KEYS = ('val/recall@20', 'val/ndcg@20', 'test/recall@20',
                'test/ndcg@20', 'test/precision@20')


def compact_history(out: Path) -> List[Dict]:
    r"""The per-epoch validation/test metrics of a run folder."""
    path = Path(out) / 'history.jsonl'
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()
            if line.strip()]
    return [{'epoch': r['epoch'], **{k: r[k] for k in HISTORY_KEYS
                                     if k in r}} for r in rows]


def capped(rec: Dict, epochs: int) -> Optional[Dict]:
    r"""Test metrics of the validation-selected epoch among the first
    ``epochs`` epochs of a stored run (``None`` without a history)."""
    hist = [h for h in rec.get('history', [])
            if h['epoch'] < epochs and 'val/recall@20' in h]
    if not hist:
        return None
    best = max(hist, key=lambda h: h['val/recall@20'])  # first max wins
    return best


def tag_of(model, dataset, seed, noise=0.0) -> str:
    n = f'-noise{noise:g}' if noise else ''
    return f'{model}-{dataset}{n}-seed{seed}'


def load_runs(folder: Optional[Path] = None) -> List[Dict]:
    r"""Every run record in ``folder`` (default :data:`RUNS`), sorted by
    file name."""
    folder = RUNS if folder is None else Path(folder)
    return [json.loads(p.read_text()) for p in sorted(folder.glob('*.json'))]


def group_runs(runs: List[Dict]) -> Dict[tuple, List[Dict]]:
    r"""``{(model, dataset, noise): [runs]}`` (all seeds of each)."""
    groups: Dict[tuple, List[Dict]] = {}
    for r in runs:
        groups.setdefault((r['model'], r['dataset'], r.get('noise', 0.0)),
                          []).append(r)
    return groups


def summarize(rs: List[Dict]) -> Dict:
    r"""One table row from the runs of one (model, dataset, noise): the
    number of runs, ``(mean, population std)`` of each of :data:`METRICS`
    (test, validation-selected epoch), the mean best-test-epoch Recall/NDCG@20
    and the mean epochs, best epoch and seconds per epoch."""
    row: Dict = {'seeds': len(rs)}
    for key in METRICS:
        vals = [r['metrics'].get(f'test/{key}') for r in rs]
        vals = [v for v in vals if v is not None]
        row[key] = (statistics.mean(vals), statistics.pstdev(vals)) \
            if vals else None
    for key in ('recall@20', 'ndcg@20'):
        vals = [r['metrics'].get(f'best_test_epoch/{key}') for r in rs]
        vals = [v for v in vals if v is not None]
        row[f'besttest_{key}'] = statistics.mean(vals) if vals else None
    row['epochs'] = statistics.mean(r['metrics']['epochs_run'] for r in rs)
    row['best_epoch'] = statistics.mean(r['metrics']['best_epoch']
                                        for r in rs)
    row['s_per_epoch'] = statistics.mean(r['metrics']['seconds_per_epoch']
                                         for r in rs)
    return row


def summary_rows(runs: List[Dict]) -> List[Dict]:
    rows = []
    for (model, dataset, noise), rs in sorted(group_runs(runs).items()):
        row = {'model': model, 'dataset': dataset, 'noise': noise,
               **summarize(rs)}
        p = PAPER.get((model, dataset)) if not noise else None
        row['paper'] = p
        row['official'] = OFFICIAL_HERE.get((model, dataset)) \
            if not noise else None
        rows.append(row)
    return rows


def render_quality(runs: List[Dict]) -> str:
    r"""The text of ``quality.md`` for ``runs``."""
    rows = summary_rows(runs)

    def ms(v):
        return '' if v is None else f'{v[0]:.4f} ± {v[1]:.4f}'

    def f(v):
        return '' if v is None else f'{v:.4f}'

    lines = [
        '# Quality benchmark',
        '',
        'Test metrics of the **validation-selected** epoch (mean ± std over '
        'seeds; early stopping on validation Recall@20), and the test '
        'Recall/NDCG@20 of the best *test* epoch (the DiffMM paper\'s '
        'protocol, which leaks the test set; shown only for comparison with '
        'papers). Paper numbers: DiffMM Table 1 (best-test-epoch protocol), '
        'LD4MRec Table 2. "Official code here": HKUDS/DiffMM run on this '
        'machine with the README\'s TikTok command line and the same two '
        'modalities (image + audio; seed 421; best test epoch).',
        '',
        'Rebuilt from every run in `benchmarks/results/quality_runs/` (each '
        'file records its command, machine and date) by '
        '`python benchmarks/quality.py --report-only`.',
        '',
        '| model | dataset | noise | seeds | R@10 | N@10 | P@10 | R@20 | '
        'N@20 | P@20 | best-test-epoch R@20 / N@20 | official code here, '
        'best-test-epoch R@20 / N@20 | paper R@20 / N@20 (source) | epochs '
        '| best epoch | s/epoch |',
        '|' + '---|' * 16,
    ]
    for r in rows:
        p = r['paper']
        ptxt = f'{p[1]:.4f} / {p[2]:.4f} ({p[0]})' if p else ''
        o = r['official']
        otxt = f'{o[0]:.4f} / {o[1]:.4f}' if o else ''
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['noise']:g} | "
            f"{r['seeds']} | " +
            ' | '.join(ms(r[k]) for k in METRICS) +
            f" | {f(r['besttest_recall@20'])} / {f(r['besttest_ndcg@20'])}"
            f" | {otxt} | {ptxt} | {r['epochs']:.0f} | {r['best_epoch']:.0f} | "
            f"{r['s_per_epoch']:.2f} |")
    lines += seed_table(runs)
    machines = sorted({r['machine'] for r in runs})
    dates = sorted(r['date'] for r in runs)
    lines += ['', f'Machines: {"; ".join(machines)}.',
              f'Runs dated {dates[0]} to {dates[-1]}.' if dates else '']
    return '\n'.join(lines) + '\n'


def write_quality_csv(runs: List[Dict], path: Path) -> None:
    with open(path, 'w', newline='') as fh:
        w = csv.writer(fh)
        w.writerow(['model', 'dataset', 'noise', 'seeds'] +
                   [f'{k}_mean' for k in METRICS] +
                   [f'{k}_std' for k in METRICS] +
                   ['best_test_epoch_recall@20', 'best_test_epoch_ndcg@20',
                    'paper_recall@20', 'paper_ndcg@20', 'epochs',
                    'best_epoch', 'seconds_per_epoch'])
        for r in summary_rows(runs):
            p = r['paper']
            w.writerow([r['model'], r['dataset'], r['noise'], r['seeds']] +
                       [r[k][0] if r[k] else '' for k in METRICS] +
                       [r[k][1] if r[k] else '' for k in METRICS] +
                       [r['besttest_recall@20'], r['besttest_ndcg@20'],
                        p[1] if p else '', p[2] if p else '', r['epochs'],
                        r['best_epoch'], r['s_per_epoch']])


def report() -> None:
    runs = load_runs()
    (RESULTS / 'quality.md').write_text(render_quality(runs))
    write_quality_csv(runs, RESULTS / 'quality.csv')
    ablation_report(runs)
    print((RESULTS / 'quality.md').read_text())


def readme_label(name: str, note: str, seeds: Dict[str, int]) -> str:
    r"""``'DiffMM (float32, 7 seeds)'``; with different numbers of runs per
    dataset ``'LightGCN (TikTok: 3 seeds; Baby, Sports: 1 seed)'``."""
    def n_seeds(n):
        return f"{n} seed{'s' if n != 1 else ''}"
    titles = dict(README_COLUMNS)
    if len(set(seeds.values())) == 1:
        count = n_seeds(next(iter(seeds.values())))
    else:
        by_n: Dict[int, List[str]] = {}
        for d, _ in README_COLUMNS:
            if d in seeds:
                by_n.setdefault(seeds[d], []).append(titles[d].split()[0])
        count = '; '.join(f"{', '.join(ds)}: {n_seeds(n)}"
                          for n, ds in by_n.items())
    if not note:
        return f'{name} ({count})'
    sep = '; ' if ';' in note or ';' in count else ', '
    return f'{name} ({note}{sep}{count})'


def readme_table(runs: List[Dict]) -> List[str]:
    r"""The README's "Results so far" table (Recall@20 / NDCG@20 of the
    validation-selected epoch, means over all stored seeds) as markdown
    lines."""
    groups = group_runs(runs)
    lines = ['| model | ' + ' | '.join(t for _, t in README_COLUMNS) +
             f' | {README_BEST_TEST} | reference |',
             '|' + '---|' * (len(README_COLUMNS) + 3)]
    for name, note, cells, reference in README_ROWS:
        row = {d: summarize(groups[(m, d, 0.0)]) for d, m in cells.items()}
        seeds = {d: r['seeds'] for d, r in row.items()}
        text = []
        for d, _ in README_COLUMNS:
            r = row.get(d)
            text.append('—' if r is None else
                        f"{r['recall@20'][0]:.4f} / {r['ndcg@20'][0]:.4f}")
        t = row.get('tiktok')
        best = ('—' if t is None or t['besttest_recall@20'] is None else
                f"{t['besttest_recall@20']:.4f} / "
                f"{t['besttest_ndcg@20']:.4f}")
        lines.append(f'| {readme_label(name, note, seeds)} | ' +
                     ' | '.join(text) + f' | {best} | {reference} |')
    return lines


def same_budget(a: Dict, b: Dict) -> bool:
    r"""Whether two runs selected their epochs from the same budget: the
    same epoch cap, and the same patience unless neither stopped early
    (then both chose among the same epochs)."""
    cap_a = a.get('config', {}).get('epochs')
    cap_b = b.get('config', {}).get('epochs')
    if cap_a != cap_b:
        return False
    return (a.get('config', {}).get('patience') ==
            b.get('config', {}).get('patience')
            or a['metrics'].get('epochs_run') ==
            b['metrics'].get('epochs_run') == cap_a)


def paired_line(ref: str, model: str, sel: List[Dict]) -> str:
    r"""``model`` against ``ref`` on the seeds both ran with the same epoch
    budget: the mean per-seed difference of Recall@20 under each protocol,
    its standard error and on how many seeds ``model`` is lower.  Empty
    below two paired seeds."""
    by_seed = {r['seed']: r for r in sel if r['model'] == ref}
    pairs = [(by_seed[r['seed']], r) for r in sel
             if r['model'] == model and r['seed'] in by_seed
             and same_budget(r, by_seed[r['seed']])]
    parts = []
    for key, label in (('best_test_epoch/recall@20', 'best-test-epoch'),
                       ('test/recall@20', 'validation-selected')):
        d = [b['metrics'][key] - a['metrics'][key] for a, b in pairs
             if key in a['metrics'] and key in b['metrics']]
        if len(d) < 2:
            continue
        se = statistics.stdev(d) / len(d) ** 0.5
        parts.append(f'{label} R@20 {statistics.mean(d):+.4f} (standard '
                     f'error {se:.4f}; lower on {sum(x < 0 for x in d)} of '
                     f'{len(d)} seeds)')
    if not parts:
        return ''
    seeds = ', '.join(str(a['seed']) for a, _ in pairs)
    return (f'  Paired with {ref} on seeds {seeds} (same seed, same epoch '
            f'budget), the per-seed change: ' + '; '.join(parts) + '.')


#: (models, dataset) whose runs are listed seed by seed under the table
SEED_TABLES = [(('diffmm', 'diffmm-bf16', 'diffmm-bf16-denoiser',
                 'diffmm-bf16-plaintopk', 'diffmm-rebuild5'), 'tiktok')]


def seed_table(runs: List[Dict]) -> List[str]:
    r"""Per-seed lines (both protocols) for the models of
    :data:`SEED_TABLES`, with the mean best-test-epoch Recall@20."""
    out = []
    for models, dataset in SEED_TABLES:
        sel = sorted((r for r in runs if r['model'] in models and
                      r['dataset'] == dataset and not r.get('noise')),
                     key=lambda r: (models.index(r['model']), r['seed']))
        if not sel:
            continue
        out += ['', f'### {", ".join(models)} on {dataset}, seed by seed', '',
                '| model | seed | val-selected test R@20 / N@20 (epoch) | '
                'best-test-epoch R@20 / N@20 (epoch) | epochs run | '
                'patience |', '|---|---|---|---|---|---|']
        for r in sel:
            m = r['metrics']

            def pair(prefix, epoch_key):
                if f'{prefix}/recall@20' not in m:
                    return '—'
                return (f"{m[f'{prefix}/recall@20']:.4f} / "
                        f"{m.get(f'{prefix}/ndcg@20', float('nan')):.4f} "
                        f"({m.get(epoch_key, '?')})")
            out.append(f"| {r['model']} | {r['seed']} | "
                       f"{pair('test', 'best_epoch')} | "
                       f"{pair('best_test_epoch', 'best_test_epoch')} | "
                       f"{m.get('epochs_run', '?')} | "
                       f"{r.get('config', {}).get('patience')} |")
        for model in models:
            vals = [r['metrics']['best_test_epoch/recall@20'] for r in sel
                    if r['model'] == model and
                    'best_test_epoch/recall@20' in r['metrics']]
            if len(vals) > 1:
                sd = statistics.stdev(vals)
                line = (f'\n{model}: mean best-test-epoch R@20 '
                        f'{statistics.mean(vals):.4f} over {len(vals)} '
                        f'seeds (sample std {sd:.4f}, standard error '
                        f'{sd / len(vals) ** 0.5:.4f}).')
                if len(vals) > 3:  # sel is sorted by seed
                    line += (f'  Over the first 3 seeds (the 3-seed '
                             f'target): {statistics.mean(vals[:3]):.4f}.')
                ref = OFFICIAL_HERE.get((model, dataset))
                if ref is not None and sd > 0:
                    line += (f'  The official code\'s single run here '
                             f'({ref[0]:.4f}) lies '
                             f'{(ref[0] - statistics.mean(vals)) / sd:+.1f} '
                             f'sample std from this mean; '
                             f'{sum(v >= ref[0] for v in vals)} of '
                             f'{len(vals)} seeds reach it.')
                if model != models[0]:
                    line += paired_line(models[0], model, sel)
                out.append(line)
        out += ['', 'Patience 0: no early stopping, all 50 epochs of the '
                'official command, whose best-test-epoch protocol searches '
                'all of them.  The float32 seeds 1 and 2 first ran with '
                'patience 20 (stopped after 47 and 36 epochs) and were '
                'resumed from their checkpoints to 50 (`--force --set '
                'patience=0`); their selections did not change, and their '
                'recorded wall time covers only the resumed part.']
        if any(r['model'] == 'diffmm-rebuild5' for r in sel):
            out += ['', '`diffmm-rebuild5` is float32 DiffMM with '
                    '`rebuild_k=5` instead of 1: the `Params.py` of the '
                    'official code as stored in our reference index '
                    '(HKUDS/DiffMM, commits 1337447 and 685ca3a) defaults '
                    'to `--rebuild_k 5`, while docs/algorithms.md (§2.9) and '
                    'the DiffMM-derived repositories we found have 1. The '
                    'README command line does not set it, so which one the '
                    'official run here used depends on the checkout; this '
                    'variant measures the other reading.']
    return out


#: full model -> [(ablated variant, what it removes)]; the ablation table
#: compares runs with the same dataset and seed.
ABLATIONS = {
    'diffmm-bf16': [
        ('diffmm-bf16-no-modal-graphs',
         'w/o modality-aware graphs (no diffusion, no regeneration)'),
        ('diffmm-bf16-no-contrastive', 'w/o cross-modal contrastive loss'),
        ('diffmm-bf16-no-msi', 'w/o modality-aware signal injection'),
    ],
}


def capped_notes(base: Dict, variants: List[tuple],
                 names=('variants', 'full model')) -> List[str]:
    r"""When the variants ran fewer epochs than the full model, compare
    them with the full model's selection within the same epoch budget."""
    out = []
    for cap in sorted({int(r['config'].get('epochs', 0))
                       for _, r in variants}):
        if not cap or cap >= base['metrics']['epochs_run']:
            continue
        c = capped(base, cap)
        if c is None:
            continue
        ref = c['test/recall@20']
        changes = ', '.join(
            f"{v} {100 * (r['metrics']['test/recall@20'] / ref - 1):+.1f} %"
            for v, r in variants if int(r['config'].get('epochs', 0)) == cap)
        out.append(
            f"{base['dataset']}, seed {base['seed']}: the {names[0]} ran at "
            f"most {cap} epochs; within its first {cap} epochs the {names[1]} "
            f"selects epoch {c['epoch']} (val R@20 "
            f"{c['val/recall@20']:.4f}), test R@20 "
            f"{c['test/recall@20']:.4f} / N@20 {c['test/ndcg@20']:.4f}; "
            f"changes of R@20 relative to that: {changes}.")
    return out


def ablation_report(runs: List[Dict]) -> None:
    text = render_ablation(runs)
    if text is not None:
        (RESULTS / 'ablation.md').write_text(text)


def render_ablation(runs: List[Dict]) -> Optional[str]:
    r"""The text of ``ablation.md`` for ``runs`` (:obj:`None` without
    ablation runs)."""
    by = {(r['model'], r['dataset'], r['seed'], r.get('noise', 0.0)): r
          for r in runs}
    lines = ['# Ablations', '',
             'Test metrics of the validation-selected epoch for each '
             'variant and the same seed as the full model; the change of '
             'Recall@20 relative to the full model. Runs and their commands '
             'are in `quality_runs/`.', '',
             '| dataset | seed | variant | R@20 | N@20 | P@20 | '
             'best-test-epoch R@20 | epochs | best epoch | change of R@20 |',
             '|' + '---|' * 10]
    n, notes = 0, []
    for full, variants in ABLATIONS.items():
        for (m, d, seed, noise), base in sorted(by.items()):
            if m != full or noise:
                continue
            b20 = base['metrics']['test/recall@20']
            rows = [(full + ' (full)', base, None)]
            rows += [(f'{v}: {what}', by[(v, d, seed, 0.0)],
                      by[(v, d, seed, 0.0)]['metrics']['test/recall@20'] /
                      b20 - 1.0)
                     for v, what in variants if (v, d, seed, 0.0) in by]
            if len(rows) == 1:
                continue
            notes += capped_notes(base, [(v, by[(v, d, seed, 0.0)])
                                         for v, _ in variants
                                         if (v, d, seed, 0.0) in by])
            for name, r, ch in rows:
                mt = r['metrics']
                lines.append(
                    f"| {d} | {seed} | {name} | {mt['test/recall@20']:.4f} | "
                    f"{mt['test/ndcg@20']:.4f} | "
                    f"{mt['test/precision@20']:.4f} | "
                    f"{mt.get('best_test_epoch/recall@20', float('nan')):.4f}"
                    f" | {mt['epochs_run']} | {mt['best_epoch']} | "
                    f"{'' if ch is None else f'{100 * ch:+.1f} %'} |")
                n += 1
    if n:
        lines += [''] + [f'- {t}' for t in notes]
        summary = ablation_summary(by)
        if summary:  # before the per-seed table (its header is lines[4])
            lines[4:4] = ['## Over seeds', ''] + summary + [
                '## Seed by seed', '']
        return '\n'.join(lines) + '\n'
    return None


def ablation_summary(by: Dict[tuple, Dict]) -> List[str]:
    r"""Mean ± std over seeds of each ablated variant and of the full model
    on the same seeds, with the per-seed (paired) change of the
    validation-selected test Recall@20 averaged over seeds, and on how many
    seeds the variant falls below the full model.  Only runs with the same
    epoch budget as the full model are paired (same cap; same patience, or
    neither stopped early).  Empty unless some variant
    has at least two paired seeds."""
    def ms(vals):
        return (f'{statistics.mean(vals):.4f} ± {statistics.pstdev(vals):.4f}'
                if vals else '')

    out = []
    for full, variants in ABLATIONS.items():
        datasets = sorted({d for (m, d, _, noise) in by
                           if m == full and not noise})
        for d in datasets:
            rows = []
            for v, what in variants:
                pairs = [(by[(full, d, s, 0.0)], by[(v, d, s, 0.0)])
                         for (m, dd, s, noise) in sorted(by)
                         if m == v and dd == d and not noise
                         and (full, d, s, 0.0) in by
                         and same_budget(by[(v, d, s, 0.0)],
                                         by[(full, d, s, 0.0)])]
                if pairs:
                    rows.append((v, what, pairs))
            if not rows or max(len(p) for _, _, p in rows) < 2:
                continue
            out += [f'{d}: mean ± std (population) over the seeds on which '
                    f'both the variant and the full model ran with the same '
                    f'epoch budget; the change of R@20 is the mean of the '
                    f'per-seed (paired) changes.', '',
                    '| variant | seeds | R@20 | N@20 | best-test-epoch R@20 '
                    '| best-test-epoch N@20 | full model on those seeds, '
                    'R@20 | change of R@20 | seeds below full |',
                    '|' + '---|' * 9]
            for v, what, pairs in rows:
                def col(k, i):
                    return [p[i]['metrics'][k] for p in pairs
                            if k in p[i]['metrics']]
                ch = [p[1]['metrics']['test/recall@20'] /
                      p[0]['metrics']['test/recall@20'] - 1.0 for p in pairs]
                seeds = ', '.join(str(p[0]['seed']) for p in pairs)
                out.append(
                    f"| {v}: {what} | {seeds} | "
                    f"{ms(col('test/recall@20', 1))} | "
                    f"{ms(col('test/ndcg@20', 1))} | "
                    f"{ms(col('best_test_epoch/recall@20', 1))} | "
                    f"{ms(col('best_test_epoch/ndcg@20', 1))} | "
                    f"{ms(col('test/recall@20', 0))} | "
                    f"{100 * statistics.mean(ch):+.1f} % | "
                    f"{sum(c < 0 for c in ch)} of {len(ch)} |")
            out.append('')
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--models', nargs='+', default=['lightgcn'])
    ap.add_argument('--datasets', nargs='+', default=['synthetic'])
    ap.add_argument('--seeds', nargs='+', type=int, default=[0])
    ap.add_argument('--root', default=None)
    ap.add_argument('--device', default='auto')
    ap.add_argument('--noise', type=float, default=0.0)
    ap.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE')
    ap.add_argument('--variant', default=None,
                    help='name stored for the model (e.g. ld4mrec-wobg)')
    ap.add_argument('--force', action='store_true',
                    help='re-run cells that already have a stored result')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--report-only', action='store_true')
    ap.add_argument('--readme-table', action='store_true',
                    help='print the README "Results so far" table built '
                         'from the stored runs and exit (writes nothing)')
    args = ap.parse_args(argv)
    if args.readme_table:
        print('\n'.join(readme_table(load_runs())))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    RUNS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        from mmdiff.train.config import parse_overrides
        overrides = parse_overrides(args.set)
        for dataset in args.datasets:
            for model in args.models:
                for seed in args.seeds:
                    name = args.variant or model
                    path = RUNS / f'{tag_of(name, dataset, seed, args.noise)}.json'
                    if path.exists() and not args.force:
                        print(f'skip {path.name} (exists)')
                        continue
                    rec = run_one(model, dataset, seed, args.root,
                                  args.device, overrides, name, args.noise)
                    path.write_text(json.dumps(rec, indent=1))
                    print(f"{path.name}: test R@20 "
                          f"{rec['metrics']['test/recall@20']:.4f}", flush=True)
    report()
    return 0


if __name__ == '__main__':
    sys.exit(main())
