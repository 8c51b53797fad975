r"""Gaussian diffusion over user interaction rows: the machinery DiffRec,
DiffMM and LD4MRec share (docs/algorithms.md §1).

:class:`GaussianDiffusion` holds the variance-linear noise schedule (§1.1),
forward noising :math:`q(x_t \mid x_0)` (§1.2), the posterior mean of an
:math:`x_0`-predicting network (§1.3), the loss weights (§1.4), the one
diffusion training loss of the library (:meth:`GaussianDiffusion.
training_loss`) and the multi-step reverse loop.  Schedules are registered
buffers (float64), so ``.to(device)`` and ``state_dict`` carry them.

Steps are 0-based in code (:math:`t = 0..T-1`).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from mmdiff.checks import check_float, check_int
from mmdiff.data.hetero import csr_entries
from mmdiff.errors import ConfigError
from mmdiff.nn.diffusion.step_sampler import ImportanceStepSampler
from mmdiff.sharding import draw_rows, gather_rows

#: Per-sample weights of the :math:`x_0` squared error
#: (:meth:`GaussianDiffusion.loss_weights`).
LOSS_WEIGHTINGS = ('snr', 'posterior_mean', 'none')

#: ``fused(x_t, t, step_weights) -> (loss, squared_error [B], extras)``: an
#: opt-in way to evaluate the weighted squared error of a denoiser without
#: materialising its ``[B, I]`` prediction (see
#: :meth:`GaussianDiffusion.training_loss`).
FusedSquaredError = Callable[[Tensor, Tensor, Tensor],
                             Tuple[Tensor, Tensor, Dict[str, Tensor]]]


def linear_var_betas(noise_scale: float, noise_min: float, noise_max: float,
                     steps: int, beta_fixed: Optional[float] = None,
                     max_beta: float = 0.999) -> Tensor:
    r"""Betas of the "linear-var" schedule (float64, ``[T]``).

    .. math::
        v_t = \mathrm{linspace}(s\cdot lo, s\cdot hi, T),\quad
        \beta_0 = v_0,\quad
        \beta_t = \min\!\Big(1 - \frac{1 - v_t}{1 - v_{t-1}}, 0.999\Big)

    ``beta_fixed`` overwrites :math:`\beta_0` (DiffMM: ``1e-4``; the LD4MRec
    Eq. 3 schedule uses none).
    """
    check_int('steps', steps, 1)
    check_float('noise_scale', noise_scale, 0, lo_open=True)
    if not 0 <= noise_min <= noise_max:
        raise ConfigError(f"need 0 <= noise_min <= noise_max, got "
                          f"{noise_min}, {noise_max}")
    v = torch.linspace(noise_scale * noise_min, noise_scale * noise_max,
                       steps, dtype=torch.float64)
    if steps == 1:
        v = torch.tensor([noise_scale * noise_min], dtype=torch.float64)
    alpha_bar = 1.0 - v
    betas = torch.empty_like(v)
    betas[0] = v[0]
    if steps > 1:
        betas[1:] = (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    if beta_fixed is not None:
        betas[0] = beta_fixed
    if not bool((betas > 0).all()) or not bool((betas < 1).all()):
        raise ConfigError(f"the noise schedule gives betas outside (0, 1): "
                          f"{betas.tolist()}")
    return betas


class GaussianDiffusion(torch.nn.Module):
    r"""DiffRec-style Gaussian diffusion with an :math:`x_0`-predicting
    denoiser.

    .. math::
        x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,
        \qquad
        \mu_\theta(x_t, t) = C^{(1)}_t \hat{x}_0 + C^{(2)}_t x_t

    with :math:`C^{(1)}_t = \beta_t\sqrt{\bar\alpha_{t-1}}/(1-\bar\alpha_t)`
    and :math:`C^{(2)}_t = (1-\bar\alpha_{t-1})\sqrt{\alpha_t}/(1-\bar
    \alpha_t)`.

    Args:
        noise_scale (float): :math:`s`.
        noise_min (float): Lower end of the variance grid.
        noise_max (float): Upper end of the variance grid.
        steps (int): :math:`T`.
        beta_fixed (float, optional): Overwrites :math:`\beta_0`.
    """

    def __init__(self, noise_scale: float = 0.1, noise_min: float = 1e-4,
                 noise_max: float = 0.02, steps: int = 5,
                 beta_fixed: Optional[float] = None):
        super().__init__()
        self.noise_scale = noise_scale
        self.noise_min = noise_min
        self.noise_max = noise_max
        self.steps = steps
        self.beta_fixed = beta_fixed
        betas = linear_var_betas(noise_scale, noise_min, noise_max, steps,
                                 beta_fixed)
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        self.register_buffer('betas', betas)
        self.register_buffer('alphas_cumprod', alpha_bar)
        self.register_buffer('alphas_cumprod_prev', alpha_bar_prev)
        self.register_buffer('sqrt_alphas_cumprod', alpha_bar.sqrt())
        self.register_buffer('sqrt_one_minus_alphas_cumprod',
                             (1.0 - alpha_bar).sqrt())
        self.register_buffer('posterior_mean_coef1',
                             betas * alpha_bar_prev.sqrt() / (1.0 - alpha_bar))
        self.register_buffer('posterior_mean_coef2',
                             (1.0 - alpha_bar_prev) * alphas.sqrt() /
                             (1.0 - alpha_bar))
        var = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        self.register_buffer('posterior_variance', var)
        log_var = torch.log(torch.cat([var[1:2], var[1:]])) if steps > 1 \
            else torch.log(var)
        self.register_buffer('posterior_log_variance_clipped', log_var)
        snr = alpha_bar / (1.0 - alpha_bar)
        self.register_buffer('snr', snr)
        w = torch.ones_like(snr)
        if steps > 1:
            w[1:] = snr[:-1] - snr[1:]
        self.register_buffer('snr_weights', w)

    @staticmethod
    def _extract(buf: Tensor, t: Tensor, like: Tensor) -> Tensor:
        return buf[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def sample_steps(self, batch_size: int, device=None,
                     generator: Optional[torch.Generator] = None) -> Tensor:
        r"""Uniform steps ``[B]`` in :math:`\{0..T-1\}`."""
        return torch.randint(self.steps, (batch_size,), device=device,
                             generator=generator)

    def q_sample(self, x0: Tensor, t: Tensor,
                 noise: Optional[Tensor] = None) -> Tensor:
        r"""Forward noising :math:`q(x_t \mid x_0)` of rows ``x0`` (``[B,
        I]``) at per-row steps ``t`` (``[B]``):
        :math:`\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,
        \epsilon` (``noise`` :math:`=\epsilon`, default a fresh draw; a
        given ``noise`` is not modified).

        ``x0`` may be a sparse CSR matrix (e.g. 0/1 interaction rows): the
        result (dense) is then :math:`\sqrt{1-\bar\alpha_t}\,\epsilon`
        with :math:`\sqrt{\bar\alpha_t}\,x_0` added at the stored entries
        only — the same numbers as for the dense ``x0`` (the same noise
        draw, the same two products and one sum per entry), without the
        dense ``x0`` or its ``[B, I]`` product."""
        if noise is None:
            # per-row draw: exact when a distributed trainer shards rows
            noise = draw_rows(x0.size(0), lambda m: torch.randn(
                (m,) + tuple(x0.shape[1:]), dtype=x0.dtype,
                device=x0.device))
        else:
            noise = noise.clone()
        if x0.layout == torch.sparse_csr:
            x_t = noise.mul_(self._extract(
                self.sqrt_one_minus_alphas_cumprod, t, noise))
            row, col, val = csr_entries(x0)
            signal = self.sqrt_alphas_cumprod[t].to(x0.dtype)[row] * val
            x_t[row, col] = x_t[row, col] + signal
            return x_t
        x_t = x0 * self._extract(self.sqrt_alphas_cumprod, t, x0)
        return x_t.add_(noise.mul_(self._extract(
            self.sqrt_one_minus_alphas_cumprod, t, x0)))

    def loss_weights(self, t: Tensor, weighting: str = 'snr') -> Tensor:
        r"""Per-sample weights ``[B]`` (float32) of the :math:`x_0` squared
        error at steps ``t`` (docs/algorithms.md §1.4):

        * ``'snr'`` — :math:`\mathrm{SNR}(t-1) - \mathrm{SNR}(t)`, 1 at
          :math:`t = 0` (DiffRec's reweighting, DiffMM);
        * ``'posterior_mean'`` — :math:`(C^{(1)}_t)^2`, the posterior-mean
          matching loss of LD4MRec Eqs. 10-11;
        * ``'none'`` — 1 (plain :math:`x_0` MSE).
        """
        if weighting == 'snr':
            return self.snr_weights[t].float()
        if weighting == 'posterior_mean':
            return self.posterior_mean_coef1[t].pow(2).float()
        if weighting == 'none':
            return torch.ones(t.numel(), device=t.device)
        raise ConfigError(f"unknown loss weighting {weighting!r}; expected "
                          f"one of {LOSS_WEIGHTINGS}")

    def training_loss(
        self,
        x0: Tensor,
        predict: Callable[[Tensor, Tensor], Tensor],
        *,
        x_start: Optional[Tensor] = None,
        weighting: str = 'snr',
        step_sampler: Optional[ImportanceStepSampler] = None,
        fused: Optional[FusedSquaredError] = None,
    ) -> Dict[str, Optional[Tensor]]:
        r"""The diffusion training loss of an :math:`x_0`-predicting
        denoiser, shared by DiffRec, DiffMM and LD4MRec (docs/algorithms.md
        §1.2-§1.5):

        .. math::
            t \sim p_t,\quad
            x_t = \sqrt{\bar\alpha_t}\,x_{start} +
            \sqrt{1-\bar\alpha_t}\,\epsilon,\quad
            \hat{x}_0 = f(x_t, t),\quad
            \mathcal{L} = \frac{1}{B}\sum_b \frac{w(t_b)}{p_{t_b} T}\,
            \frac{1}{I}\lVert x_{0,b} - \hat{x}_{0,b}\rVert^2

        with :math:`p_t` uniform (``step_sampler=None``, the factor
        :math:`1/(p_t T)` is then 1) or drawn by an
        :class:`ImportanceStepSampler`, whose loss history receives
        :math:`w(t_b)\,\mathrm{mse}_b` (before :math:`1/(p_t T)`), and
        :math:`w` from :meth:`loss_weights`.

        Args:
            x0 (Tensor): Target rows ``[B, I]`` (dense, or sparse CSR:
                kept sparse when ``fused`` is given, densified otherwise).
            predict (callable): ``predict(x_t, t) -> x0_hat [B, I]``.
            x_start (Tensor, optional): The rows that are noised (default
                ``x0``; LD4MRec may noise the raw rows while reconstructing
                softened ones).
            weighting (str): ``'snr'``, ``'posterior_mean'`` or ``'none'``.
            step_sampler (ImportanceStepSampler, optional): Importance
                sampling of :math:`t` (uniform when :obj:`None`).
            fused (callable, optional): ``fused(x_t, t, w / (p_t T)) ->
                (loss, squared_error [B], extras)`` computes the weighted
                mean and the per-row squared errors
                :math:`\lVert x_{0,b} - \hat{x}_{0,b}\rVert^2` itself
                (e.g. without forming :math:`\hat{x}_0`); ``predict`` is
                then not called.

        Returns:
            ``{'loss', 'mse' [B] (detached), 't' [B], 'x_t', 'x_hat'}``
            (``x_hat`` is :obj:`None` on the ``fused`` path) plus the
            ``extras`` of ``fused``.
        """
        if x0.layout != torch.strided and fused is None:
            x0 = x0.to_dense()
        B = x0.size(0)
        # Steps are drawn per row for the global batch (mmdiff.sharding).
        if step_sampler is not None:
            t, is_weight = draw_rows(B, lambda m: step_sampler.sample(
                m, device=x0.device))
        else:
            t, is_weight = draw_rows(B, lambda m: self.sample_steps(
                m, device=x0.device)), None
        x_t = self.q_sample(x0 if x_start is None else x_start, t)
        weights = self.loss_weights(t, weighting)
        out: Dict[str, Optional[Tensor]] = {'t': t, 'x_t': x_t,
                                            'x_hat': None}
        if fused is not None:
            step_weights = weights if is_weight is None \
                else weights * is_weight
            loss, sq, extras = fused(x_t, t, step_weights)
            mse = sq / x0.size(1)
            out.update(extras)
        else:
            x_hat = predict(x_t, t).float()
            mse = (x0 - x_hat).pow(2).mean(dim=1)
            per_sample = weights * mse
            loss = (per_sample if is_weight is None
                    else per_sample * is_weight).mean()
            out['x_hat'] = x_hat
        if step_sampler is not None:
            # the history sees the global batch, in global row order
            step_sampler.update(gather_rows(t),
                                gather_rows(weights * mse.detach()))
        out['loss'] = loss
        out['mse'] = mse.detach()
        return out

    def posterior_mean(self, x0_hat: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        r""":math:`C^{(1)}_t \hat{x}_0 + C^{(2)}_t x_t`."""
        return (self._extract(self.posterior_mean_coef1, t, x_t) * x0_hat +
                self._extract(self.posterior_mean_coef2, t, x_t) * x_t)

    def reverse(self, denoise_fn: Callable[[Tensor, Tensor], Tensor],
                x0: Tensor, sampling_steps: int = 0,
                sampling_noise: bool = False) -> Tensor:
        r"""The multi-step reverse process used to *generate* rows
        (DiffMM's regeneration, docs/algorithms.md §2.6).

        Starts at :math:`x_0` itself when ``sampling_steps == 0`` (else at
        :math:`q(x_{s-1} \mid x_0)`), then runs all :math:`T` posterior-mean
        steps :math:`t = T-1, \dots, 0` with ``denoise_fn(x_t, t) ->``
        :math:`\hat{x}_0`.
        """
        if sampling_steps < 0 or sampling_steps > self.steps:
            raise ConfigError(f"sampling_steps must be in [0, {self.steps}], "
                              f"got {sampling_steps}")
        B = x0.size(0)
        if sampling_steps == 0:
            x = x0
        else:
            t = torch.full((B,), sampling_steps - 1, dtype=torch.long,
                           device=x0.device)
            x = self.q_sample(x0, t)
        for step in range(self.steps - 1, -1, -1):
            t = torch.full((B,), step, dtype=torch.long, device=x0.device)
            x = self.posterior_mean(denoise_fn(x, t), x, t)
            if sampling_noise and step > 0:
                std = torch.exp(0.5 * self._extract(
                    self.posterior_log_variance_clipped, t, x))
                x = x + std * torch.randn_like(x)
        return x

    def extra_repr(self) -> str:
        return (f'noise_scale={self.noise_scale}, noise_min={self.noise_min}, '
                f'noise_max={self.noise_max}, steps={self.steps}, '
                f'beta_fixed={self.beta_fixed}')
