r"""Private fused kernels of the diffusion path.  Nothing here is public API:
the library uses these only for denoisers that declare the matching
capability (:mod:`mmdiff.nn.denoisers.base`), and every kernel is tested
against the plain computation it replaces.

* :func:`mm_aligned` — a float32 product with a padded row stride.
* :func:`gather_index_add_` — ``index_add_`` of gathered rows in chunks.
* :func:`gram_matrix` — :math:`W^\top W` from the upper block triangle.
* :class:`FirstLayer` — the first layer of :class:`~mmdiff.nn.denoisers.
  DiffMMDenoiser` without the ``[B, I]`` gradient of its constant input.
* :class:`LinearOutputLoss` — SNR-weighted squared error and MSI of a
  linear output layer without forming the ``[B, I]`` prediction
  (capability ``'linear_output'``).
* :func:`fused_denoise` — the reverse process of a denoiser with a linear
  first and last layer, one ``[B, h] x [h, I]`` product per row batch
  (capabilities ``'linear_input'`` and ``'linear_output'``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


#: Row strides (in elements) of large float32 matrix-product outputs are
#: rounded up to a multiple of this; see :func:`mm_aligned`.
ALIGN = 16


#: Largest gathered block (elements) :func:`gather_index_add_` forms at once:
#: 2**22 floats = 16 MB, below the size from which glibc hands out fresh
#: (page-faulting) memory on every allocation.
GATHER_ELEMENTS = 2 ** 22


def gather_index_add_(out: Tensor, index: Tensor, src: Tensor,
                      src_index: Tensor, scale: Optional[Tensor] = None,
                      max_elements: int = GATHER_ELEMENTS) -> Tensor:
    r"""``out.index_add_(0, index, src[src_index] * scale[:, None])``
    (without ``scale``: no product).  When the gathered ``[n, d]`` block
    would exceed ``max_elements`` it is formed and added in consecutive
    chunks of entries, in entry order, so that every row of ``out``
    receives the same additions in the same order (bit for bit the one-shot
    result): a one-shot gather of every non-zero (e.g. ``[10^4, 1000]``
    floats, 40 MB) is fresh memory on every call, and faulting in fresh
    pages costs more than the gather itself.  Smaller blocks go in one call
    (each ``index_add_`` is a parallel region of its own)."""
    d = max(1, src[0].numel()) if src.size(0) else 1
    chunk = max(1, max_elements // d)
    n = index.numel()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        part = src[src_index[start:stop]]
        if scale is not None:
            part = part * scale[start:stop, None]
        out.index_add_(0, index[start:stop], part)
    return out


#: Column strips of :func:`gram_matrix` on CPU; Gram matrices with fewer than
#: :data:`GRAM_MIN` columns use one plain product.
GRAM_STRIPS = 4
GRAM_MIN = 256


def gram_matrix(w: Tensor, strips: int = GRAM_STRIPS) -> Tensor:
    r""":math:`W^\top W` (``[k, k]``) of ``w`` (``[n, k]``) at about
    :math:`\frac{1}{2}(1 + 1/s)` of the multiply-adds of a plain product.

    The columns are cut into :math:`s` = ``strips`` strips; strip :math:`i`
    gives the block row :math:`W_i^\top [W_i, \ldots, W_s]` (the diagonal
    block and everything right of it) in one product, and the blocks below
    the diagonal are the transposes of those above.  Every entry is the
    same dot product over the :math:`n` rows as in ``w.t() @ w``, and with
    MKL/oneDNN on x86 (float32 and bfloat16) the result is bit for bit the
    plain product's (checked in the tests; elsewhere it agrees to float
    rounding).  Used on CPU for :math:`k \ge` :data:`GRAM_MIN`; other
    devices and small matrices take the plain product."""
    k = w.size(1)
    if w.device.type != 'cpu' or k < max(GRAM_MIN, 2 * strips) or \
            strips < 2:
        return w.t() @ w
    s = [k * i // strips for i in range(strips + 1)]
    out = w.new_empty(k, k)
    for i in range(strips):
        a, b = s[i], s[i + 1]
        out[a:b, a:].addmm_(w[:, a:b].t(), w[:, a:], beta=0)
    for i in range(1, strips):
        a, b = s[i], s[i + 1]
        out[a:b, :a] = out[:a, a:b].t()
    return out


def mm_aligned(a: Tensor, b: Tensor, bias: Optional[Tensor] = None
               ) -> Tensor:
    r""":math:`a b` (+ ``bias`` broadcast over rows) for plain tensors (no
    autograd), written into a buffer whose row stride is a multiple of
    :data:`ALIGN` elements; returns the ``[M, N]`` view.

    On x86 CPUs a float32 GEMM whose output rows are not 32-byte aligned
    (e.g. :math:`N = 6710` items) runs markedly slower than the same
    product with a padded row stride (MKL/oneDNN on AVX-512).  Other
    devices, dtypes, aligned or small outputs use a plain product.
    """
    M, N = a.size(0), b.size(1)
    if (a.device.type != 'cpu' or a.dtype != torch.float32
            or b.dtype != torch.float32 or N % ALIGN == 0 or M * N < 2 ** 20):
        return torch.addmm(bias, a, b) if bias is not None else a @ b
    pad = -(-N // ALIGN) * ALIGN
    out = torch.empty(M, pad, dtype=a.dtype, device=a.device)[:, :N]
    if bias is None:
        out.addmm_(a, b, beta=0)
    else:
        out.copy_(bias.expand(M, N))
        out.addmm_(a, b)
    return out


class FirstLayer(torch.autograd.Function):
    r""":math:`x W_x^\top + e W_e^\top + b` for ``weight = [W_x | W_e]``
    (float32, CPU), with the weight gradient written straight into an
    aligned ``[h, I + d_t]`` buffer (no slice-gradient copies, no
    misaligned GEMM output) and no gradient for the constant rows ``x``."""

    @staticmethod
    def forward(ctx, x, emb, weight, bias):
        n = x.size(1)
        ctx.save_for_backward(x, emb, weight)
        return torch.addmm(torch.addmm(bias, emb, weight[:, n:].t()), x,
                           weight[:, :n].t())

    @staticmethod
    def backward(ctx, grad):
        x, emb, weight = ctx.saved_tensors
        n = x.size(1)
        h, cols = weight.shape
        pad = -(-cols // ALIGN) * ALIGN
        grad_w = torch.empty(h, pad, dtype=weight.dtype,
                             device=weight.device)[:, :cols]
        grad_w[:, :n].addmm_(grad.t(), x, beta=0)
        grad_w[:, n:] = grad.t() @ emb
        grad_x = grad @ weight[:, :n] if ctx.needs_input_grad[0] else None
        grad_emb = grad @ weight[:, n:] if ctx.needs_input_grad[1] else None
        return grad_x, grad_emb, grad_w, grad.sum(0)


class LinearOutputLoss(torch.autograd.Function):
    r"""SNR-weighted squared error and MSI of a linear output layer
    :math:`\hat{x} = H W^\top + \mathbf{1} b^\top` without forming
    :math:`\hat{x}` (``[B, I]``).

    With clean rows :math:`x_0` given by their non-zeros ``(rows, cols,
    vals)``, per-row weights :math:`w`, :math:`G = W^\top W`:

    .. math::
        \lVert \hat{x}_b - x_{0,b}\rVert^2 &= h_b^\top G h_b
        + 2 h_b^\top W^\top b + \lVert b\rVert^2
        - 2\,(h_b^\top W^\top x_{0,b} + b^\top x_{0,b})
        + \lVert x_{0,b}\rVert^2 \\
        \mathrm{elbo} &= \tfrac{1}{BI}\textstyle\sum_b w_b
        \lVert \hat{x}_b - x_{0,b}\rVert^2, \qquad
        \mathrm{msi} = \tfrac{1}{Bd}\lVert H W^\top F + \mathbf{1}
        b^\top F - T\rVert^2

    and with :math:`\alpha_b = \frac{2 w_b}{BI}\bar{g}_{elbo}`,
    :math:`S = \hat{x}F - T`, :math:`\beta = \frac{2}{Bd}\bar{g}_{msi}`:
    :math:`\partial H = \mathrm{diag}(\alpha)(HG + \mathbf{1}(W^\top b)^\top
    - x_0 W) + \beta S F^\top W`,
    :math:`\partial W = W(H^\top \mathrm{diag}(\alpha) H) + b\,(\alpha^\top
    H) - x_0^\top \mathrm{diag}(\alpha) H + \beta F S^\top H`,
    :math:`\partial b = W H^\top\alpha + b\sum\alpha - x_0^\top\alpha +
    \beta F S^\top \mathbf{1}`.
    ``bf16`` computes the two ``[I, h]``-sized products in bfloat16.  The
    third output, the per-row squared errors ``[B]`` (no gradient), feeds
    the importance sampler."""

    @staticmethod
    def forward(ctx, h, weight, bias, rows, cols, vals, w, feat, target,
                bf16):
        B, I = h.size(0), weight.size(0)
        wm = weight.bfloat16() if bf16 else weight
        gram = gram_matrix(wm).float()                           # [k, k]
        wb = weight.t() @ bias                                   # [k]
        # 0/1 rows (the usual case) need no scaling of the gathered rows;
        # checked on CPU only, where it costs no device synchronisation
        ones = vals.device.type == 'cpu' and bool((vals == 1).all())
        x0w = gather_index_add_(torch.zeros_like(h), rows, weight, cols,
                                None if ones else vals)          # [B, k]
        x0b = h.new_zeros(B).index_add_(0, rows, bias[cols] * vals)
        x0sq = h.new_zeros(B).index_add_(0, rows, vals * vals)
        hg = h @ gram
        sq = ((hg + 2.0 * wb) * h).sum(1) + bias.dot(bias) \
            - 2.0 * ((h * x0w).sum(1) + x0b) + x0sq
        elbo = (w * sq).sum() / (B * I)
        if feat is not None:
            wf = weight.t() @ feat                               # [k, d]
            s = h @ wf + feat.t() @ bias - target                # [B, d]
            msi = s.pow(2).mean()
        else:
            wf = s = None
            msi = elbo.new_zeros(())
        ctx.save_for_backward(h, weight, bias, rows, cols, vals, w, hg, wb,
                              x0w, feat, wf, s)
        ctx.bf16 = bf16
        sq = sq.detach()
        ctx.mark_non_differentiable(sq)
        return elbo, msi, sq

    @staticmethod
    def backward(ctx, g_elbo, g_msi, g_sq):
        h, weight, bias, rows, cols, vals, w, hg, wb, x0w, feat, wf, s = \
            ctx.saved_tensors
        B, I = h.size(0), weight.size(0)
        alpha = w * (2.0 * g_elbo / (B * I))                     # [B]
        ah = alpha[:, None] * h                                  # [B, k]
        grad_h = alpha[:, None] * (hg + wb[None, :] - x0w)
        m = h.t() @ ah                                           # [k, k]
        if ctx.bf16:
            grad_w = (weight.bfloat16() @ m.bfloat16()).float()
        else:
            grad_w = weight @ m
        grad_w.addr_(bias, ah.sum(0))
        gather_index_add_(grad_w, cols, ah, rows, -vals)
        grad_b = weight @ ah.sum(0) + bias * alpha.sum()
        grad_b.index_add_(0, cols, -vals * alpha[rows])
        if feat is not None:
            beta = 2.0 * g_msi / s.numel()
            grad_h = grad_h + beta * (s @ wf.t())
            grad_w.addmm_(feat, s.t() @ h, alpha=float(beta))
            grad_b = grad_b + beta * (feat @ s.sum(0))
        return (grad_h, grad_w, grad_b, None, None, None, None, None, None,
                None)


def reverse_constants(diff) -> Tuple[Tensor, Tensor, Tensor]:
    r"""``(W_x^T [I, h], M = W_x W_out [h, h'], W_x b_out [h])`` of the
    denoiser of the :class:`~mmdiff.nn.diffusion.InteractionDiffusion`
    ``diff``, cached on it until a weight changes (Adam steps and
    ``load_state_dict`` bump the tensors' version counters)."""
    den = diff.denoiser
    w1 = den.first_layer.weight
    w_out, b_out = den.output_layer.weight, den.output_layer.bias
    dev = w1.device
    key = (w1.data_ptr(), w1._version, w_out.data_ptr(),
           w_out._version, b_out.data_ptr(), b_out._version,
           torch.is_autocast_enabled(dev.type), str(dev))
    cache = getattr(diff, '_rev_cache', None)
    if cache is None or cache[0] != key:
        w_x = w1[:, :den.num_items]
        with torch.autocast(device_type=dev.type, enabled=False):
            w_xt = w_x.t().contiguous()
        m = w_x @ w_out
        c = w_x @ b_out
        cache = (key, (w_xt, m, c))
        diff._rev_cache = cache
    return cache[1]


def fused_denoise(diff, x0: Tensor, return_hidden: bool = False) -> Tensor:
    r"""The reverse process of ``diff`` (an
    :class:`~mmdiff.nn.diffusion.InteractionDiffusion` whose denoiser has
    both capabilities, without sampling noise, with :math:`C^{(2)}_0 = 0`)
    by the rearrangement documented there; ``return_hidden`` returns the
    last hidden state :math:`h_0` instead of :math:`\hat{x}_0`."""
    den = diff.denoiser
    gd = diff.diffusion
    B, dev = x0.size(0), x0.device
    w_xt, m, c = reverse_constants(diff)
    if diff.sampling_steps == 0:
        # a_T = W_x x_0 with sparse clean rows (full precision).
        x_start = x0.to_sparse_csr() if x0.layout == torch.strided \
            else x0
        with torch.autocast(device_type=dev.type, enabled=False):
            a = torch.sparse.mm(x_start.to(w_xt.dtype), w_xt)
    else:
        if x0.layout != torch.strided:
            x0 = x0.to_dense()
        t = torch.full((B,), diff.sampling_steps - 1, dtype=torch.long,
                       device=dev)
        a = den.input_projection(gd.q_sample(x0, t))
    c1 = gd.posterior_mean_coef1
    c2 = gd.posterior_mean_coef2
    for step in range(gd.steps - 1, 0, -1):
        t = torch.full((B,), step, dtype=torch.long, device=dev)
        h = den.hidden(a + den.step_term(t))
        a = float(c1[step]) * (h @ m.t() + c) + float(c2[step]) * a
    t = torch.zeros(B, dtype=torch.long, device=dev)
    h = den.hidden(a + den.step_term(t))
    if return_hidden:
        return h
    last = den.output_layer
    if (not diff.autocast_bf16 and h.dtype == torch.float32
            and last.weight.dtype == torch.float32):
        out = mm_aligned(h, last.weight.t(), last.bias)
    else:
        out = den.output(h)
    return out.mul_(float(c1[0])) if float(c1[0]) != 1.0 else out
