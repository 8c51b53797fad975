r"""``ImportanceStepSampler`` against an independent model of its history.

The reference keeps one ``collections.deque(maxlen=K)`` per step (FIFO,
oldest dropped) fed in batch order, and computes the probabilities with
NumPy: ``q_t = sqrt(mean_k H_{t,k}^2)``, ``p_t = (1-u) q_t / sum(q) + u/T``
once every step holds ``K`` values, ``1/T`` before.

Tolerances: history values are float64 copies, compared exactly;
probabilities ``rtol=1e-12``; the float32 importance weights ``rtol=1e-6``;
empirical step frequencies of ``N`` draws within 5 standard errors
``sqrt(p(1-p)/N)`` (seeded generator, so the outcome is fixed).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from mmdiff.nn.diffusion import ImportanceStepSampler


class RefHistory:
    def __init__(self, steps, K, u):
        self.T, self.K, self.u = steps, K, u
        self.h = [deque(maxlen=K) for _ in range(steps)]

    def update(self, t, losses):
        for step, loss in zip(t, losses):
            self.h[step].append(float(loss))

    @property
    def warm(self):
        return all(len(d) == self.K for d in self.h)

    def probabilities(self):
        if not self.warm:
            return np.full(self.T, 1.0 / self.T)
        H = np.array([list(d) for d in self.h], dtype=np.float64)
        q = np.sqrt((H ** 2).mean(axis=1))
        return (1.0 - self.u) * q / q.sum() + self.u / self.T


def check_against(s: ImportanceStepSampler, ref: RefHistory):
    H = s.loss_history.detach().cpu()
    assert H.shape == (ref.T, ref.K)
    for step in range(ref.T):
        vals = list(ref.h[step])
        n = len(vals)
        # the newest value last, the oldest first, nothing else kept
        got = H[step, ref.K - n:].tolist() if n else []
        assert got == vals, (step, got, vals)
    assert s.warm is ref.warm
    p = s.probabilities()
    assert p.shape == (ref.T,)
    np.testing.assert_allclose(p.double().numpy(), ref.probabilities(),
                               rtol=1e-12, atol=0)
    np.testing.assert_allclose(float(p.sum()), 1.0, rtol=1e-12)


def _push(s, ref, t, losses):
    t = np.asarray(t, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    s.update(torch.from_numpy(t), torch.from_numpy(losses))
    ref.update(t.tolist(), losses.tolist())
    check_against(s, ref)


def test_scripted_history():
    T, K, u = 4, 3, 0.1
    s = ImportanceStepSampler(T, history=K, uniform_mix=u)
    ref = RefHistory(T, K, u)
    check_against(s, ref)
    assert not s.warm
    # partial fill: steps 0 and 2 only, one value each
    _push(s, ref, [2, 0], [1.0, 2.0])
    # an empty batch changes nothing
    _push(s, ref, [], [])
    # a step far more than K times in one batch (only the last K survive),
    # mixed with other steps
    _push(s, ref, [1, 1, 3, 1, 1, 1, 1, 0], [3., 4., 5., 6., 7., 8., 9., 10.])
    assert not s.warm          # step 2 has one value, step 3 one
    # repeated steps in mixed order
    _push(s, ref, [3, 2, 3, 2, 0, 3], [11., 12., 13., 14., 15., 16.])
    assert s.warm              # every step has K values now
    # exact contents, written out
    assert s.loss_history.tolist() == [
        [2.0, 10.0, 15.0],
        [7.0, 8.0, 9.0],
        [1.0, 12.0, 14.0],
        [11.0, 13.0, 16.0],
    ]
    # single values shift the FIFO by one
    _push(s, ref, [0], [17.0])
    assert s.loss_history[0].tolist() == [10.0, 15.0, 17.0]
    # a batch overwriting every step more than K times
    _push(s, ref, [0, 1, 2, 3] * 5, np.arange(100., 120.))
    assert s.loss_history.tolist() == [
        [108., 112., 116.], [109., 113., 117.],
        [110., 114., 118.], [111., 115., 119.]]


@pytest.mark.parametrize('T,K,u,seed', [(5, 10, 0.001, 0), (3, 4, 0.0, 1),
                                        (7, 1, 0.5, 2), (1, 5, 0.1, 3),
                                        (6, 3, 1.0, 4)])
def test_random_updates(T, K, u, seed):
    g = np.random.default_rng(seed)
    s = ImportanceStepSampler(T, history=K, uniform_mix=u)
    ref = RefHistory(T, K, u)
    was_warm = False
    for it in range(60):
        # batch sizes from 1 to 4K*T: partial fills, overflows, repeats
        B = int(g.integers(1, 4 * K * T + 1))
        if it % 7 == 3:
            # a batch that hits one step only
            t = np.full(B, g.integers(0, T))
        else:
            t = g.integers(0, T, size=B)
        losses = np.exp(g.standard_normal(B)) * (1 + t)  # distinct, > 0
        _push(s, ref, t, losses)
        if was_warm:
            assert s.warm  # once warm, warm for good
        was_warm = s.warm
    assert s.warm


def test_warm_needs_every_step_full():
    T, K = 3, 4
    s = ImportanceStepSampler(T, history=K, uniform_mix=0.01)
    ref = RefHistory(T, K, 0.01)
    _push(s, ref, [0] * 10 + [1] * 10, np.arange(1., 21.))
    assert not s.warm
    _push(s, ref, [2, 2, 2], [1., 2., 3.])
    assert not s.warm
    _push(s, ref, [2], [4.])
    assert s.warm


def test_sample_warm_up_has_unit_weights():
    T, K = 5, 3
    s = ImportanceStepSampler(T, history=K, uniform_mix=0.05)
    s.update(torch.tensor([0, 1, 2, 3]), torch.tensor([1., 2., 3., 4.]))
    assert not s.warm
    g = torch.Generator().manual_seed(0)
    t, w = s.sample(4000, generator=g)
    assert t.shape == (4000,) and w.shape == (4000,)
    assert t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) <= T - 1
    assert torch.equal(w, torch.ones(4000))
    # uniform during warm-up
    freq = np.bincount(t.numpy(), minlength=T) / 4000
    se = np.sqrt(0.2 * 0.8 / 4000)
    assert np.all(np.abs(freq - 0.2) <= 5 * se), freq


@pytest.mark.parametrize('u', [0.001, 0.2])
def test_sample_after_warm_up(u):
    T, K = 6, 4
    s = ImportanceStepSampler(T, history=K, uniform_mix=u)
    ref = RefHistory(T, K, u)
    g = np.random.default_rng(5)
    # very different loss scales per step: a clearly non-uniform p
    for _ in range(3):
        t = np.repeat(np.arange(T), 3)
        _push(s, ref, t, g.random(t.size) * (1 + t) ** 2)
    assert s.warm
    p = ref.probabilities()
    assert p.max() / p.min() > 5

    gen = torch.Generator().manual_seed(1234)
    N = 200_000
    t, w = s.sample(N, generator=gen)
    assert t.shape == (N,) and w.shape == (N,) and w.dtype == torch.float32
    assert int(t.min()) >= 0 and int(t.max()) <= T - 1
    tn = t.numpy()
    np.testing.assert_allclose(w.numpy(), 1.0 / (p[tn] * T), rtol=1e-6)
    freq = np.bincount(tn, minlength=T) / N
    se = np.sqrt(p * (1 - p) / N)
    assert np.all(np.abs(freq - p) <= 5 * se), (freq, p)
    # the importance weights undo the sampling: E[w] = sum_t p_t/(p_t T) = 1
    assert float(w.double().mean()) == pytest.approx(1.0, abs=0.02)


def test_history_is_state():
    # the history and counts survive a state_dict round trip
    T, K = 3, 2
    a = ImportanceStepSampler(T, history=K, uniform_mix=0.1)
    a.update(torch.tensor([0, 1, 2, 0, 1, 2, 2]),
             torch.tensor([1., 2., 3., 4., 5., 6., 7.]))
    b = ImportanceStepSampler(T, history=K, uniform_mix=0.1)
    b.load_state_dict(a.state_dict())
    assert b.warm and torch.equal(a.loss_history, b.loss_history)
    assert torch.equal(a.probabilities(), b.probabilities())
