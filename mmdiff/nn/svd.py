r"""Truncated SVD of the user-item interaction matrix: LD4MRec's
collaborative encoder (docs/algorithms.md §4.1, D18).

The paper says only "an SVD scheme as encoder".  Recommended reading (used
by default): the rank-:math:`k` truncated SVD of the normalised matrix
:math:`\tilde{R} = D_U^{-1/2} R D_I^{-1/2}`,

.. math::
    \tilde{R} \approx U_k \Sigma_k V_k^\top, \qquad
    \mathbf{c}_u = (U_k \Sigma_k)[u] \in \mathbb{R}^{k},

computed without ever densifying the :math:`U \times I` matrix, either by
randomised subspace iteration on a sparse CSR tensor (Halko et al., the
algorithm of :func:`torch.svd_lowrank`) or by ARPACK
(:func:`scipy.sparse.linalg.svds`).  Both are deterministic for a seed and
column signs are fixed canonically, so the factors are reproducible.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from mmdiff.checks import check_int
from mmdiff.graph.norm import sym_norm_weights
from mmdiff.errors import ConfigError, DataError

SCALINGS = ('sigma', 'sqrt_sigma', 'none')
METHODS = ('lowrank', 'arpack')


def _is_scipy_sparse(obj) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover
        return False
    return sp.issparse(obj)


def _to_coo(matrix, num_users: Optional[int], num_items: Optional[int]
            ) -> Tuple[Tensor, Tensor, Tensor, int, int]:
    r"""``(row, col, value float64, U, I)`` of ``matrix``: a ``[2, E]``
    (user, item) edge index, a torch sparse ``[U, I]`` tensor or a SciPy
    sparse matrix.  Duplicate entries are summed."""
    if _is_scipy_sparse(matrix):
        m = matrix.tocoo()
        row = torch.from_numpy(m.row.astype(np.int64))
        col = torch.from_numpy(m.col.astype(np.int64))
        val = torch.from_numpy(m.data.astype(np.float64))
        shape = m.shape
    elif isinstance(matrix, Tensor) and matrix.is_sparse or (
            isinstance(matrix, Tensor) and matrix.layout in
            (torch.sparse_csr, torch.sparse_csc)):
        m = matrix.cpu()
        if m.layout != torch.sparse_coo:
            m = m.to_sparse_coo()
        m = m.coalesce()
        row, col = m.indices()
        val = m.values().to(torch.float64)
        shape = tuple(m.shape)
    elif isinstance(matrix, Tensor):
        if matrix.dim() != 2 or matrix.size(0) != 2:
            raise DataError(f"expected a [2, E] (user, item) edge index, a "
                            f"sparse matrix or a SciPy sparse matrix, got a "
                            f"tensor of shape {tuple(matrix.shape)}")
        if num_users is None or num_items is None:
            raise ConfigError("num_users and num_items are required with an "
                              "edge index")
        row, col = matrix.cpu().long()
        val = torch.ones(row.numel(), dtype=torch.float64)
        shape = (num_users, num_items)
    else:
        raise DataError(f"cannot take the SVD of a {type(matrix).__name__}")
    U, I = int(shape[0]), int(shape[1])
    if num_users is not None and num_users != U or \
            num_items is not None and num_items != I:
        raise DataError(f"the matrix has shape ({U}, {I}) but num_users="
                        f"{num_users}, num_items={num_items}")
    if row.numel() and (int(row.max()) >= U or int(col.max()) >= I or
                        int(row.min()) < 0 or int(col.min()) < 0):
        raise DataError(f"ids out of range for a ({U}, {I}) matrix")
    # Sum duplicates so degrees and the matrix agree.
    key = torch.unique(row * I + col, return_inverse=True)
    uniq, inv = key
    if uniq.numel() < row.numel():
        val = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(
            0, inv, val)
        row, col = uniq // I, uniq % I
    return row, col, val, U, I


def _normalize(row: Tensor, col: Tensor, val: Tensor, U: int, I: int
               ) -> Tensor:
    return sym_norm_weights(row, col, U, I, val, val.dtype)


def _fix_signs(u: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Makes the entry of largest magnitude of every column of ``u``
    positive (flipping ``v`` along), so the factors do not depend on the
    solver's arbitrary signs."""
    idx = u.abs().argmax(0)
    sign = torch.sign(u.gather(0, idx[None])[0])
    sign[sign == 0] = 1.0
    return u * sign, v * sign


