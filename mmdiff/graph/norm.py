r"""Symmetric degree normalisation, the one place :mod:`mmdiff` computes
:math:`D^{-1/2} A D^{-1/2}` (joint user-item graphs, the bipartite
:math:`\tilde{R}`, LD4MRec's preference operator and SVD encoder)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def inv_sqrt_degree(index: Tensor, weight: Tensor, num_nodes: int) -> Tensor:
    r""":math:`d^{-1/2}` of every node, ``[num_nodes]``, with the degree
    :math:`d_n = \sum_{e: \text{index}_e = n} w_e`; nodes of degree zero
    get 0 (not infinity)."""
    deg = torch.zeros(num_nodes, dtype=weight.dtype, device=weight.device)
    deg.index_add_(0, index, weight)
    out = deg.pow(-0.5)
    return out.masked_fill_(torch.isinf(out), 0.0)


def sym_norm_weights(row: Tensor, col: Tensor, num_rows: int, num_cols: int,
                     weight: Optional[Tensor] = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    r"""The values of :math:`D_r^{-1/2} A D_c^{-1/2}` for the entries
    :math:`A_{\text{row}_e, \text{col}_e} = w_e` of a (possibly rectangular)
    matrix:

    .. math::
        \tilde{w}_e = \frac{w_e}{\sqrt{d^{r}_{\text{row}_e}\,
        d^{c}_{\text{col}_e}}},\qquad d^{r} = A\mathbf{1},\quad
        d^{c} = A^\top\mathbf{1}

    Args:
        row (Tensor): ``[E]`` row indices.
        col (Tensor): ``[E]`` column indices.
        num_rows (int): Number of rows.
        num_cols (int): Number of columns.
        weight (Tensor, optional): ``[E]`` values (default: ones of
            ``dtype``; given values are cast to ``dtype``).
        dtype (torch.dtype): Floating type of the result.

    For a symmetric square matrix (``num_rows == num_cols``) this is the
    usual :math:`D^{-1/2} A D^{-1/2}`; for the ``[U, I]`` interaction matrix
    it is :math:`\tilde{R}_{ui} = R_{ui} / \sqrt{|\mathcal{N}_u|\,
    |\mathcal{N}_i|}`.
    """
    if weight is None:
        weight = torch.ones(row.numel(), dtype=dtype, device=row.device)
    else:
        weight = weight.to(dtype)
    inv_r = inv_sqrt_degree(row, weight, num_rows)
    inv_c = inv_sqrt_degree(col, weight, num_cols)
    return inv_r[row] * weight * inv_c[col]
