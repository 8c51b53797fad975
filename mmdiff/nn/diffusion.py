r"""Gaussian diffusion over user interaction rows: the machinery DiffRec,
DiffMM and LD4MRec share (ALGORITHMS.md §1).

* :class:`GaussianDiffusion` — the variance-linear noise schedule (§1.1),
  forward noising :math:`q(x_t \mid x_0)` (§1.2), the posterior mean of an
  :math:`x_0`-predicting network (§1.3), SNR weights (§1.4) and the
  multi-step reverse loop.  Schedules are registered buffers (float64), so
  ``.to(device)`` and ``state_dict`` carry them.
* :class:`ImportanceStepSampler` — DiffRec's importance sampling of the
  step from a history of losses (§1.5), vectorised.
* :func:`timestep_embedding` — sinusoidal step embeddings in the DiffRec
  (cos | sin) and the LD4MRec (interleaved sin, cos) forms (§1.6).

Steps are 0-based in code (:math:`t = 0..T-1`).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from mmdiff.errors import ConfigError


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
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if noise_scale <= 0:
        raise ConfigError(f"noise_scale must be > 0, got {noise_scale}")
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
        I]``) at per-row steps ``t`` (``[B]``)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return (self._extract(self.sqrt_alphas_cumprod, t, x0) * x0 +
                self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) *
                noise)

    def posterior_mean(self, x0_hat: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        r""":math:`C^{(1)}_t \hat{x}_0 + C^{(2)}_t x_t`."""
        return (self._extract(self.posterior_mean_coef1, t, x_t) * x0_hat +
                self._extract(self.posterior_mean_coef2, t, x_t) * x_t)

    def reverse(self, denoise_fn: Callable[[Tensor, Tensor], Tensor],
                x0: Tensor, sampling_steps: int = 0,
                sampling_noise: bool = False) -> Tensor:
        r"""The multi-step reverse process used to *generate* rows
        (DiffMM's regeneration, ALGORITHMS.md §2.6).

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


class ImportanceStepSampler(torch.nn.Module):
    r"""Importance sampling of the diffusion step from a history of losses
    (DiffRec; LD4MRec Eq. 13; ALGORITHMS.md §1.5).

    While any step has fewer than ``history`` recorded losses, steps are
    drawn uniformly with weight 1.  Afterwards

    .. math::
        q_t = \sqrt{\tfrac{1}{K}\textstyle\sum_k H_{t,k}^2},\quad
        p_t = (1-u)\frac{q_t}{\sum_{t'} q_{t'}} + \frac{u}{T}

    and every sample's loss is divided by :math:`p_t T`.  The history is a
    FIFO per step; :meth:`update` is vectorised (batch order is respected).

    Args:
        steps (int): :math:`T`.
        history (int): :math:`K` losses kept per step.  (default: ``10``)
        uniform_mix (float): :math:`u`.  (default: ``0.001``)
    """

    def __init__(self, steps: int, history: int = 10,
                 uniform_mix: float = 0.001):
        super().__init__()
        self.steps = steps
        self.history = history
        self.uniform_mix = uniform_mix
        self.register_buffer('loss_history',
                             torch.zeros(steps, history, dtype=torch.float64))
        self.register_buffer('count', torch.zeros(steps, dtype=torch.long))

    @property
    def warm(self) -> bool:
        return bool((self.count >= self.history).all())

    def probabilities(self) -> Tensor:
        if not self.warm:
            return torch.full((self.steps,), 1.0 / self.steps,
                              dtype=torch.float64, device=self.count.device)
        q = self.loss_history.pow(2).mean(1).sqrt()
        p = q / q.sum()
        return (1.0 - self.uniform_mix) * p + self.uniform_mix / self.steps

    def sample(self, batch_size: int, device=None,
               generator: Optional[torch.Generator] = None
               ) -> Tuple[Tensor, Tensor]:
        r"""Returns steps ``t`` (``[B]``) and per-sample weights ``1/(p_t
        T)`` (``[B]``, float32; all ones during warm-up)."""
        device = device if device is not None else self.count.device
        if not self.warm:
            t = torch.randint(self.steps, (batch_size,), generator=generator,
                              device=device)
            return t, torch.ones(batch_size, device=device)
        p = self.probabilities()
        t = torch.multinomial(p.to(device), batch_size, replacement=True,
                              generator=generator)
        w = 1.0 / (p.to(device)[t] * self.steps)
        return t, w.float()

    @torch.no_grad()
    def update(self, t: Tensor, losses: Tensor) -> None:
        r"""Pushes the detached per-sample ``losses`` at steps ``t`` into the
        history, oldest out first, in batch order (vectorised)."""
        t = t.to(self.count.device)
        losses = losses.detach().to(self.loss_history.dtype).to(
            self.count.device)
        K = self.history
        order = torch.argsort(t, stable=True)
        t_s, l_s = t[order], losses[order]
        n_per = torch.bincount(t_s, minlength=self.steps)
        start = torch.cumsum(n_per, 0) - n_per
        rank = torch.arange(t_s.numel(), device=t_s.device) - start[t_s]
        # Only the last K new values per step can survive.
        keep = rank >= (n_per[t_s] - K)
        t_s, l_s, rank = t_s[keep], l_s[keep], rank[keep]
        n_new = n_per.clamp(max=K)
        rank = rank - (n_per[t_s] - n_new[t_s])
        # Shift old entries left by n_new (FIFO) then append the new values.
        idx = torch.arange(K, device=t.device).view(1, -1) + n_new.view(-1, 1)
        shifted = torch.where(idx < K,
                              self.loss_history.gather(1, idx.clamp(max=K - 1)),
                              torch.zeros_like(self.loss_history))
        self.loss_history.copy_(shifted)
        self.loss_history[t_s, K - n_new[t_s] + rank] = l_s
        self.count.add_(n_per).clamp_(max=K)

    def extra_repr(self) -> str:
        return (f'steps={self.steps}, history={self.history}, '
                f'uniform_mix={self.uniform_mix}')


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0,
                       interleaved: bool = False) -> Tensor:
    r"""Sinusoidal embeddings ``[B, dim]`` of (possibly fractional) steps
    ``t`` (``[B]``).

    ``interleaved=False`` is the DiffRec/DiffMM form
    :math:`[\cos(t f_0..), \sin(t f_0..)]` with
    :math:`f_k = \exp(-\ln(P)\,k/\lfloor D/2 \rfloor)` (a zero column is
    appended when ``dim`` is odd).  ``interleaved=True`` is LD4MRec Eq. 15:
    :math:`z[2j] = \sin(t / P^{2j/d})`, :math:`z[2j+1] = \cos(t / P^{2j/d})`.
    """
    half = dim // 2
    t = t.float()
    if interleaved:
        j = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(max_period) * 2.0 * j / dim)
        args = t[:, None] * freqs[None]
        emb = torch.stack([torch.sin(args), torch.cos(args)], dim=-1)
        emb = emb.reshape(t.size(0), 2 * half)
    else:
        freqs = torch.exp(-math.log(max_period) *
                          torch.arange(half, dtype=torch.float32,
                                       device=t.device) / half)
        args = t[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