def _warn_components(row: Tensor, col: Tensor, U: int, I: int,
                     rank: int) -> None:
    r"""Warns when :math:`\tilde{R}` has many connected components: each
    component with an interaction contributes a singular value of exactly 1,
    so with more components than about ``rank / 8`` the leading factors
    mostly indicate small components instead of collaborative structure
    (e.g. TikTok's training graph)."""
    import warnings
    try:
        import scipy.sparse as sp
        from scipy.sparse.csgraph import connected_components
    except ImportError:  # pragma: no cover
        return
    if row.numel() == 0:
        return
    A = sp.coo_matrix((np.ones(row.numel()), (row.numpy(),
                                              col.numpy() + U)),
                      shape=(U + I, U + I))
    _, labels = connected_components(A, directed=False)
    n = int((np.bincount(labels) > 1).sum())
    if n > max(1, rank // 8):
        warnings.warn(
            f"the normalised interaction matrix has {n} connected components "
            f"with interactions, so its top {min(n, rank)} singular values "
            f"are all 1 and the leading SVD factors mostly mark components; "
            f"normalized=False (SVD of the raw matrix) may be more "
            f"informative", UserWarning, stacklevel=3)


def _randomized_svd(row: Tensor, col: Tensor, val: Tensor, U: int, I: int,
                    k: int, q: int, niter: int, seed: int
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Randomised SVD with subspace iteration (Halko, Martinsson and Tropp,
    2011, Alg. 4.4 + 5.1) on float64 CSR copies of :math:`A` and
    :math:`A^\top`; the same algorithm as :func:`torch.svd_lowrank` with an
    explicit generator (no global RNG) and CSR products."""
    idx = torch.stack([row, col])
    A = torch.sparse_coo_tensor(idx, val, (U, I)).coalesce().to_sparse_csr()
    At = torch.sparse_coo_tensor(idx.flip(0), val, (I, U)).coalesce() \
        .to_sparse_csr()
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(I, q, dtype=torch.float64, generator=gen)
    Q = torch.linalg.qr(A @ omega).Q
    for _ in range(niter):
        Q = torch.linalg.qr(At @ Q).Q
        Q = torch.linalg.qr(A @ Q).Q
    B = (At @ Q).t()  # [q, I] = Q^T A
    ub, s, vt = torch.linalg.svd(B, full_matrices=False)
    return (Q @ ub)[:, :k], s[:k], vt[:k].t()


def truncated_svd(
    matrix: Union[Tensor, 'np.ndarray'],
    rank: int,
    num_users: Optional[int] = None,
    num_items: Optional[int] = None,
    normalized: bool = True,
    method: str = 'lowrank',
    niter: int = 4,
    oversample: int = 10,
    seed: int = 0,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Top-``rank`` singular triplets of :math:`\tilde{R}` (or of
    :math:`R` with ``normalized=False``) without densifying it.

    Args:
        matrix: ``[2, E]`` (user, item) edges (needs ``num_users`` and
            ``num_items``), a torch sparse ``[U, I]`` tensor (COO/CSR/CSC)
            or a SciPy sparse matrix.  Values are used as given
            (edges: ones); duplicates are summed.
        rank (int): :math:`k`.  Values above :math:`\min(U, I)` are clipped
            (for ``'arpack'`` to :math:`\min(U, I) - 1`) and the missing
            components are returned as zeros.
        normalized (bool): Use :math:`\tilde{R} = D_U^{-1/2} R D_I^{-1/2}`
            (weighted degrees; zero degree gives an empty row/column).
        method (str): ``'lowrank'`` (randomised SVD with ``rank +
            oversample`` probe vectors and ``niter`` subspace iterations on a
            sparse float64 CSR matrix, as :func:`torch.svd_lowrank`) or
            ``'arpack'``
            (:func:`scipy.sparse.linalg.svds`, exact to solver tolerance).
        niter (int): Subspace (power) iterations of ``'lowrank'``.
        oversample (int): Extra probe vectors of ``'lowrank'``.
        seed (int): Seed of the random probes / ARPACK start vector.

    Returns:
        ``(U_k [U, rank], S_k [rank], V_k [I, rank])`` in float64, singular
        values in decreasing order, column signs fixed canonically.
    """
    check_int('rank', rank, 1)
    if method not in METHODS:
        raise ConfigError(f"unknown SVD method {method!r}; expected one of "
                          f"{METHODS}")
    row, col, val, U, I = _to_coo(matrix, num_users, num_items)
    if normalized:
        _warn_components(row, col, U, I, rank)
        val = _normalize(row, col, val, U, I)
    k_max = min(U, I) - (1 if method == 'arpack' else 0)
    k = min(rank, k_max)
    u_out = torch.zeros(U, rank, dtype=torch.float64)
    s_out = torch.zeros(rank, dtype=torch.float64)
    v_out = torch.zeros(I, rank, dtype=torch.float64)
    if k < 1 or row.numel() == 0:
        return u_out, s_out, v_out
    if method == 'lowrank':
        u, s, v = _randomized_svd(row, col, val, U, I, k,
                                  q=min(k + oversample, min(U, I)),
                                  niter=niter, seed=seed)
    else:
        import scipy.sparse as sp
        from scipy.sparse.linalg import svds
        A = sp.csr_matrix((val.numpy(), (row.numpy(), col.numpy())),
                          shape=(U, I))
        v0 = np.random.default_rng(seed).uniform(-1, 1, min(U, I))
        u, s, vt = svds(A, k=k, v0=v0, solver='arpack')
        order = np.argsort(-s)
        u = torch.from_numpy(np.ascontiguousarray(u[:, order]))
        s = torch.from_numpy(np.ascontiguousarray(s[order]))
        v = torch.from_numpy(np.ascontiguousarray(vt[order].T))
    u, v = _fix_signs(u, v)
    # Empty rows/columns are exactly zero in theory; remove round-off.
    u[torch.bincount(row, minlength=U) == 0] = 0.0
    v[torch.bincount(col, minlength=I) == 0] = 0.0
    u_out[:, :k], s_out[:k], v_out[:, :k] = u, s, v
    return u_out, s_out, v_out


def svd_user_factors(
    matrix,
    num_users: Optional[int] = None,
    num_items: Optional[int] = None,
    rank: int = 64,
    normalized: bool = True,
    scaling: str = 'sigma',
    method: str = 'lowrank',
    niter: int = 4,
    seed: int = 0,
) -> Tensor:
    r"""LD4MRec's collaborative condition :math:`\mathbf{c}_u`, ``[U, rank]``
    (float32).

    .. math::
        C = U_k \Sigma_k \;(\texttt{'sigma'}),\quad
        U_k \Sigma_k^{1/2} \;(\texttt{'sqrt\_sigma'}),\quad
        U_k \;(\texttt{'none'})

    of the truncated SVD of :math:`\tilde{R}` (``normalized=True``, the
    recommended reading of the paper, docs/algorithms.md D18) or of the raw
    :math:`R`.  See :func:`truncated_svd` for ``matrix``, ``method``,
    ``niter`` and ``seed``.  Users without interactions get zero rows.
    Sports-scale (35,598 x 18,357) matrices take well under a second with
    ``'lowrank'`` on CPU.
    """
    if scaling not in SCALINGS:
        raise ConfigError(f"unknown SVD scaling {scaling!r}; expected one of "
                          f"{SCALINGS}")
    u, s, _ = truncated_svd(matrix, rank, num_users, num_items,
                            normalized=normalized, method=method,
                            niter=niter, seed=seed)
    if scaling == 'sigma':
        u = u * s
    elif scaling == 'sqrt_sigma':
        u = u * s.sqrt()
    return u.float()
