r"""A synthetic multi-modal interaction dataset with planted structure.

Users and items get latent factors :math:`\mathbf{p}_u, \mathbf{q}_i \sim
\mathcal{N}(\mathbf{0}, \mathbf{I}_d)`.  Item :math:`i` has a Zipf-like
popularity :math:`\pi_i \propto r_i^{-a}` (``r_i`` a random rank), and user
:math:`u` interacts with :math:`n_u` distinct items (:math:`n_u` log-normal,
long-tailed) drawn **without replacement** from

.. math::
    P(i \mid u) \propto \exp\!\Big(\frac{\mathbf{p}_u^\top \mathbf{q}_i}
    {\tau \sqrt{d}} + \log \pi_i\Big)

by Gumbel-top-:math:`k`.  Each modality :math:`m` is a noisy random projection
of the item factors,

.. math::
    \mathbf{x}_i^{(m)} = \sqrt{\rho_m}\, \mathrm{std}(\mathbf{q}_i
    \mathbf{W}_m) + \sqrt{1 - \rho_m}\, \boldsymbol{\epsilon}_i,
    \qquad \boldsymbol{\epsilon}_i \sim \mathcal{N}(\mathbf{0}, \mathbf{I}),

so its informativeness :math:`\rho_m \in [0, 1]` is the share of signal
variance (``0`` = pure noise, ``1`` = a noiseless view of the factors).
Interactions are split per user with :func:`~mmdiff.data.readers.
split_per_user`.  Everything is fixed by ``seed``; a modality's features
depend only on ``seed``, its name, dimension and informativeness, so adding a
modality never changes the interactions, and leaves the other modalities as
they were when their informativeness is given explicitly.
"""
from __future__ import annotations

import zlib
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from mmdiff.data.hetero import make_interaction_data
from mmdiff.data.readers import split_per_user
from mmdiff.errors import ConfigError

DEFAULT_MODALITIES: Dict[str, int] = {'image': 64, 'text': 32}
#: Informativeness given to modalities not named in ``informativeness``:
#: spaced from the first value (first modality) to the second (last one).
DEFAULT_INFORMATIVENESS: Tuple[float, float] = (0.8, 0.5)

_LOGNORMAL_SIGMA = 0.8
_CHUNK_ENTRIES = 1 << 22  # user rows per chunk = this / num_items


def _check_int(value: int, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _informativeness(names: list, given: Union[None, float,
                                               Mapping[str, float]]
                     ) -> Dict[str, float]:
    lo, hi = DEFAULT_INFORMATIVENESS[1], DEFAULT_INFORMATIVENESS[0]
    spaced = np.linspace(hi, lo, len(names)) if len(names) > 1 else [hi]
    out = {m: float(s) for m, s in zip(names, spaced)}
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        out = {m: float(given) for m in names}
    elif isinstance(given, Mapping):
        unknown = [m for m in given if m not in out]
        if unknown:
            raise ConfigError(f"informativeness given for unknown modality "
                              f"{unknown[0]!r}; modalities are {names}")
        out.update({m: float(v) for m, v in given.items()})
    elif given is not None:
        raise ConfigError(f"informativeness must be a float or a dict "
                          f"{{modality: float}}, got {type(given).__name__}")
    for m, v in out.items():
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"informativeness of '{m}' must be in [0, 1], "
                              f"got {v}")
    return out


