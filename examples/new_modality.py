r"""Add a fourth item modality, by a name of your own, and train DiffMM and
LD4MRec on it.

Any floating-point ``[num_items, dim]`` attribute of ``data['item']`` is a
modality; ``mmdiff.data.hetero.add_modality`` adds one after checking it
(row count, NaN/Inf, dtype; the name must be a Python identifier).  DiffMM
then builds one denoiser and regenerates one user-item graph per modality,
LD4MRec computes one user preference per modality: both are printed below.

    python examples/new_modality.py               # synthetic, seconds
    python examples/new_modality.py --root data --dataset tiktok \
        --epochs 5                                # TikTok + 'thumbnail'
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from mmdiff.data import (
    describe_relevance,
    edge_index_of,
    get_dataset,
    get_modalities,
    make_synthetic,
    modality_relevance,
    num_users,
)
from mmdiff.data.hetero import add_modality, describe, modality_names, \
    num_items
from mmdiff.nn.models import DiffMM, LD4MRec
from mmdiff.train import Trainer
from mmdiff.train.config import preset, split_config

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', default=None,
                   help="a named dataset (e.g. tiktok) read from --root; "
                        "default: a small synthetic one")
    p.add_argument('--root', default=None)
    p.add_argument('--name', default='thumbnail',
                   help='name of the new modality (any Python identifier)')
    p.add_argument('--dim', type=int, default=24)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def load(args):
    if args.dataset:
        return get_dataset(args.dataset, root=args.root)
    # image, text and audio: three modalities before ours
    return make_synthetic(num_users=120, num_items=90, seed=args.seed,
                          modalities={'image': 16, 'text': 8, 'audio': 8})


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data = load(args)
    before = modality_names(data)
    # Your features: one row per item, in the data's item order (here a
    # random projection standing in for, e.g., thumbnail embeddings).
    rng = np.random.default_rng(args.seed)
    feats = rng.normal(size=(num_items(data), args.dim)).astype(np.float32)
    add_modality(data, args.name, feats)
    print(f"modalities before: {before}; after: {modality_names(data)}")
    print(describe(data))
    # Random features carry no signal: the relevance test that the presets
    # run before building a model (modality_screening, docs/algorithms.md
    # D24) says so and would leave them out.  It is switched off below so
    # that both models build their parts for the new modality.
    print('relevance test:\n' + describe_relevance(modality_relevance(
        edge_index_of(data), num_users(data), num_items(data),
        get_modalities(data))))

    key = 'tiktok' if args.dataset == 'tiktok' else 'synthetic'
    small = {} if args.dataset else {'embedding_dim': 16,
                                     'hidden_dims': [32], 'hidden_dim': 32}
    for cls in (DiffMM, LD4MRec):
        # the CLI's preset for this model, so Python and CLI agree
        cfg = preset(cls.name, key) | {'epochs': args.epochs,
                                       'patience': 0,
                                       'modality_screening': False}
        cfg.update({k: v for k, v in small.items()
                    if k in cls.hparam_names()})
        trainer_kw, hparams = split_config(cfg, cls)
        model = cls.from_data(data, **hparams)
        result = Trainer(model, data, seed=args.seed, **trainer_kw).fit()
        used = model.modalities if cls is DiffMM else model.modality_names
        print(f"\n{cls.__name__} uses {len(used)} modalities: {used}")
        if cls is DiffMM:
            for name, diff, (edge_index, weight) in zip(
                    model.modalities, model.denoisers, model.graphs.train):
                n_par = sum(p.numel() for p in diff.parameters())
                print(f"  {name:>10}: denoiser {type(diff.denoiser).__name__}"
                      f" ({n_par:,} parameters), regenerated graph "
                      f"{edge_index.size(1):,} edges")
        else:
            with torch.no_grad():
                prefs = model.preferences(torch.arange(4))
            for name, p in prefs.items():
                print(f"  {name:>10}: user preference {tuple(p.shape)}")
        m = result.test_metrics
        print(f"  test recall@20 {m['recall@20']:.4f}  ndcg@20 "
              f"{m['ndcg@20']:.4f}  ({result.epochs_run} epochs)")
    return data


if __name__ == '__main__':
    main()
