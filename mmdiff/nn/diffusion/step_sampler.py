r"""Importance sampling of the diffusion step from a history of losses
(DiffRec; LD4MRec Eq. 13; docs/algorithms.md §1.5)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


class ImportanceStepSampler(torch.nn.Module):
    r"""Importance sampling of the diffusion step from a history of losses
    (DiffRec; LD4MRec Eq. 13; docs/algorithms.md §1.5).

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
                              self.loss_history.gather(
                                  1, idx.clamp(max=K - 1)),
                              torch.zeros_like(self.loss_history))
        self.loss_history.copy_(shifted)
        self.loss_history[t_s, K - n_new[t_s] + rank] = l_s
        self.count.add_(n_per).clamp_(max=K)

    def extra_repr(self) -> str:
        return (f'steps={self.steps}, history={self.history}, '
                f'uniform_mix={self.uniform_mix}')
