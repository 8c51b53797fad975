r"""A reusable "diffusion over interaction rows" component: one
:class:`~mmdiff.nn.diffusion.GaussianDiffusion` plus one denoiser, with
DiffMM's training loss (ALGORITHMS.md §2.6), the reverse process that
denoises clean rows, and graph regeneration from the denoised rows.

It needs no DiffMM model: any recommender can denoise its users' rows or
build a modality-aware graph with :func:`regenerate_graph`::

    diff = InteractionDiffusion.diffmm(num_items)
    out = diff.loss(rows, feature_proj=F_m, item_emb=E_I, msi_weight=0.1)
    out['loss'].backward()
    ...
    edge_index, edge_weight = regenerate_graph(
        diff, interaction_csr(data), U, I, k=1, batch_size=1024,
        keep_rate=0.5)
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmdiff.errors import ConfigError, DataError
from mmdiff.graph import (
    dropout_normalized_edges,
    normalized_edges,
)
from mmdiff.nn.denoiser import DiffMMDenoiser, mm_aligned
from mmdiff.nn.diffusion import GaussianDiffusion, ImportanceStepSampler


def _autocast(enabled: bool, device: torch.device):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class InteractionDiffusion(torch.nn.Module):
    r"""Gaussian diffusion of user interaction rows with an
    :math:`x_0`-predicting denoiser (DiffRec / DiffMM, ALGORITHMS.md §1,
    §2.6).

    Training (:meth:`loss`), for clean rows :math:`x_0` (``[B, I]``, 0/1):
    :math:`t \sim \mathcal{U}\{0..T-1\}` per row (no importance sampling,
    ALGORITHMS.md D4), :math:`x_t = \sqrt{\bar\alpha_t}x_0 +
    \sqrt{1-\bar\alpha_t}\epsilon`, :math:`\hat{x} = f_\theta(x_t, t)`,

    .. math::
        \mathcal{L}_{elbo} &= \tfrac{1}{B}\textstyle\sum_b w(t_b)\,
        \tfrac{1}{I}\lVert x_{0,b} - \hat{x}_b\rVert^2,\qquad
        w(t) = \mathrm{SNR}(t-1) - \mathrm{SNR}(t),\ w(0) = 1 \\
        \mathcal{L}_{msi} &= \tfrac{1}{B}\textstyle\sum_b \tfrac{1}{d}
        \lVert \hat{x}_b F - x_{0,b} \bar{E}_I \rVert^2 \\
        \mathcal{L} &= \mathcal{L}_{elbo} + \lambda_{msi}\,\mathcal{L}_{msi}

    :math:`\mathcal{L}_{msi}` is DiffMM's modality-aware signal injection
    (``gc_loss``): predicted interactions aggregate the modality features
    :math:`F` (``[I, d]``), observed ones the ID embeddings
    :math:`\bar{E}_I`; both are taken as constants (the caller passes
    detached, un-normalised tensors, ALGORITHMS.md D6).

    Denoising (:meth:`denoise`): start from :math:`x_0` (or
    :math:`q(x_{s-1}|x_0)` with ``sampling_steps`` :math:`= s > 0`) and run
    all :math:`T` posterior-mean steps without dropout (D5).

    For :class:`~mmdiff.nn.denoiser.DiffMMDenoiser` without ``norm`` and
    without ``sampling_noise`` the reverse process is evaluated with an exact
    algebraic rearrangement that avoids all but one ``[B, h] x [h, I]``
    product per row batch: the first layer only sees
    :math:`x` through :math:`a = W^{(x)}_1 x`, and with the posterior mean
    :math:`x_{t-1} = C^{(1)}_t \hat{x}_t + C^{(2)}_t x_t` and the linear
    output :math:`\hat{x}_t = W_{out} h_t + b_{out}`

    .. math::
        a_{t-1} = C^{(1)}_t\,(M h_t + W^{(x)}_1 b_{out}) + C^{(2)}_t\, a_t,
        \qquad M = W^{(x)}_1 W_{out}\ \ ([h \times h]),

    while :math:`C^{(2)}_0 = 0` and :math:`C^{(1)}_0 = 1` give
    :math:`x_{final} = \hat{x}_0 = W_{out} h_0 + b_{out}`.  The start
    :math:`a_{T} = W^{(x)}_1 x_0` is a sparse product (clean rows are 0/1
    with few ones).  ``fused_reverse=False`` runs the plain loop of
    :meth:`GaussianDiffusion.reverse`.

    Args:
        denoiser (torch.nn.Module): Maps ``(x_t [B, I], t [B])`` to
            :math:`\hat{x}_0` ``[B, I]``.  A
            :class:`~mmdiff.nn.denoiser.DiffMMDenoiser` also takes
            ``dropout=False`` in the reverse process; other modules are put
            in eval mode for it.
        diffusion (GaussianDiffusion): The noise schedule.
        sampling_steps (int): :math:`s`; 0 starts the reverse process at the
            clean row.  (default: ``0``)
        sampling_noise (bool): Add posterior noise in the reverse process.
            (default: :obj:`False`)
        autocast_bf16 (bool): Run the denoiser under
            ``torch.autocast(dtype=torch.bfloat16)`` (training and reverse
            process; losses stay float32).  (default: :obj:`False`)
        fused_reverse (bool): Use the rearranged reverse process when
            possible.  (default: :obj:`True`)
        fused_loss (bool): For a :class:`DiffMMDenoiser`, evaluate the loss
            without materialising :math:`\hat{x}` (see :meth:`loss`).
            (default: :obj:`True`)
        importance_sampling (bool): Draw the training steps from the loss
            history (DiffRec's ``'importance'`` sampling,
            :class:`~mmdiff.nn.diffusion.ImportanceStepSampler`; uniform
            until every step has a full history) instead of uniformly
            (DiffMM).  (default: :obj:`False`)
    """

    def __init__(self, denoiser: torch.nn.Module,
                 diffusion: GaussianDiffusion, sampling_steps: int = 0,
                 sampling_noise: bool = False, autocast_bf16: bool = False,
                 fused_reverse: bool = True, fused_loss: bool = True,
                 importance_sampling: bool = False):
        super().__init__()
        if isinstance(sampling_steps, bool) or \
                not isinstance(sampling_steps, int) or \
                not 0 <= sampling_steps <= diffusion.steps:
            raise ConfigError(f"sampling_steps must be an integer in [0, "
                              f"{diffusion.steps}], got {sampling_steps!r}")
        self.denoiser = denoiser
        self.diffusion = diffusion
        self.sampling_steps = sampling_steps
        self.sampling_noise = bool(sampling_noise)
        self.autocast_bf16 = bool(autocast_bf16)
        self.fused_reverse = bool(fused_reverse)
        self.fused_loss = bool(fused_loss)
        self.step_sampler = ImportanceStepSampler(diffusion.steps) \
            if importance_sampling else None

    @classmethod
    def diffmm(cls, num_items: int, hidden_dims: Sequence[int] = (1000,),
               time_dim: int = 10, dropout: float = 0.5, norm: bool = False,
               noise_scale: float = 0.1, noise_min: float = 1e-4,
               noise_max: float = 0.02, steps: int = 5,
               beta_fixed: Optional[float] = 1e-4, **kwargs
               ) -> 'InteractionDiffusion':
        r"""The DiffMM configuration: a :class:`DiffMMDenoiser` and the
        variance-linear schedule with :math:`\beta_0 = 10^{-4}`
        (ALGORITHMS.md §2.6, D3).  ``kwargs`` go to the constructor."""
        return cls(DiffMMDenoiser(num_items, hidden_dims, time_dim, dropout,
                                  norm),
                   GaussianDiffusion(noise_scale, noise_min, noise_max, steps,
                                     beta_fixed=beta_fixed), **kwargs)

    @property
    def num_items(self) -> int:
        return getattr(self.denoiser, 'num_items', -1)

    def _device(self) -> torch.device:
        for p in self.denoiser.parameters():
            return p.device
        return self.diffusion.betas.device

    def _call_denoiser(self, x: Tensor, t: Tensor, dropout: bool) -> Tensor:
        if isinstance(self.denoiser, DiffMMDenoiser):
            return self.denoiser(x, t, dropout=dropout)
        return self.denoiser(x, t)

    # ------------------------------------------------------------------
    def loss(self, x0: Tensor, *, feature_proj: Optional[Tensor] = None,
             item_emb: Optional[Tensor] = None,
             msi_weight: float = 0.0) -> Dict[str, Tensor]:
        r"""One diffusion training step's loss on clean rows ``x0``
        (``[B, I]``).

        Args:
            x0 (Tensor): Clean interaction rows (dense, 0/1).
            feature_proj (Tensor, optional): :math:`F` ``[I, d]`` (treated as
                a constant).
            item_emb (Tensor, optional): :math:`\bar{E}_I` ``[I, d]``
                (treated as a constant).
            msi_weight (float): :math:`\lambda_{msi}` (DiffMM's ``e_loss``);
                the MSI term is computed when it is non-zero and both
                matrices are given.

        Returns:
            ``{'loss', 'elbo', 'msi'}`` (scalars; ``msi`` is 0 when
            skipped).

        With a :class:`~mmdiff.nn.denoiser.DiffMMDenoiser` (linear last
        layer :math:`\hat{x} = H W^\top + \mathbf{1}b^\top`) and
        ``fused_loss``, both terms and their gradients are computed without
        the ``[B, I]`` matrix :math:`\hat{x}` (exact rearrangement,
        :class:`_LinearOutputLoss`): the squared error uses the Gram matrix
        :math:`W^\top W` and the sparse clean rows, the MSI term uses
        :math:`W^\top F`, and :math:`\partial/\partial W = W (H^\top
        \mathrm{diag}(\alpha) H) + \dots`.  This replaces three
        ``[B, h] x [h, I]``-sized products by two.
        """
        diff = self.diffusion
        if x0.layout != torch.strided:
            x0 = x0.to_dense()
        B = x0.size(0)
        if self.step_sampler is not None:
            t, is_weight = self.step_sampler.sample(B, device=x0.device)
        else:
            t, is_weight = diff.sample_steps(B, device=x0.device), None
        # q_sample (§1.2), in place on the fresh noise (same draws).
        x_t = torch.randn_like(x0).mul_(
            diff.sqrt_one_minus_alphas_cumprod[t].to(x0.dtype)[:, None])
        x_t.addcmul_(x0, diff.sqrt_alphas_cumprod[t].to(x0.dtype)[:, None])
        use_msi = (msi_weight != 0 and feature_proj is not None
                   and item_emb is not None)
        if use_msi and (feature_proj.size(0) != x0.size(1) or
                        item_emb.size(0) != x0.size(1)):
            raise DataError(f"feature_proj and item_emb need {x0.size(1)} "
                            f"rows (one per item), got "
                            f"{feature_proj.size(0)} and {item_emb.size(0)}")
        weights = diff.snr_weights[t].float()
        step_weights = weights if is_weight is None else weights * is_weight
        with _autocast(self.autocast_bf16, x0.device):
            inp = x_t.to(torch.bfloat16) if self.autocast_bf16 else x_t
            if self.fused_loss and isinstance(self.denoiser, DiffMMDenoiser):
                h = self.denoiser.hidden_state(inp, t, dropout=True)
            else:
                h = None
                x_hat = self._call_denoiser(inp, t, dropout=True)
        if h is not None:
            rows, cols = x0.nonzero(as_tuple=True)
            vals = x0[rows, cols]
            target = None
            if use_msi:
                e = item_emb.detach().float()
                target = torch.zeros(B, e.size(1), device=x0.device) \
                    .index_add_(0, rows, e[cols] * vals[:, None])
            last = self.denoiser.last_layer
            elbo, msi, sq = _LinearOutputLoss.apply(
                h.float(), last.weight, last.bias, rows, cols, vals,
                step_weights, feature_proj.detach().float() if use_msi
                else None, target, self.autocast_bf16)
            mse = sq / x0.size(1)
        else:
            x_hat = x_hat.float()
            mse = (x0 - x_hat).pow(2).mean(dim=1)
            elbo = (step_weights * mse).mean()
            if use_msi:
                pred = x_hat @ feature_proj.detach()
                target = x0 @ item_emb.detach()
                msi = (pred - target).pow(2).mean(dim=1).mean()
            else:
                msi = elbo.new_zeros(())
        if self.step_sampler is not None:
            # DiffRec's history holds the reweighted losses before 1/p_t.
            self.step_sampler.update(t, weights * mse.detach())
        loss = elbo + msi_weight * msi if use_msi else elbo
        return {'loss': loss, 'elbo': elbo.detach(),
                'msi': msi.detach() if use_msi else elbo.new_zeros(())}

    # ------------------------------------------------------------------
    def _can_fuse(self) -> bool:
        d = self.diffusion
        return (self.fused_reverse and isinstance(self.denoiser,
                                                  DiffMMDenoiser)
                and not self.denoiser.norm and not self.sampling_noise
                and float(d.posterior_mean_coef2[0]) == 0.0)

    @torch.no_grad()
    def denoise(self, x0: Tensor) -> Tensor:
        r"""Runs the full reverse process from the clean rows ``x0``
        (``[B, I]``, dense or sparse CSR) without dropout and returns the
        generated rows ``[B, I]`` (dense, float32)."""
        with _autocast(self.autocast_bf16, x0.device):
            if self._can_fuse():
                out = self._fused_denoise(x0)
            else:
                if x0.layout != torch.strided:
                    x0 = x0.to_dense()
                out = self._plain_denoise(x0)
        return out.float()

    @torch.no_grad()
    def denoise_topk(self, x0: Tensor, k: int,
                     exclude: Optional[Tensor] = None,
                     refine: int = 16) -> Tuple[Tensor, Tensor]:
        r"""The ``k`` highest entries of every generated row,
        ``(values [B, k], items [B, k])``, as :meth:`denoise` followed by
        ``topk`` (``exclude``: ``[B, I]`` boolean mask of items that may not
        be chosen).

        Under ``autocast_bf16`` the generated rows carry ~3 significant
        digits, so near-equal items would tie and ``topk`` would pick by
        index.  Here the ``k + refine`` best items of the bfloat16 rows are
        re-scored exactly (float32 output layer on those candidates only),
        which restores the float32 ranking at a negligible cost unless more
        than ``refine`` items sit within bfloat16 rounding of the
        ``k``-th."""
        I = x0.size(1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= I:
            raise ConfigError(f"k must be an integer in [1, {I}], got {k!r}")
        if not (self.autocast_bf16 and self._can_fuse()):
            gen = self.denoise(x0)
            if exclude is not None:
                gen = gen.masked_fill(exclude, float('-inf'))
            return gen.topk(k, dim=1)
        with _autocast(True, x0.device):
            h = self._fused_denoise(x0, return_hidden=True)
            approx = self.denoiser.output(h).float()
        if exclude is not None:
            approx.masked_fill_(exclude, float('-inf'))
        cand = approx.topk(min(k + max(int(refine), 0), I), dim=1).indices
        last = self.denoiser.last_layer
        w = last.weight.float()[cand]                            # [B, c, h]
        exact = torch.bmm(w, h.float().unsqueeze(2)).squeeze(2) \
            + last.bias.float()[cand]
        exact.mul_(float(self.diffusion.posterior_mean_coef1[0]))
        if exclude is not None:
            exact.masked_fill_(exclude.gather(1, cand), float('-inf'))
        vals, pos = exact.topk(k, dim=1)
        return vals, cand.gather(1, pos)

    def _plain_denoise(self, x0: Tensor) -> Tensor:
        was_training = self.denoiser.training
        if not isinstance(self.denoiser, DiffMMDenoiser):
            self.denoiser.eval()
        try:
            return self.diffusion.reverse(
                lambda x, t: self._call_denoiser(x, t, dropout=False),
                x0, self.sampling_steps, self.sampling_noise)
        finally:
            self.denoiser.train(was_training)

    def _reverse_constants(self) -> Tuple[Tensor, Tensor, Tensor]:
        r"""``(W_x^T [I, h], M = W_x W_out [h, h'], W_x b_out [h])``, cached
        until a weight changes (Adam steps and ``load_state_dict`` bump the
        tensors' version counters)."""
        den: DiffMMDenoiser = self.denoiser
        w1 = den.first_layer.weight
        w_out, b_out = den.last_layer.weight, den.last_layer.bias
        dev = w1.device
        key = (w1.data_ptr(), w1._version, w_out.data_ptr(),
               w_out._version, b_out.data_ptr(), b_out._version,
               torch.is_autocast_enabled(dev.type), str(dev))
        cache = getattr(self, '_rev_cache', None)
        if cache is None or cache[0] != key:
            w_x = w1[:, :den.num_items]
            with torch.autocast(device_type=dev.type, enabled=False):
                w_xt = w_x.t().contiguous()
            m = w_x @ w_out
            c = w_x @ b_out
            cache = (key, (w_xt, m, c))
            self._rev_cache = cache
        return cache[1]

    def clear_cache(self) -> None:
        r"""Frees the cached reverse-process constants."""
        self._rev_cache = None

    def _fused_denoise(self, x0: Tensor,
                       return_hidden: bool = False) -> Tensor:
        den: DiffMMDenoiser = self.denoiser
        diff = self.diffusion
        B, dev = x0.size(0), x0.device
        w_xt, m, c = self._reverse_constants()
        if self.sampling_steps == 0:
            # a_T = W_x x_0 with sparse clean rows (full precision).
            x_start = x0.to_sparse_csr() if x0.layout == torch.strided \
                else x0
            with torch.autocast(device_type=dev.type, enabled=False):
                a = torch.sparse.mm(x_start.to(w_xt.dtype), w_xt)
        else:
            if x0.layout != torch.strided:
                x0 = x0.to_dense()
            t = torch.full((B,), self.sampling_steps - 1, dtype=torch.long,
                           device=dev)
            a = den.input_projection(diff.q_sample(x0, t))
        c1 = diff.posterior_mean_coef1
        c2 = diff.posterior_mean_coef2
        for step in range(diff.steps - 1, 0, -1):
            t = torch.full((B,), step, dtype=torch.long, device=dev)
            h = den.hidden(a + den.step_term(t))
            a = float(c1[step]) * (h @ m.t() + c) + float(c2[step]) * a
        t = torch.zeros(B, dtype=torch.long, device=dev)
        h = den.hidden(a + den.step_term(t))
        if return_hidden:
            return h
        last = den.last_layer
        if (not self.autocast_bf16 and h.dtype == torch.float32
                and last.weight.dtype == torch.float32):
            out = mm_aligned(h, last.weight.t(), last.bias)
        else:
            out = den.output(h)
        return out.mul_(float(c1[0])) if float(c1[0]) != 1.0 else out

    def extra_repr(self) -> str:
        return (f'sampling_steps={self.sampling_steps}, '
                f'sampling_noise={self.sampling_noise}, '
                f'autocast_bf16={self.autocast_bf16}')


class _LinearOutputLoss(torch.autograd.Function):
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
        gram = (wm.t() @ wm).float()                             # [k, k]
        wb = weight.t() @ bias                                   # [k]
        x0w = torch.zeros_like(h).index_add_(
            0, rows, weight[cols] * vals[:, None])               # [B, k]
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
        grad_w.index_add_(0, cols, -vals[:, None] * ah[rows])
        grad_b = weight @ ah.sum(0) + bias * alpha.sum()
        grad_b.index_add_(0, cols, -vals * alpha[rows])
        if feat is not None:
            beta = 2.0 * g_msi / s.numel()
            grad_h = grad_h + beta * (s @ wf.t())
            grad_w.addmm_(feat, s.t() @ h, alpha=float(beta))
            grad_b = grad_b + beta * (feat @ s.sum(0))
        return (grad_h, grad_w, grad_b, None, None, None, None, None, None,
                None)


def _row_batches(source, num_users: int, batch_size: int,
                 device: torch.device) -> Iterator[Tuple[Tensor, Tensor]]:
    r"""``(users [B], rows [B, I] as a 0/1 sparse CSR tensor)`` for
    consecutive user batches, sliced from the CSR structure (no dense
    ``[U, I]``, no Python loop over users)."""
    from mmdiff.data.samplers import UserRowSampler
    if isinstance(source, UserRowSampler):
        crow, col = source.crow, source.col
        n_rows, num_items = source.num_users, source.num_items
    elif isinstance(source, Tensor) and source.layout == torch.sparse_csr:
        crow, col = source.crow_indices(), source.col_indices()
        n_rows, num_items = source.shape
    else:
        raise DataError("expected a [U, I] sparse CSR interaction matrix or "
                        "a UserRowSampler")
    if n_rows != num_users:
        raise DataError(f"the interaction matrix has {n_rows} rows, expected "
                        f"{num_users} users")
    crow, col = crow.to(device), col.to(device)
    for start in range(0, num_users, batch_size):
        end = min(start + batch_size, num_users)
        lo, hi = int(crow[start]), int(crow[end])
        rows = torch.sparse_csr_tensor(
            crow[start:end + 1] - lo, col[lo:hi],
            torch.ones(hi - lo, device=device), size=(end - start, num_items))
        yield torch.arange(start, end, device=device), rows


@torch.no_grad()
def generate_topk_edges(diffusion: InteractionDiffusion, csr_or_sampler,
                        num_users: int, num_items: int, k: int,
                        batch_size: int = 1024,
                        exclude_observed: bool = False) -> Tensor:
    r"""Denoises every user's training row (in batches of ``batch_size``,
    in user order) and keeps the top-``k`` items of each generated row:
    ``[2, U * k]`` (user, item) edges on the denoiser's device
    (ALGORITHMS.md §2.6 steps 1-2).  Observed items are candidates unless
    ``exclude_observed`` (DiffMM keeps them, D5)."""
    if isinstance(k, bool) or not isinstance(k, int) or \
            not 1 <= k <= num_items:
        raise ConfigError(f"rebuild k must be an integer in [1, {num_items}],"
                          f" got {k!r}")
    device = diffusion._device()
    parts = []
    try:
        for users, rows in _row_batches(csr_or_sampler, num_users,
                                        batch_size, device):
            if rows.size(1) != num_items:
                raise DataError(f"interaction rows have {rows.size(1)} "
                                f"columns, expected {num_items}")
            exclude = rows.to_dense() > 0 if exclude_observed else None
            _, items = diffusion.denoise_topk(rows, k, exclude=exclude)
            parts.append(torch.stack([users.repeat_interleave(k),
                                      items.reshape(-1)]))
    finally:
        diffusion.clear_cache()
    return torch.cat(parts, dim=1)


@torch.no_grad()
def regenerate_graph(diffusion: InteractionDiffusion, csr_or_sampler,
                     num_users: int, num_items: int, k: int,
                     batch_size: int = 1024, keep_rate: float = 1.0,
                     add_self_loops: bool = True,
                     exclude_observed: bool = False,
                     generator: Optional[torch.Generator] = None
                     ) -> Tuple[Tensor, Tensor]:
    r"""DiffMM's modality-aware graph regeneration (ALGORITHMS.md §2.6):
    denoised rows :math:`\to` top-:math:`k` items per user :math:`\to`
    :math:`\hat{G} = D^{-1/2}(A + I)D^{-1/2}` over the :math:`U + I` joint
    nodes :math:`\to` edge dropout with rescaling (keep probability
    ``keep_rate``, self-loops included, the two directions independently).

    Args:
        diffusion (InteractionDiffusion): A trained diffusion component.
        csr_or_sampler: ``[U, I]`` training interactions (sparse CSR) or a
            :class:`~mmdiff.data.samplers.UserRowSampler`.
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        k (int): Items kept per user (``rebuild_k``).
        batch_size (int): Users per denoising batch.
        keep_rate (float): Edge keep probability :math:`\rho` (1 = none
            dropped).
        add_self_loops (bool): Add :math:`I_N` before normalising.
        exclude_observed (bool): Never pick a user's training items.
        generator (torch.Generator, optional): Randomness of the dropout.

    Returns:
        ``(edge_index [2, E], edge_weight [E])`` — the entries
        ``(row, col)`` of the matrix :math:`\hat{G}` (``out = G @ x``), on
        the denoiser's device; before dropout
        :math:`E = 2Uk + (U + I)` with self-loops.  Pass them through
        :func:`mmdiff.nn.conv.multimodal_aggregation.matrix_to_adj` to
        propagate.
    """
    edges = generate_topk_edges(diffusion, csr_or_sampler, num_users,
                                num_items, k, batch_size, exclude_observed)
    ei, w = normalized_edges(edges, num_users, num_items,
                             add_self_loops=add_self_loops)
    return dropout_normalized_edges(ei, w, keep_rate, generator)
