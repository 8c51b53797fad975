r"""Edge dropout on an already normalised adjacency (DiffMM's
``SpAdjDropEdge``, docs/algorithms.md §2.6 step 4 and D2)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from mmdiff.errors import ConfigError


def dropout_normalized_edges(
    edge_index: Tensor,
    edge_weight: Tensor,
    keep_rate: float,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Keeps every stored entry independently with probability
    :math:`\rho` = ``keep_rate`` and rescales the kept weights by
    :math:`1/\rho`, so that :math:`\mathbb{E}[\tilde{A}] = \hat{A}`.

    Unlike :func:`torch_geometric.utils.dropout_edge`, this works on the
    normalised weights (self-loops included) and rescales; the two directions
    of an undirected edge are separate entries and are dropped independently,
    so the result is in general not symmetric.  The orientation of
    ``edge_index`` (source-to-target, :mod:`mmdiff.graph.adjacency`) is
    kept.

    Args:
        edge_index (Tensor): ``[2, E]``.
        edge_weight (Tensor): ``[E]``.
        keep_rate (float): :math:`\rho \in (0, 1]`; 1 keeps everything.
        generator (torch.Generator, optional): Source of randomness.
    """
    if not 0.0 < keep_rate <= 1.0:
        raise ConfigError(f"keep_rate must be in (0, 1], got {keep_rate}")
    if keep_rate == 1.0:
        return edge_index, edge_weight
    u = torch.rand(edge_weight.size(0), generator=generator,
                   device='cpu' if generator is None else generator.device)
    keep = (u.to(edge_weight.device) < keep_rate)
    return edge_index[:, keep], edge_weight[keep] / keep_rate