def _gumbel_top_k(logits_fn, counts: np.ndarray, num_items: int,
                  rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    r"""For every user row ``u`` draws ``counts[u]`` distinct items from
    ``softmax(logits[u])`` (Gumbel-top-k), in chunks of user rows."""
    num_users = counts.size
    chunk = max(1, _CHUNK_ENTRIES // num_items)
    users, items = [], []
    for start in range(0, num_users, chunk):
        stop = min(start + chunk, num_users)
        scores = logits_fn(start, stop)
        scores += rng.gumbel(size=scores.shape)
        n = counts[start:stop]
        k = int(n.max())
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1,
                           kind='stable')
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(k)[None, :] < n[:, None]
        rows = np.broadcast_to(np.arange(start, stop)[:, None], top.shape)
        users.append(rows[keep])
        items.append(top[keep])
    return np.concatenate(users), np.concatenate(items)


def make_synthetic(
    num_users: int = 1000,
    num_items: int = 800,
    modalities: Optional[Mapping[str, int]] = None,
    informativeness: Union[None, float, Mapping[str, float]] = None,
    *,
    latent_dim: int = 16,
    interactions_per_user: float = 20.0,
    min_interactions: int = 5,
    popularity_exponent: float = 0.8,
    temperature: float = 0.4,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    return_factors: bool = False,
) -> Union[HeteroData, Tuple[HeteroData, Dict[str, Tensor]]]:
    r"""Generates a dataset with planted latent structure (see the module
    docstring for the model).

    Args:
        num_users (int): Number of users :math:`U`. (default: ``1000``)
        num_items (int): Number of items :math:`I`. (default: ``800``)
        modalities (dict, optional): ``{name: dim}`` of the item modalities,
            any number of them. (default: ``{'image': 64, 'text': 32}``)
        informativeness (float or dict, optional): Share of signal variance
            :math:`\rho_m \in [0, 1]` per modality; unnamed modalities get
            values spaced from ``0.8`` (first) to ``0.5`` (last).
        latent_dim (int): Dimension :math:`d` of the factors.
        interactions_per_user (float): Mean of the log-normal number of
            interactions per user (before clipping to
            ``[min_interactions, I]``). (default: ``20``)
        min_interactions (int): Fewest interactions of a user. (default:
            ``5``)
        popularity_exponent (float): Zipf exponent :math:`a` of item
            popularity; ``0`` = no popularity effect. (default: ``0.8``)
        temperature (float): :math:`\tau`; smaller = interactions follow the
            factors more closely. (default: ``0.4``)
        val_ratio (float): Validation share of the per-user split.
        test_ratio (float): Test share of the per-user split.
        seed (int): Fixes everything. (default: ``0``)
        return_factors (bool): Also return the planted truth ``{'user':
            [U, d], 'item': [I, d], 'log_popularity': [I]}``, scaled so that
            the true logits are ``user @ item.T + log_popularity``.
            (default: :obj:`False`)
    """
    num_users = _check_int(num_users, 'num_users')
    num_items = _check_int(num_items, 'num_items', 2)
    latent_dim = _check_int(latent_dim, 'latent_dim')
    min_interactions = _check_int(min_interactions, 'min_interactions')
    seed = _check_int(seed, 'seed', 0)
    if modalities is None:
        modalities = DEFAULT_MODALITIES
    modalities = {name: _check_int(dim, f"dimension of modality '{name}'")
                  for name, dim in modalities.items()}
    rho = _informativeness(list(modalities), informativeness)
    for what, v in (('interactions_per_user', interactions_per_user),
                    ('temperature', temperature)):
        if not v > 0:
            raise ConfigError(f"{what} must be positive, got {v}")
    if not popularity_exponent >= 0:
        raise ConfigError(f"popularity_exponent must be >= 0, got "
                          f"{popularity_exponent}")

    rng_factor, rng_pop, rng_count, rng_sample = (
        np.random.default_rng(s)
        for s in np.random.SeedSequence(seed).spawn(4))
    user_f = rng_factor.standard_normal((num_users, latent_dim))
    item_f = rng_factor.standard_normal((num_items, latent_dim))
    ranks = rng_pop.permutation(num_items) + 1.0
    log_pop = -popularity_exponent * np.log(ranks)
    log_pop -= np.log(np.exp(log_pop).sum())

    mu = np.log(interactions_per_user) - _LOGNORMAL_SIGMA ** 2 / 2
    counts = np.rint(rng_count.lognormal(mu, _LOGNORMAL_SIGMA, num_users))
    counts = np.clip(counts, min(min_interactions, num_items),
                     num_items).astype(np.int64)

    scale = 1.0 / (temperature * np.sqrt(latent_dim))

    def logits(start: int, stop: int) -> np.ndarray:
        return (user_f[start:stop] @ item_f.T) * scale + log_pop

    users, items = _gumbel_top_k(logits, counts, num_items, rng_sample)
    labels = split_per_user(users, val_ratio, test_ratio,
                            seed=int(rng_sample.integers(2**31)))
    splits = [np.stack([users[labels == k], items[labels == k]])
              for k in range(3)]

    feats = {}
    for name, dim in modalities.items():
        rng = np.random.default_rng(
            [seed, zlib.crc32(name.encode('utf-8'))])
        proj = rng.standard_normal((latent_dim, dim))
        signal = item_f @ proj
        signal = (signal - signal.mean(0)) / (signal.std(0) + 1e-12)
        noise = rng.standard_normal((num_items, dim))
        feats[name] = (np.sqrt(rho[name]) * signal
                       + np.sqrt(1.0 - rho[name]) * noise).astype(np.float32)

    data = make_interaction_data(num_users, num_items, *splits,
                                 modalities=feats)
    if return_factors:
        truth = {'user': torch.from_numpy(user_f * scale).float(),
                 'item': torch.from_numpy(item_f).float(),
                 'log_popularity': torch.from_numpy(log_pop).float()}
        return data, truth
    return data
