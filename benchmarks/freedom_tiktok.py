r"""FREEDOM (``examples/freedom.py``, a user's own model registered with
``register_model``) on TikTok (image + audio) beside LightGCN and DiffMM:
does diffusion beat a strong non-diffusion multimodal model here?

Every seed is trained through :func:`mmdiff.train.run.train_run` (the code
path of ``mmdiff train`` and ``benchmarks/quality.py``) with early stopping
on validation Recall@20, and stored as
``benchmarks/results/freedom_runs/freedom-tiktok-seed<s>.json``;
``benchmarks/results/freedom_tiktok.md`` is rebuilt from those records and
the LightGCN / DiffMM (float32) records of ``results/quality_runs/``
(loaded and summarised with ``quality.load_runs`` / ``quality.summarize``).

    python benchmarks/freedom_tiktok.py --root ../shared/data --seeds 0 1 2 \
        --threads 1
    python benchmarks/freedom_tiktok.py --root ../shared/data --seeds 0 \
        --threads 1 --set dropout=0.9 reg_weight=1e-3   # a grid point
    python benchmarks/freedom_tiktok.py --report-only

Grid points (``--set``) are stored under ``freedom_runs/grid/``; the report
adds the point with the best seed-0 validation Recall@20 beside the prior
choice and answers with it once it has as many seeds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality  # noqa: E402

RUNS = HERE / 'results' / 'freedom_runs'
OUT = HERE / 'results' / 'freedom_tiktok.md'
EXAMPLE = HERE.parent / 'examples' / 'freedom.py'
#: the comparison models in quality_runs/ (validation-selected records)
OTHERS = (('lightgcn', 'LightGCN'), ('diffmm', 'DiffMM (float32)'))


def load_example():
    r"""Imports ``examples/freedom.py`` (registering ``'freedom'``)."""
    spec = importlib.util.spec_from_file_location('freedom_example', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variant_of(overrides: Dict) -> str:
    # 'freedom', or e.g. 'freedom-dropout0.9-reg_weight0.001' for a run with
    # overrides (a grid point, stored under freedom_runs/grid/)
    return '-'.join(['freedom'] + [f'{k}{v}' for k, v in
                                   sorted(overrides.items())])


def run_seed(seed: int, root: str, device: str, epochs: int,
             overrides: Dict = None) -> Dict:
    from mmdiff.train.run import train_run
    overrides = overrides or {}
    cfg = dict(load_example().CONFIG, **overrides)
    if epochs:
        cfg['epochs'] = epochs
    variant = variant_of(overrides)
    out = HERE.parent / 'runs' / 'freedom' / f'{variant}-tiktok-seed{seed}'
    resume = (out / 'checkpoint.pt').exists()
    t0 = time.time()
    result, _, _ = train_run('freedom', 'tiktok', root=root, seed=seed,
                             device=device, cfg=cfg, out=str(out),
                             resume=resume,
                             log=lambda s: print(s, flush=True))
    return {'model': variant, 'dataset': 'tiktok', 'seed': seed,
            'noise': 0.0, 'config': cfg, 'metrics': result.metrics_dict(),
            'history': quality.compact_history(out),
            'wall_seconds': time.time() - t0, 'command': ' '.join(sys.argv),
            'machine': quality.machine(),
            'date': dt.datetime.now().isoformat(timespec='seconds')}


def _ms(vals: List[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else float('nan')
    return f'{statistics.mean(vals):.4f} ± {sd:.4f}'


def paired(a: List[Dict], b: List[Dict], key='test/recall@20'):
    r"""Per-seed differences ``b - a`` on the seeds both have."""
    by = {r['seed']: r for r in a}
    return [(r['seed'], r['metrics'][key] - by[r['seed']]['metrics'][key])
            for r in sorted(b, key=lambda r: r['seed']) if r['seed'] in by]


def _label(cfg: Dict) -> str:
    return (f"FREEDOM (dropout {cfg['dropout']:g}, reg_weight "
            f"{cfg['reg_weight']:g})")


def _short(label: str) -> str:
    return label.split('), ')[0] + ')' if '), ' in label else label


def selected_point(freedom: List[Dict], grid: List[Dict]) -> List[Dict]:
    r"""The runs of the grid point with the best validation Recall@20 on
    seed 0 (our prior choice included), all seeds of it."""
    seed0 = [r for r in freedom + grid if r['seed'] == 0]
    if not seed0:
        return freedom
    best = max(seed0, key=lambda r: r['metrics']['val/recall@20'])
    return sorted((r for r in freedom + grid if r['model'] == best['model']),
                  key=lambda r: r['seed'])


def _pairs(label, rs, others, lines):
    out = {}
    for m, other in OTHERS:
        for key, name in (('test/recall@20', 'R@20'),
                          ('test/ndcg@20', 'N@20')):
            d = paired(others[m], rs, key)
            if not d:
                continue
            vals = [x for _, x in d]
            se = (statistics.stdev(vals) / len(vals) ** 0.5
                  if len(vals) > 1 else float('nan'))
            lines.append(
                f"- {label} − {other}, {name}, seeds "
                f"{', '.join(str(s) for s, _ in d)}: mean "
                f"{statistics.mean(vals):+.4f} (standard error {se:.4f}; "
                f"FREEDOM higher on {sum(x > 0 for x in vals)} of "
                f"{len(vals)} seeds).")
            if key == 'test/recall@20':
                out[m] = (statistics.mean(vals), se, len(vals))
    return out


def render(freedom: List[Dict], others: Dict[str, List[Dict]],
           grid: List[Dict] = ()) -> str:
    grid = list(grid)
    freedom = sorted(freedom, key=lambda r: r['seed'])
    f0 = freedom[0]
    sel = selected_point(freedom, grid)
    ran = sorted(freedom + [r for r in sel if r not in freedom],
                 key=lambda r: r['date'])
    lines = [
        '# FREEDOM beside LightGCN and DiffMM on TikTok (image + audio)', '',
        'FREEDOM (Zhou & Shen, ACM MM 2023) as written in '
        '`examples/freedom.py`: a `Recommender` registered with '
        '`register_model`, built from `mmdiff.graph.knn_graph` / '
        '`normalize_knn_graph` / `degree_sensitive_prune` and '
        '`NormalizedPropagation`. Test metrics of the validation-selected '
        'epoch (early stopping on validation Recall@20, patience '
        f"{f0['config']['patience']}), through `train_run`, the code path "
        'of `mmdiff train` and `benchmarks/quality.py`.', '',
        'Commands: ' + ', '.join(
            f'`python {c}`' for c in sorted({r['command'] for r in ran}))
        + '  ',
        f"Machine: {'; '.join(sorted({r['machine'] for r in ran}))}  ",
        f"Dates: {ran[0]['date']} to {ran[-1]['date']}", '',
        'Hyper-parameters: the official FREEDOM/MMRec settings '
        '(`FREEDOM.yaml`, `overall.yaml`): embedding 64, kNN k = 10 (the '
        'item itself included, as the official top-k of the full '
        'similarity matrix does), image weight 0.1, 1 item-item layer, 2 '
        'user-item layers, lr 1e-3, batch 2048, patience 20, at most 1000 '
        'epochs. TikTok has image and audio features: the image graph gets '
        'weight 0.1 and audio the 0.9 that the official code gives to text '
        '(our choice). The official code grid-searches dropout in {0.8, 0.9} '
        'and reg_weight in {0, 1e-5, 1e-4, 1e-3} per dataset and publishes '
        'no TikTok values: we first ran **dropout 0.8, reg_weight 1e-4** '
        f'(our prior choice, {len(freedom)} seeds), then '
        f"{len([r for r in grid if r['seed'] == 0])} more grid points on "
        'seed 0 (table at the end), and ran the grid point with the best '
        'seed-0 validation Recall@20 on the other seeds too.', '',
        f"Prior choice: `{json.dumps(f0['config'])}`", '',
        '## Per seed', '',
        '| model | seed | R@20 | N@20 | best epoch | epochs run | s/epoch |',
        '|---|---|---|---|---|---|---|']
    rows = [(_label(f0['config']) + ', prior choice', freedom)]
    if sel is not freedom:
        rows.append((_label(sel[0]['config']) + ', best validation R@20 '
                     'of the grid on seed 0', sel))
    rows += [(label, others[m]) for m, label in OTHERS]
    for label, rs in rows:
        for r in sorted(rs, key=lambda r: r['seed']):
            m = r['metrics']
            lines.append(f"| {label} | {r['seed']} | "
                         f"{m['test/recall@20']:.4f} | "
                         f"{m['test/ndcg@20']:.4f} | {m['best_epoch']} | "
                         f"{m['epochs_run']} | "
                         f"{m['seconds_per_epoch']:.2f} |")
    lines += ['', '## Mean ± sample std over seeds', '',
              '| model | seeds | R@20 | N@20 | epochs run | s/epoch |',
              '|---|---|---|---|---|---|']
    for label, rs in rows:
        s = quality.summarize(rs)
        seeds = ', '.join(str(r['seed']) for r in
                          sorted(rs, key=lambda r: r['seed']))
        lines.append(
            f"| {label} | {seeds} | "
            f"{_ms([r['metrics']['test/recall@20'] for r in rs])} | "
            f"{_ms([r['metrics']['test/ndcg@20'] for r in rs])} | "
            f"{s['epochs']:.0f} | {s['s_per_epoch']:.2f} |")
    lines += ['', 'LightGCN and DiffMM are the records of earlier runs of '
              'the same code on the same split (`quality_runs/lightgcn-'
              'tiktok-seed*.json`, `diffmm-tiktok-seed*.json`, read with '
              '`quality.load_runs`; all their seeds, each validation-selected)'
              '; `tests/test_golden.py` guards that the code still gives the '
              'same numbers. Epoch budgets (cap/patience) as recorded: ' +
              '; '.join(f'{_short(label)} ' + ', '.join(sorted({
                  f"{r['config'].get('epochs')}/{r['config'].get('patience')}"
                  for r in rs})) for label, rs in rows) +
              ' (DiffMM: the 50 epochs of the official command). s/epoch is '
              'the training time per epoch as recorded, under whatever else '
              'ran on the machine (the FREEDOM seeds ran two at a time on 2 '
              'cores, one thread each); it is not a speed comparison.',
              '', '## Paired by seed', '']
    verdicts = [_pairs(_short(label), rs, others, lines)
                for label, rs in rows[:1 + (sel is not freedom)]]
    # the answer uses the validation-selected grid point once it has as
    # many seeds as the prior choice
    use = 1 if sel is not freedom and len(sel) >= len(freedom) else 0
    v, name = verdicts[use], _short(rows[use][0])
    if 'diffmm' in v:
        mean, se, n = v['diffmm']
        beats = mean < 0
        clear = abs(mean) > 2 * se if se == se else False
        lgn = v.get('lightgcn')
        over_lgn = ('' if lgn is None else
                    f", while FREEDOM's is {abs(lgn[0]):.4f} "
                    f"{'above' if lgn[0] > 0 else 'below'} LightGCN's")
        lines += ['', '**Answer.** ' + (
            f"{'Yes' if beats and clear else 'No' if clear else 'Not clearly'}"
            f": on TikTok (image + audio) DiffMM's validation-selected test "
            f"Recall@20 is {'above' if beats else 'below'} that of {name} by "
            f"{abs(mean):.4f} on average over {n} paired seed"
            f"{'s' if n != 1 else ''} ("
            f"{'more' if clear else 'less'} than two standard errors"
            f"{'' if se == se else ', one seed only'}){over_lgn}, so "
            + ('diffusion beats this strong non-diffusion multimodal model '
               'here.' if beats and clear else
               'the non-diffusion FREEDOM is better than diffusion here.'
               if clear else
               'the diffusion model is not clearly better than this strong '
               'non-diffusion multimodal model here.'))]
    if grid:
        done = {(r['config']['dropout'], r['config']['reg_weight'])
                for r in grid + freedom if r['seed'] == 0}
        missing = [f'{d:g}/{w:g}' for d in (0.8, 0.9)
                   for w in (0.0, 1e-5, 1e-4, 1e-3) if (d, w) not in done]
        lines += ['', '## The grid on seed 0', '',
                  'Points of the official grid on seed 0, same protocol '
                  '(the selection above is by the validation column)' +
                  (f"; not run (time box): dropout/reg_weight "
                   f"{', '.join(missing)}" if missing else '') + '.', '',
                  '| dropout | reg_weight | val R@20 (selected epoch) | '
                  'test R@20 | test N@20 | best epoch | epochs run |',
                  '|---|---|---|---|---|---|---|']
        for r in sorted((r for r in grid + freedom if r['seed'] == 0),
                        key=lambda r: (r['config']['dropout'],
                                       r['config']['reg_weight'])):
            m = r['metrics']
            lines.append(f"| {r['config']['dropout']} | "
                         f"{r['config']['reg_weight']:g} | "
                         f"{m['val/recall@20']:.4f} | "
                         f"{m['test/recall@20']:.4f} | "
                         f"{m['test/ndcg@20']:.4f} | {m['best_epoch']} | "
                         f"{m['epochs_run']} |")
    for label, rs in rows[:2]:
        if len(rs) < 3:
            lines += ['', f'{label}: only {len(rs)} seed(s) finished in the '
                      'time box of this run; rerunning the command adds the '
                      'others (finished seeds are skipped).']
    return '\n'.join(lines) + '\n'


def report() -> str:
    freedom = quality.load_runs(RUNS)
    groups = quality.group_runs(quality.load_runs())
    others = {m: groups.get((m, 'tiktok', 0.0), []) for m, _ in OTHERS}
    text = render(freedom, others, quality.load_runs(RUNS / 'grid'))
    OUT.write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--root', default=None)
    ap.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--epochs', type=int, default=0,
                    help='epoch cap (default: the configuration, 1000)')
    ap.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                    help='override hyper-parameters (a grid point; stored '
                         'under freedom_runs/grid/)')
    ap.add_argument('--force', action='store_true')
    ap.add_argument('--report-only', action='store_true')
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report_only:
        from mmdiff.train.config import parse_overrides
        load_example()
        overrides = parse_overrides(args.set)
        folder = RUNS / 'grid' if overrides else RUNS
        folder.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            path = folder / f'{variant_of(overrides)}-tiktok-seed{seed}.json'
            if path.exists() and not args.force:
                print(f'skip {path.name} (exists)')
                continue
            rec = run_seed(seed, args.root, args.device, args.epochs,
                           overrides)
            path.write_text(json.dumps(rec, indent=1))
            print(f"{path.name}: test R@20 "
                  f"{rec['metrics']['test/recall@20']:.4f}", flush=True)
    if list(RUNS.glob('*.json')):
        print(report())
    return 0


if __name__ == '__main__':
    sys.exit(main())
