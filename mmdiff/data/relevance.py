r"""Does an item modality carry collaborative signal?  A held-out,
permutation-tested relevance score per modality (issue #17,
docs/algorithms.md D24).

A modality :math:`X_m \in \mathbb{R}^{I \times d_m}` is *relevant* when its
features predict where the items sit in the collaborative space better than
the same features assigned to random items.  The collaborative target is the
item side of the rank-:math:`k` truncated SVD of the training matrix,
:math:`F = V_k\Sigma_k \in \mathbb{R}^{I \times k}` (of :math:`R`, or of
:math:`\tilde{R} = D_U^{-1/2} R D_I^{-1/2}` with ``normalized=True``).  On
the items with at least one training interaction, split at random into two
halves :math:`A, B`, the features (standardised per column) are reduced to
their top :math:`r` principal components on the fitting half and
ridge-regressed on :math:`F`; the score is the held-out coefficient of
determination averaged over both directions and maximised over a grid of
ridge strengths :math:`\lambda \in \Lambda s_1^2`,

.. math::
    \rho_m = \max_{\lambda}\; \tfrac12 \sum_{(a, b) \in \{(A,B), (B,A)\}}
    \Big(1 - \frac{\lVert F_b - \hat F_b^{(\lambda)} \rVert_F^2}
    {\lVert F_b - \bar F_a \rVert_F^2}\Big),\qquad
    \hat F_b^{(\lambda)} = \bar F_a + P_b\,\mathrm{diag}\Big(
    \frac{s}{s^2 + \lambda}\Big) U_a^\top (F_a - \bar F_a),

with :math:`X_a = U_a \mathrm{diag}(s) W^\top` (top :math:`r`) and
:math:`P_b = X_b W`.  The same statistic computed with the rows of
:math:`F` permuted :math:`n` times gives the null distribution of a modality
that carries no signal; the permutation p-value is

.. math::
    p_m = \frac{1 + \#\{j : \rho_m^{(j)} \ge \rho_m\}}{1 + n},

and a modality is kept when :math:`\rho_m > 0` and :math:`p_m \le \alpha`.
Everything is deterministic for a seed and uses its own NumPy generator (the
global random state of :mod:`torch` is not touched).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from torch import Tensor

from mmdiff.checks import check_float, check_int

#: Ridge strengths, relative to the largest squared singular value.
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass(frozen=True)
class ModalityRelevance:
    r"""The relevance test of one modality.

    Attributes:
        score (float): :math:`\rho_m`, the held-out :math:`R^2` of the item
            factors predicted from the features.
        null_max (float): Largest score of the permuted features.
        p_value (float): Permutation p-value :math:`p_m`.
        keep (bool): :math:`\rho_m > 0` and :math:`p_m \le \alpha`.
    """
    score: float
    null_max: float
    p_value: float
    keep: bool


def _standardize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    sd = x.std(0)
    return x / np.where(sd > 0, sd, 1.0)


def _heldout_r2(x: np.ndarray, targets: Sequence[np.ndarray],
                fit: np.ndarray, test: np.ndarray, max_rank: int,
                grid: Sequence[float]) -> np.ndarray:
    r"""``[len(targets), len(grid)]`` held-out :math:`R^2` of ridge
    regressions fitted on rows ``fit`` and evaluated on rows ``test``."""
    u, s, wt = np.linalg.svd(x[fit], full_matrices=False)
    r = min(max_rank, int((s > s[0] * 1e-10).sum())) if s.size else 0
    out = np.zeros((len(targets), len(grid)))
    if r == 0:
        return out
    u, s, wt = u[:, :r], s[:r], wt[:r]
    p = x[test] @ wt.T                       # [n_test, r]
    gram = p.T @ p                           # [r, r]
    lams = np.asarray(grid) * s[0] ** 2
    for j, f in enumerate(targets):
        mean = f[fit].mean(0)
        f_fit, f_test = f[fit] - mean, f[test] - mean
        total = (f_test ** 2).sum()
        if total <= 0:
            continue
        utf = u.T @ f_fit                    # [r, k]
        cross = p.T @ f_test                 # [r, k]
        for i, lam in enumerate(lams):
            coef = (s / (s ** 2 + lam))[:, None] * utf
            err = (total - 2.0 * (cross * coef).sum()
                   + (coef * (gram @ coef)).sum())
            out[j, i] = 1.0 - err / total
    return out


def modality_relevance(
    edge_index: Tensor,
    num_users: int,
    num_items: int,
    modalities: Mapping[str, Tensor],
    rank: int = 64,
    normalized: bool = False,
    max_components: int = 256,
    num_permutations: int = 99,
    alpha: float = 0.01,
    seed: int = 0,
) -> Dict[str, ModalityRelevance]:
    r"""The relevance test of every modality (see the module docstring).

    Args:
        edge_index (Tensor): ``[2, E]`` training (user, item) edges.
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        modalities (dict): ``{name: [I, d_m]}`` item features.
        rank (int): :math:`k` of the SVD target. (default: ``64``)
        normalized (bool): SVD of :math:`\tilde{R}` instead of :math:`R`.
            The normalised matrix of a graph with many connected components
            has top factors that only mark components (TikTok), so the raw
            :math:`R` is the default. (default: :obj:`False`)
        max_components (int): :math:`r`, principal components of the
            features used by the regression. (default: ``256``)
        num_permutations (int): :math:`n`. (default: ``99``)
        alpha (float): Level of the test. (default: ``0.01``)
        seed (int): Seed of the split and the permutations.

    Returns:
        ``{name: ModalityRelevance}`` in the order of ``modalities``.
    """
    from mmdiff.nn.svd import truncated_svd
    check_int('rank', rank, 1)
    check_int('max_components', max_components, 1)
    check_int('num_permutations', num_permutations, 1)
    check_float('alpha', alpha, 0, 1, lo_open=True)
    edge_index = edge_index.cpu().long()
    _, s, v = truncated_svd(edge_index, rank, num_users, num_items,
                            normalized=normalized, seed=seed)
    target = (v * s).numpy()
    seen = np.bincount(edge_index[1].numpy(), minlength=num_items) > 0
    target = target[seen]
    n = int(seen.sum())
    rng = np.random.default_rng([int(seed), 17])
    order = rng.permutation(n)
    half_a, half_b = order[:n // 2], order[n // 2:]
    nulls = [target[rng.permutation(n)] for _ in range(num_permutations)]
    targets = [target] + nulls
    out = {}
    for name, x in modalities.items():
        x = _standardize(x.detach().cpu().double().numpy()[seen])
        r2 = 0.5 * (_heldout_r2(x, targets, half_a, half_b, max_components,
                                RIDGE_GRID) +
                    _heldout_r2(x, targets, half_b, half_a, max_components,
                                RIDGE_GRID))
        stat = r2.max(1)
        score, null = float(stat[0]), stat[1:]
        p = float((1 + (null >= score).sum()) / (1 + num_permutations))
        out[name] = ModalityRelevance(score, float(null.max()), p,
                                      bool(score > 0 and p <= alpha))
    return out


def relevant_modalities(relevance: Mapping[str, ModalityRelevance],
                        at_least: int = 0) -> list:
    r"""The names that pass the test, in their order; when fewer than
    ``at_least`` pass, the ``at_least`` highest-scoring ones (for a model
    that needs a modality)."""
    keep = [m for m, r in relevance.items() if r.keep]
    if len(keep) >= at_least:
        return keep
    best = sorted(relevance, key=lambda m: -relevance[m].score)[:at_least]
    return [m for m in relevance if m in best]


def describe_relevance(relevance: Mapping[str, ModalityRelevance]) -> str:
    r"""One line per modality: score, null maximum, p-value, kept."""
    return '\n'.join(
        f'{m}: held-out R^2 {r.score:+.5f} (permuted max {r.null_max:+.5f}, '
        f'p = {r.p_value:.3f}) -> {"kept" if r.keep else "dropped"}'
        for m, r in relevance.items())
