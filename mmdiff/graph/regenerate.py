r"""Top-:math:`k` regeneration of a user-item edge set from score rows
(DiffMM's modality-aware graph, docs/algorithms.md §2.6)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mmdiff.checks import check_int
from mmdiff.errors import DataError


def regenerate_topk_graph(
    scores: Tensor,
    k: int,
    users: Optional[Tensor] = None,
    exclude: Optional[Tensor] = None,
) -> Tensor:
    r"""Keeps the ``k`` highest-scoring items of every row of ``scores``.

    Args:
        scores (Tensor): ``[B, I]`` scores (e.g. denoised interaction rows).
        k (int): Items kept per row (DiffMM's ``rebuild_k``).
        users (Tensor, optional): ``[B]`` global user ids of the rows
            (default: ``0..B-1``).
        exclude (Tensor, optional): ``[B, I]`` boolean mask of items that may
            not be chosen (e.g. observed items; DiffMM does not exclude them,
            docs/algorithms.md D5).

    Returns:
        ``[2, B * k]`` long tensor of (user, item) edges (the layout of
        the data's interaction edges), on the device of ``scores``, ordered
        by row then rank.
    """
    if scores.dim() != 2:
        raise DataError(f"scores must be [B, I], got {tuple(scores.shape)}")
    check_int('k (items kept per row)', k, 1, scores.size(1))
    if exclude is not None:
        scores = scores.masked_fill(exclude, float('-inf'))
    items = scores.topk(k, dim=1).indices
    if users is None:
        users = torch.arange(scores.size(0), device=scores.device)
    return torch.stack([users.to(scores.device).repeat_interleave(k),
                        items.reshape(-1)])
