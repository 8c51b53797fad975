r"""Benchmark several models over seeds on your own data: from a pandas
DataFrame of interactions and item feature arrays to a quality table.

It runs the code path of ``benchmarks/quality.py`` and ``mmdiff train``
(:func:`mmdiff.train.run.train_run` with each model's CLI preset) and
builds the table with quality.py's own helpers (``summarize``: mean and
population std over seeds of the test metrics of the validation-selected
epoch, the best-test-epoch Recall/NDCG@20, epochs, seconds per epoch).

    python examples/benchmark_own_data.py                      # synthetic
    python examples/benchmark_own_data.py --interactions my.csv \
        --features image=img.npy text=txt.npy --seeds 0 1 2 --epochs 100

``my.csv`` needs the columns ``user`` and ``item`` (any ids); feature
``.npy`` files hold one row per item in sorted item-id order.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd

from mmdiff.data import from_dataframe, make_synthetic
from mmdiff.data.hetero import describe, edge_index_of, get_modalities
from mmdiff.nn.models import get_model_class
from mmdiff.train.config import preset
from mmdiff.train.run import train_run

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')

BENCH = Path(__file__).resolve().parent.parent / 'benchmarks'
sys.path.insert(0, str(BENCH))
import quality  # noqa: E402  (benchmarks/quality.py: the table helpers)

#: per model, what makes the default run take seconds (merged over the
#: preset, exactly as ``--set`` would)
FAST = {'mf': {'embedding_dim': 16}, 'lightgcn': {'embedding_dim': 16},
        'diffmm': {'embedding_dim': 16, 'hidden_dims': [64],
                   'batch_size': 128},
        'ld4mrec': {'hidden_dim': 32, 'batch_size': 128},
        'diffrec': {'hidden_dims': [64], 'batch_size': 128}}


def example_frames(seed: int = 0):
    r"""A DataFrame of interactions with string ids, and feature arrays
    aligned to the sorted item ids (what you would load yourself)."""
    syn = make_synthetic(num_users=150, num_items=100, seed=seed,
                         modalities={'image': 16, 'text': 8})
    edges = np.concatenate([edge_index_of(syn, s).numpy()
                            for s in ('train', 'val', 'test')], axis=1)
    df = pd.DataFrame({'user': [f'u{u:04d}' for u in edges[0]],
                       'item': [f'i{i:04d}' for i in edges[1]]})
    feats = {m: x.numpy() for m, x in get_modalities(syn).items()}
    return df, feats


def run(df: pd.DataFrame, features: Dict[str, np.ndarray],
        models: List[str], seeds: List[int], epochs: int, name: str,
        fast: bool = True) -> List[Dict]:
    data = from_dataframe(df, features, seed=0)   # one split for all runs
    print(describe(data))
    records = []
    for model in models:
        cls = get_model_class(model)
        for seed in seeds:
            cfg = preset(cls.name, 'synthetic')    # the CLI's preset
            if fast:
                cfg.update(FAST.get(cls.name, {}))
            cfg['epochs'] = epochs
            result, _, _ = train_run(cls.name, name, data=data, seed=seed,
                                     device='cpu', cfg=cfg)
            # the record layout of benchmarks/results/quality_runs/*.json
            records.append({'model': cls.name, 'dataset': name,
                            'seed': seed, 'noise': 0.0, 'config': cfg,
                            'metrics': result.metrics_dict()})
            print(f"{cls.name} seed {seed}: test recall@20 "
                  f"{result.test_metrics['recall@20']:.4f}")
    return records


def table(records: List[Dict]) -> str:
    def ms(v):
        return '' if v is None else f'{v[0]:.4f} ± {v[1]:.4f}'
    cols = ['recall@20', 'ndcg@20', 'precision@20', 'recall@10']
    lines = ['| model | seeds | ' + ' | '.join(cols) +
             ' | best-test-epoch R@20 | s/epoch |',
             '|' + '---|' * (len(cols) + 4)]
    for (model, _, _), rs in sorted(quality.group_runs(records).items()):
        row = quality.summarize(rs)
        bt = row['besttest_recall@20']
        lines.append(f"| {model} | {row['seeds']} | " +
                     ' | '.join(ms(row[c]) for c in cols) +
                     f" | {'' if bt is None else f'{bt:.4f}'} | "
                     f"{row['s_per_epoch']:.2f} |")
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--interactions', type=Path, default=None,
                   help='CSV with columns user, item (default: synthetic)')
    p.add_argument('--features', nargs='*', default=[], metavar='NAME=NPY')
    p.add_argument('--models', nargs='+',
                   default=['mf', 'lightgcn', 'diffmm', 'ld4mrec'])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--name', default='mydata')
    p.add_argument('--presets', action='store_true',
                   help='the presets as they are (default: smaller models '
                        'for a run of seconds)')
    args = p.parse_args(argv)
    if args.interactions is None:
        df, feats = example_frames()
    else:
        df = pd.read_csv(args.interactions)
        feats = {}
        for spec in args.features:
            name, _, path = spec.partition('=')
            feats[name] = np.load(path, allow_pickle=False)
    records = run(df, feats, args.models, args.seeds, args.epochs,
                  args.name, fast=not args.presets)
    text = table(records)
    print(f"\nTest metrics of the validation-selected epoch, mean ± std "
          f"over seeds {args.seeds} ({args.epochs} epochs):")
    print(text)
    return records, text


if __name__ == '__main__':
    main()
