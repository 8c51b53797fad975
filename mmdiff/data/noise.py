r"""Noisy-training data (LD4MRec's protocol, docs/algorithms.md §3.1 / D22).

:func:`add_noise_interactions` adds :math:`n = \lfloor r \cdot |C| \rfloor`
uniformly random *unobserved* (user, item) pairs, :math:`|C|` being the number
of clean interactions over all splits.  Each noisy pair goes to the training
split with probability :math:`1 - s` and to the validation split with
probability :math:`s` (``val_share``, default :math:`1/9`); the test split is
never touched.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch_geometric.data import HeteroData

from mmdiff.data.hetero import EDGE_TYPE, SPLITS, edge_index_of, num_items, \
    num_users
from mmdiff.errors import ConfigError, DataError

_MAX_ROUNDS = 100


def _sample_unobserved(observed: np.ndarray, total: int, n: int,
                       rng: np.random.Generator) -> np.ndarray:
    r"""``n`` distinct keys drawn uniformly from ``[0, total)`` minus the
    sorted ``observed`` keys, in the order they were drawn."""
    free = total - observed.size
    if n > free:
        raise DataError(f"cannot add {n} noisy interactions: only {free} "
                        f"(user, item) pairs are unobserved")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if free <= 4 * n:  # dense: draw directly from the complement
        complement = np.setdiff1d(np.arange(total, dtype=np.int64), observed,
                                  assume_unique=True)
        return rng.choice(complement, size=n, replace=False)
    chosen = np.zeros(0, dtype=np.int64)
    for _ in range(_MAX_ROUNDS):  # vectorised rejection, a few rounds
        need = n - chosen.size
        draw = rng.integers(0, total, size=int(need * total / free * 1.1)
                            + 16, dtype=np.int64)
        draw = draw[~np.isin(draw, observed, assume_unique=False)]
        draw = np.concatenate([chosen, draw])
        _, first = np.unique(draw, return_index=True)
        chosen = draw[np.sort(first)][:n]  # distinct, in draw order
        if chosen.size == n:
            return chosen
    raise DataError("rejection sampling of noisy interactions did not "
                    "converge")  # pragma: no cover


def add_noise_interactions(data: HeteroData, ratio: float, seed: int = 0,
                           val_share: float = 1 / 9) -> HeteroData:
    r"""Returns a copy of ``data`` with random noisy interactions added to
    its training and validation splits.

    Args:
        data (HeteroData): Canonical data (see :mod:`mmdiff.data.hetero`);
            left unchanged.
        ratio (float): Noise budget :math:`r`: :math:`\lfloor r \cdot (|E_
            \text{train}| + |E_\text{val}| + |E_\text{test}|) \rfloor` pairs
            are added.  ``0`` returns an equal copy.
        seed (int): Seed of the sampling. (default: ``0``)
        val_share (float): Probability that a noisy pair goes to validation
            rather than training. (default: ``1/9``)

    The pairs are drawn uniformly among the pairs present in no split, without
    repetition.  The copy records ``noise_ratio`` (a float) as a graph-level
    attribute.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) \
            or not math.isfinite(ratio):
        raise DataError(f"noise ratio must be a finite number, got {ratio!r}")
    if ratio < 0:
        raise DataError(f"noise ratio must be >= 0, got {ratio}")
    if not 0.0 <= val_share <= 1.0:
        raise ConfigError(f"val_share must be in [0, 1], got {val_share}")

    U, I = num_users(data), num_items(data)
    edges = {s: edge_index_of(data, s).cpu() for s in SPLITS}
    keys = {s: (e[0] * I + e[1]).numpy() for s, e in edges.items()}
    observed = np.unique(np.concatenate(list(keys.values())))
    budget = int(math.floor(ratio * sum(k.size for k in keys.values())
                            + 1e-9))

    rng = np.random.default_rng(seed)
    noisy = _sample_unobserved(observed, U * I, budget, rng)
    to_val = rng.random(noisy.size) < val_share

    out = data.clone()
    store = out[EDGE_TYPE]
    device = edge_index_of(data, 'train').device
    for split, attr, add in (('train', 'edge_index', noisy[~to_val]),
                             ('val', 'val_edge_index', noisy[to_val])):
        merged = torch.from_numpy(np.sort(np.concatenate([keys[split], add])))
        store[attr] = torch.stack([merged // I, merged % I]).to(device)
    out.noise_ratio = float(ratio)
    return out
