r"""Swap a part: DiffMM with a denoiser of your own, and mmdiff's
interaction diffusion used alone on user rows of your own data.

1. ``DiffMM.from_data(..., denoiser_factory=f)`` calls ``f(num_items,
   modality)`` once per modality; any ``torch.nn.Module`` with
   ``forward(x_t, t) -> x0_hat`` works (docs/extending.md §1).
2. ``mmdiff.nn.diffusion.InteractionDiffusion`` (a Gaussian process over
   interaction rows + any denoiser) trains on, and denoises, the 0/1 rows
   of a pandas DataFrame of (user, item) pairs, with no recommender around
   it: the denoised row of a user scores every item.

    python examples/swap_part.py
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd
import torch

from mmdiff.data import make_synthetic
from mmdiff.nn.diffusion import GaussianDiffusion, InteractionDiffusion
from mmdiff.nn.models import DiffMM
from mmdiff.train import Trainer

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')


class GatedDenoiser(torch.nn.Module):
    r"""A denoiser of our own: a gated MLP over the noisy row and the step
    (``forward(x_t, t) -> x0_hat``; dropout only in training mode)."""

    def __init__(self, num_items: int, hidden: int = 64, steps: int = 50,
                 dropout: float = 0.2):
        super().__init__()
        self.step = torch.nn.Embedding(steps, hidden)
        self.inp = torch.nn.Linear(num_items, 2 * hidden)
        self.out = torch.nn.Linear(hidden, num_items)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x_t, t):
        h, gate = self.inp(self.drop(x_t)).chunk(2, dim=1)
        h = torch.tanh(h + self.step(t.long().clamp(max=self.step.
                                                     num_embeddings - 1)))
        return self.out(h * torch.sigmoid(gate))


def own_denoiser_in_diffmm(epochs: int, seed: int):
    data = make_synthetic(num_users=120, num_items=80, seed=seed,
                          modalities={'image': 16, 'text': 8})
    built = []

    def factory(num_items, modality):
        built.append(modality)
        return GatedDenoiser(num_items)

    torch.manual_seed(seed)
    model = DiffMM.from_data(data, embedding_dim=16, batch_size=64,
                             denoiser_factory=factory)
    result = Trainer(model, data, epochs=epochs, batch_size=64, patience=0,
                     seed=seed).fit()
    print(f"DiffMM built {len(built)} denoisers of our own, one per "
          f"modality {built}: "
          f"{[type(d.denoiser).__name__ for d in model.denoisers]}")
    print(f"  test recall@20 {result.test_metrics['recall@20']:.4f}")
    return model


def interactions_frame(seed: int) -> pd.DataFrame:
    r"""Your data: one row per (user, item) pair, any ids."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, 3, 60)            # 3 groups of users ...
    rows = []
    for u, g in enumerate(taste):             # ... who like 'their' items
        liked = rng.choice(np.arange(g * 10, g * 10 + 10), 6, replace=False)
        rows += [(f'user{u}', f'song{i}') for i in liked]
    return pd.DataFrame(rows, columns=['user', 'item'])


def diffusion_alone(df: pd.DataFrame, epochs: int, seed: int):
    torch.manual_seed(seed)
    users, uid = pd.factorize(df['user'], sort=True)
    items, iid = pd.factorize(df['item'], sort=True)
    rows = torch.zeros(len(uid), len(iid))
    rows[users, items] = 1.0
    # drop one interaction of user 0 and see whether denoising restores it
    held = int(items[np.flatnonzero(users == 0)[0]])
    rows_in = rows.clone()
    rows_in[0, held] = 0.0

    diff = InteractionDiffusion(GatedDenoiser(len(iid), steps=5,
                                              dropout=0.5),
                                GaussianDiffusion(noise_scale=0.1, steps=5))
    opt = torch.optim.Adam(diff.parameters(), lr=1e-2)
    for _ in range(epochs * 100):
        batch = rows_in[torch.randint(0, len(uid), (32,))]
        loss = diff.loss(batch)['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
    diff.eval()
    with torch.no_grad():
        denoised = diff.denoise(rows_in[:1])[0]
    denoised[rows_in[0] > 0] = -float('inf')   # rank unseen items only
    top = torch.topk(denoised, 5).indices.tolist()
    print(f"\nInteractionDiffusion alone on a DataFrame of {len(df)} "
          f"interactions ({len(uid)} users x {len(iid)} items):")
    print(f"  {uid[0]} likes {[iid[i] for i in np.flatnonzero(rows_in[0])]}")
    print(f"  denoised row, top-5 unseen items: {[iid[i] for i in top]}")
    print(f"  held-out {iid[held]!r} ranked "
          f"{int((denoised > denoised[held]).sum()) + 1} of "
          f"{int(torch.isfinite(denoised).sum())} unseen items")
    return diff, top, held


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    model = own_denoiser_in_diffmm(args.epochs, args.seed)
    diff, top, held = diffusion_alone(interactions_frame(args.seed),
                                      args.epochs, args.seed)
    return model, diff, top, held


if __name__ == '__main__':
    main()
