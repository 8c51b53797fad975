r"""Noisy-training benchmark (LD4MRec protocol, docs/algorithms.md §3.1 / D22).

Adds 0 %, 10 % and 20 % uniformly random unobserved interactions to the
training and validation splits (test stays clean, seeded), trains every model
through the same code path as ``mmdiff train`` and reports how much of its
clean Recall@20 each model keeps.  Runs are stored with the quality runs
(``benchmarks/results/quality_runs/<model>-<dataset>-noise<r>-seed<s>.json``);
this script writes ``benchmarks/results/noisy.md``, ``noisy.csv`` and, when
matplotlib is installed, ``noisy.png``.

Example::

    python benchmarks/noisy.py --models lightgcn diffmm ld4mrec \
        --dataset tiktok --root ../shared/data --ratios 0 0.1 0.2 --seeds 0
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--models', nargs='+',
                    default=['lightgcn', 'diffmm', 'ld4mrec'])
    ap.add_argument('--dataset', default='tiktok')
    ap.add_argument('--root', default=None)
    ap.add_argument('--ratios', nargs='+', type=float, default=[0, 0.1, 0.2])
    ap.add_argument('--seeds', nargs='+', type=int, default=[0])
    ap.add_argument('--device', default='auto')
    ap.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE')
    ap.add_argument('--variant', nargs='+', default=[], metavar='MODEL=NAME',
                    help='store MODEL under NAME (e.g. diffmm=diffmm-bf16 '
                         'together with --set for that variant)')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--report-only', action='store_true')
    args = ap.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    names = dict(v.split('=', 1) for v in args.variant)
    quality.RUNS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        from mmdiff.train.config import parse_overrides
        ov = parse_overrides(args.set)
        for ratio in args.ratios:
            for model in args.models:
                for seed in args.seeds:
                    name = names.get(model, model)
                    path = quality.RUNS / (
                        quality.tag_of(name, args.dataset, seed, ratio) +
                        '.json')
                    if path.exists():
                        print(f'skip {path.name}')
                        continue
                    rec = quality.run_one(model, args.dataset, seed,
                                          args.root, args.device, ov, name,
                                          noise=ratio)
                    path.write_text(json.dumps(rec, indent=1))
    report([names.get(m, m) for m in args.models], args.dataset,
           args.ratios, args.seeds)
    return 0


def report(models, dataset, ratios, seeds=None) -> None:
    runs = [json.loads(p.read_text())
            for p in sorted(quality.RUNS.glob(f'*-{dataset}*.json'))]
    table, nusers, used = {}, {}, []
    for r in runs:
        if (r['model'] in models and r['dataset'] == dataset
                and (seeds is None or r['seed'] in seeds)
                and float(r.get('noise', 0.0)) in map(float, ratios)):
            key = (r['model'], float(r.get('noise', 0.0)))
            table.setdefault(key, []).append(r['metrics']['test/recall@20'])
            nusers[key] = r['metrics'].get('test/num_users', 0)
            used.append(r)
    lines = ['# Noisy training', '',
             f'Dataset: {dataset}. Random unobserved interactions added to '
             'train and validation (8:1), test clean; test Recall@20 of the '
             'validation-selected epoch (mean over seeds) and the share of '
             'the clean Recall@20 that is kept.', '',
             'Command: `python benchmarks/noisy.py ' + ' '.join(
                 sys.argv[1:]) + '`', '',
             '| model | ' + ' | '.join(f'noise {r:g}' for r in ratios) +
             ' | ' + ' | '.join(f'kept at {r:g}' for r in ratios if r) + ' |',
             '|---|' + '---|' * (len(ratios) + len([r for r in ratios if r]))]
    rows = []
    for m in models:
        means = {r: statistics.mean(table[(m, float(r))])
                 for r in ratios if (m, float(r)) in table}
        clean = means.get(0.0)
        kept = {r: (means[r] / clean if clean and r in means else None)
                for r in ratios if r}
        rows.append((m, means, kept))
        lines.append(f'| {m} | ' + ' | '.join(
            f'{means[r]:.4f}' if r in means else '' for r in ratios) + ' | ' +
            ' | '.join(f'{100 * v:.1f} %' if v is not None else ''
                       for v in kept.values()) + ' |')
    se = [f'{m} at noise {r:g}: ±{(v * (1 - v) / n) ** 0.5:.4f}'
          for (m, r), v, n in sorted(
              ((k, statistics.mean(vs), nusers[k]) for k, vs in table.items()
               if k in nusers and k[0] in models), key=str)
          if n and r == 0]
    lines += ['', 'Binomial standard error of a clean Recall@20 (most test '
              'users hold one item): ' + '; '.join(se) + '. Differences '
              'smaller than about two of these are within seed noise.', '',
              'Runs (each JSON in `quality_runs/` has the full config):', '']
    # Noisy runs capped at fewer epochs than their clean run: compare them
    # with the clean run's selection within the same epoch budget too.
    capped = []
    for m in models:
        clean = [r for r in used if r['model'] == m and not r.get('noise')]
        if len(clean) == 1:
            capped += quality.capped_notes(clean[0], [
                (f"{m} noise {r['noise']:g}", r) for r in used
                if r['model'] == m and r.get('noise')],
                names=('noisy runs', 'clean run'))
    if capped:
        lines[-2:-2] = [f'- {t}' for t in capped] + ['']
    for r in sorted(used, key=lambda r: (r['model'], r.get('noise', 0))):
        mt = r['metrics']
        lines.append(f"- {r['model']} noise {r.get('noise', 0):g} seed "
                     f"{r['seed']}: {mt['epochs_run']} epochs (best "
                     f"{mt['best_epoch']}), `{r['command']}`")
    out = quality.RESULTS
    (out / 'noisy.md').write_text('\n'.join(lines) + '\n')
    with open(out / 'noisy.csv', 'w', newline='') as fh:
        w = csv.writer(fh)
        w.writerow(['model', 'noise', 'recall@20', 'kept'])
        for m, means, kept in rows:
            for r, v in means.items():
                w.writerow([m, r, v, kept.get(r, 1.0 if r == 0 else '')])
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m, means, _ in rows:
            if 0.0 in means:
                xs = sorted(means)
                ax.plot([100 * x for x in xs],
                        [means[x] / means[0.0] for x in xs], marker='o',
                        label=m)
        ax.set_xlabel('added noise (% of interactions)')
        ax.set_ylabel('share of clean Recall@20 kept')
        ax.set_title(f'Noisy training on {dataset}')
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / 'noisy.png', dpi=120)
    except ImportError:
        print('matplotlib not installed: no plot written')
    print((out / 'noisy.md').read_text())


if __name__ == '__main__':
    sys.exit(main())
