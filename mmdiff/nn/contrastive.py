r"""DiffMM's InfoNCE (``contrastLoss`` of the official code, docs/algorithms.md
§2.7)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdiff.nn.diffusion._fused import mm_aligned
from mmdiff.nn.precision import check_bf16

#: Largest number of similarity entries computed at once (anchors x keys);
#: larger problems are split into anchor chunks (``2**22`` floats = 16 MB,
#: small enough for the CPU allocator to recycle instead of page-faulting
#: fresh memory on every call).
MAX_CHUNK_ELEMENTS = 2 ** 22


def info_nce(p: Tensor, q: Union[Tensor, Sequence[Tensor]], nodes: Tensor,
             temperature: float,
             chunk_elements: Optional[int] = None,
             bf16: bool = False) -> Tensor:
    r"""DiffMM's one-directional InfoNCE with all rows of ``q`` as
    candidates:

    .. math::
        \ell_n = -\log \frac{\exp(\bar{p}_n^\top \bar{q}_n / \tau)}
        {\sum_{j=1}^{N} \exp(\bar{p}_n^\top \bar{q}_j / \tau)},
        \qquad \mathcal{L} = \frac{1}{|\text{nodes}|}
        \sum_{n \in \text{nodes}} \ell_n

    with :math:`\bar{p} = \mathrm{rownorm}(p)`, :math:`\bar{q} =
    \mathrm{rownorm}(q)`.  Anchors come from ``p`` only (one direction), the
    positive is inside the denominator, and duplicate entries of ``nodes``
    are kept (each counts in the mean), exactly as the official code.  It is
    computed as :math:`-\bar{p}_n^\top\bar{q}_n/\tau +
    \mathrm{logsumexp}_j(\bar{p}_n^\top \bar{q}_j/\tau)` (stable, identical
    in exact arithmetic).

    Speed: every distinct anchor is scored once (the mean still counts
    duplicates), and when ``q`` is a list of matrices the anchors are
    scored against all of them with one matrix product; the sum of the
    per-matrix losses is returned.  The ``[anchors, N]`` similarity matrix
    is split into anchor chunks of at most ``chunk_elements`` entries.

    Args:
        p (Tensor): Anchor embeddings ``[N, d]``.
        q (Tensor or list of Tensor): Candidate embeddings ``[N, d]`` (or
            several, each ``[N, d]``).
        nodes (Tensor): ``[B]`` anchor/positive indices (repeats allowed).
        temperature (float): :math:`\tau`.
        chunk_elements (int, optional): Chunk limit (default
            :data:`MAX_CHUNK_ELEMENTS`).
        bf16 (bool): Compute the anchor-by-candidate similarities, their
            exponentials and the matching gradient products in bfloat16
            (sums and the returned loss stay float32).  Faster on CPUs with
            bf16 matrix units, at ~3 significant digits per similarity;
            elsewhere much slower (a
            :class:`~mmdiff.errors.PerformanceWarning` says so, see
            :mod:`mmdiff.nn.precision`).  (default: :obj:`False`)

    Returns:
        A scalar: :math:`\mathcal{L}`, or :math:`\sum_k \mathcal{L}(p,
        q_k)` for a list.
    """
    qs = [q] if isinstance(q, Tensor) else list(q)
    if not qs:
        return p.new_zeros(())
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    N = qs[0].size(0)
    for qk in qs:
        if qk.size(0) != N or qk.size(1) != p.size(1):
            raise ValueError(f"every candidate matrix must be [{N}, "
                             f"{p.size(1)}], got {tuple(qk.shape)}")
    if bf16:
        check_bf16(p.device, 'info_nce(bf16=True) (precision bf16)')
    K = len(qs)
    uniq, inverse = torch.unique(nodes, return_inverse=True)
    anchors = F.normalize(p[uniq], dim=1)                        # [A, d]
    q_all = torch.cat([F.normalize(qk, dim=1) for qk in qs])     # [K N, d]
    pos = torch.stack([(anchors * F.normalize(qk[uniq], dim=1)).sum(-1)
                       for qk in qs], dim=1)                     # [A, K]
    limit = chunk_elements or MAX_CHUNK_ELEMENTS
    rows = max(1, limit // max(K * N, 1))
    inv_t = 1.0 / temperature
    scaled = anchors * inv_t
    lse = [_sim_logsumexp(scaled[start:start + rows], q_all, K, inv_t, bf16)
           for start in range(0, anchors.size(0), rows)]
    per_anchor = torch.cat(lse) - pos * inv_t                    # [A, K]
    return per_anchor[inverse].mean(dim=0).sum()


def _sim_logsumexp(a: Tensor, q: Tensor, K: int, bound: float,
                   bf16: bool = False) -> Tensor:
    r""":math:`\mathrm{logsumexp}` of :math:`a q^\top` over each of the
    ``K`` column blocks, ``[A, K]``, where every entry is known to be at
    most ``bound`` (unit rows scaled by :math:`1/\tau`)."""
    if 2.0 * bound < 80.0:
        return _BoundedSimLogSumExp.apply(a, q, K, bound, bf16)
    if bf16:                             # very small tau: generic path
        sim = (a.bfloat16() @ q.bfloat16().t()).float()
    else:
        sim = a @ q.t()
    return torch.logsumexp(sim.view(sim.size(0), K, -1), dim=2)


#: Columns per float32 partial sum of a reduced-precision similarity block.
SUM_COLUMNS = 512


def _block_sums(e: Tensor, K: int) -> Tensor:
    r"""Float32 row sums of each of the ``K`` column blocks of ``e``,
    ``[A, K]``.  A bfloat16 ``e`` is summed in float32 ``SUM_COLUMNS``
    columns at a time: a float32 sum of the whole block would first copy
    it into a fresh float32 tensor twice its size."""
    v = e.unflatten(1, (K, -1))
    if e.dtype == torch.float32:
        return v.sum(dim=2)
    total = v[:, :, :SUM_COLUMNS].sum(dim=2, dtype=torch.float32)
    for start in range(SUM_COLUMNS, v.size(2), SUM_COLUMNS):
        total += v[:, :, start:start + SUM_COLUMNS].sum(
            dim=2, dtype=torch.float32)
    return total


class _BoundedSimLogSumExp(torch.autograd.Function):
    r"""``logsumexp_j (a q_j)`` per block with the known upper bound ``c``
    as the shift: :math:`c + \log\sum_j \exp(a q_j - c)`.  Exact, stable
    (every exponent lies in :math:`[-2c, 0]`), and cheaper than autograd's
    ``logsumexp`` on the ``[A, K N]`` similarity matrix :math:`S`: forward,
    one product, one in-place shift and ``exp`` over a contiguous buffer
    and one ``sum``; backward, no pass over :math:`S` at all, because the
    soft-max weights :math:`P_k = \exp(S_k - c) / Z_k` scale whole rows of
    each block (:math:`\gamma_k = g_k / Z_k`, ``[A]``):

    .. math::
        \partial a = \textstyle\sum_k \gamma_k \odot
        (\exp(S_k - c)\, q_k), \qquad
        \partial q_k = \exp(S_k - c)^\top (\gamma_k \odot a).
    """

    @staticmethod
    def forward(ctx, a: Tensor, q: Tensor, K: int, bound: float,
                bf16: bool = False) -> Tensor:
        if bf16:
            a, q = a.bfloat16(), q.bfloat16()
        e = mm_aligned(a, q.t())
        # shift and exp over the whole row-padded buffer when there is
        # one (contiguous: about twice as fast as the strided view); its
        # few padding columns are zeroed first and never read
        buf = e
        if (not e.is_contiguous() and e.storage_offset() == 0
                and e.stride(1) == 1 and e.untyped_storage().nbytes()
                == e.size(0) * e.stride(0) * e.element_size()):
            buf = e.as_strided((e.size(0), e.stride(0)), (e.stride(0), 1))
            buf[:, e.size(1):].zero_()
        buf.sub_(bound).exp_()
        total = _block_sums(e, K)
        ctx.save_for_backward(a, q, e, total)
        ctx.K = K
        return total.log() + bound

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, q, e, total = ctx.saved_tensors
        K = ctx.K
        N = q.size(0) // K
        gamma = grad / total                                     # [A, K]
        grad_a = grad_q = None
        if ctx.needs_input_grad[0]:
            grad_a = sum((e[:, k * N:(k + 1) * N] @ q[k * N:(k + 1) * N])
                         .float() * gamma[:, k:k + 1] for k in range(K))
        if ctx.needs_input_grad[1]:
            grad_q = torch.cat([
                (e[:, k * N:(k + 1) * N].t()
                 @ (a.float() * gamma[:, k:k + 1]).to(e.dtype)).float()
                for k in range(K)])
        return grad_a, grad_q, None, None, None
