r"""``GaussianDiffusion`` against a literal float64 re-derivation.

Every reference value below is computed in this file with plain Python
floats (IEEE float64) in explicit loops, or with NumPy float64 arrays, from
the formulas of docs/algorithms.md §1; no library helper is called for a
reference.

Tolerance: ``rtol=1e-10`` (relative) everywhere, with ``atol=1e-15`` for the
schedule buffers (:data:`SCHED_TOL`) and ``atol=1e-12`` for rows of order 1
(:data:`ROW_TOL`).  The absolute floor of the schedule covers the grid
``v_t``: the reference writes ``v_t = a + (b - a) t / (T - 1)`` while the
library uses ``torch.linspace``; the two can differ in the last bit, which
moves ``1 - v_t`` by at most one ulp of 1.0 (1.1e-16), i.e. moves the
betas by ~1e-16 absolutely.  The schedules tested here have betas of at
least ~1e-6, so 1e-15 absolute is still a relative check at the 1e-9 level
for the smallest ones and far tighter for the others.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmdiff.errors import ConfigError
from mmdiff.nn.diffusion import GaussianDiffusion, linear_var_betas

SCHED_TOL = dict(rtol=1e-10, atol=1e-15)
ROW_TOL = dict(rtol=1e-10, atol=1e-12)

# (noise_scale, noise_min, noise_max, steps, beta_fixed)
SCHEDULES = [
    (0.1, 1e-4, 0.02, 5, None),        # DiffMM defaults, no fixed beta_0
    (0.1, 1e-4, 0.02, 5, 1e-4),        # DiffMM defaults (beta_0 = 1e-4)
    (0.01, 0.05, 0.2, 10, None),       # LD4MRec-like
    (1e-2, 5e-4, 5e-3, 5, 1e-5),       # DiffRec-like grid, beta_0 fixed
    (0.5, 0.1, 0.9, 7, None),          # large betas
    (1.0, 0.5, 0.9999, 2, None),       # T = 2, beta_1 clamped at 0.999
    (0.3, 0.01, 0.2, 2, 0.05),         # T = 2 with a fixed beta_0
    (0.2, 0.01, 0.05, 1, None),        # T = 1
    (0.2, 0.01, 0.05, 1, 0.3),         # T = 1 with a fixed beta_0
    (0.1, 0.0, 0.02, 3, 1e-4),         # noise_min = 0 needs beta_fixed
]


# ---------------------------------------------------------------------------
# The reference (plain float64 Python).
# ---------------------------------------------------------------------------
def ref_schedule(scale, lo, hi, T, beta_fixed=None, max_beta=0.999):
    r"""All buffers of the schedule as lists of Python floats."""
    a, b = scale * lo, scale * hi
    if T == 1:
        v = [a]
    else:
        v = [a + (b - a) * t / (T - 1) for t in range(T)]
    betas = [v[0]]
    for t in range(1, T):
        betas.append(min(1.0 - (1.0 - v[t]) / (1.0 - v[t - 1]), max_beta))
    if beta_fixed is not None:
        betas[0] = beta_fixed
    alphas = [1.0 - x for x in betas]
    abar = []
    prod = 1.0
    for t in range(T):
        prod *= alphas[t]
        abar.append(prod)
    abar_prev = [1.0] + abar[:-1]
    c1, c2, var = [], [], []
    for t in range(T):
        c1.append(betas[t] * math.sqrt(abar_prev[t]) / (1.0 - abar[t]))
        c2.append((1.0 - abar_prev[t]) * math.sqrt(alphas[t]) /
                  (1.0 - abar[t]))
        var.append(betas[t] * (1.0 - abar_prev[t]) / (1.0 - abar[t]))
    logvar = ([math.log(var[1])] + [math.log(x) for x in var[1:]]
              if T > 1 else None)
    snr = [abar[t] / (1.0 - abar[t]) for t in range(T)]
    w = [1.0] + [snr[t - 1] - snr[t] for t in range(1, T)]
    return {
        'betas': betas, 'alphas_cumprod': abar, 'alphas_cumprod_prev':
        abar_prev, 'sqrt_alphas_cumprod': [math.sqrt(x) for x in abar],
        'sqrt_one_minus_alphas_cumprod': [math.sqrt(1.0 - x) for x in abar],
        'posterior_mean_coef1': c1, 'posterior_mean_coef2': c2,
        'posterior_variance': var, 'posterior_log_variance_clipped': logvar,
        'snr': snr, 'snr_weights': w,
    }


def ref_q_sample(ref, x0, t, noise):
    out = np.empty_like(x0)
    for b in range(x0.shape[0]):
        ab = ref['alphas_cumprod'][t[b]]
        out[b] = math.sqrt(ab) * x0[b] + math.sqrt(1.0 - ab) * noise[b]
    return out


def ref_posterior_mean(ref, x0_hat, x_t, t):
    out = np.empty_like(x_t)
    for b in range(x_t.shape[0]):
        out[b] = (ref['posterior_mean_coef1'][t[b]] * x0_hat[b] +
                  ref['posterior_mean_coef2'][t[b]] * x_t[b])
    return out


class ToyDenoiser:
    r"""``f(x, t) = tanh(x W) + c_t``: a fixed random linear map, a
    nonlinearity and a step-dependent offset; records every call."""

    def __init__(self, I, T, seed=0):
        g = np.random.default_rng(seed)
        self.W = g.standard_normal((I, I)) / math.sqrt(I)
        self.c = g.standard_normal((T, I)) * 0.1
        self.calls = []

    def torch_fn(self, x, t):
        self.calls.append((t.clone(), tuple(x.shape), x.dtype))
        W = torch.from_numpy(self.W)
        c = torch.from_numpy(self.c)
        return torch.tanh(x @ W) + c[t]

    def numpy_fn(self, x, step):
        return np.tanh(x @ self.W) + self.c[step][None, :]


def ref_reverse(ref, fn, x0, T, sampling_steps, sampling_noise, seed):
    r"""The reverse loop, written out; the noise comes from torch's global
    RNG in the documented order (q-sample noise first, then one draw per
    step t > 0 after the posterior mean)."""
    torch.manual_seed(seed)
    B, I = x0.shape
    if sampling_steps == 0:
        x = x0.copy()
    else:
        s = sampling_steps - 1
        eps = torch.randn(B, I, dtype=torch.float64).numpy()
        x = np.empty_like(x0)
        for b in range(B):
            x[b] = (math.sqrt(ref['alphas_cumprod'][s]) * x0[b] +
                    math.sqrt(1.0 - ref['alphas_cumprod'][s]) * eps[b])
    for step in range(T - 1, -1, -1):
        x0_hat = fn(x, step)
        x = (ref['posterior_mean_coef1'][step] * x0_hat +
             ref['posterior_mean_coef2'][step] * x)
        if sampling_noise and step > 0:
            eps = torch.randn(B, I, dtype=torch.float64).numpy()
            std = math.exp(0.5 * ref['posterior_log_variance_clipped'][step])
            x = x + std * eps
    return x


def _arr(buf):
    assert buf.dtype == torch.float64
    return buf.detach().cpu().numpy()


# ---------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('scale,lo,hi,T,fixed', SCHEDULES)
def test_linear_var_betas_matches_reference(scale, lo, hi, T, fixed):
    ref = ref_schedule(scale, lo, hi, T, fixed)
    betas = linear_var_betas(scale, lo, hi, T, beta_fixed=fixed)
    assert betas.shape == (T,)
    np.testing.assert_allclose(_arr(betas), ref['betas'], **SCHED_TOL)
    if fixed is not None:
        assert float(betas[0]) == fixed


def test_clamp_case_really_clamps():
    # guard of the (1.0, 0.5, 0.9999, 2) case: 1 - 1e-4/0.5 > 0.999
    ref = ref_schedule(1.0, 0.5, 0.9999, 2)
    assert ref['betas'][1] == 0.999
    assert float(linear_var_betas(1.0, 0.5, 0.9999, 2)[1]) == \
        pytest.approx(0.999, rel=1e-15)


@pytest.mark.parametrize('scale,lo,hi,T,fixed', SCHEDULES)
def test_buffers_match_reference(scale, lo, hi, T, fixed):
    ref = ref_schedule(scale, lo, hi, T, fixed)
    d = GaussianDiffusion(scale, lo, hi, T, beta_fixed=fixed)
    names = ['betas', 'alphas_cumprod', 'alphas_cumprod_prev',
             'sqrt_alphas_cumprod', 'sqrt_one_minus_alphas_cumprod',
             'posterior_mean_coef1', 'posterior_mean_coef2',
             'posterior_variance', 'snr', 'snr_weights']
    for name in names:
        buf = getattr(d, name)
        assert buf.shape == (T,), name
        np.testing.assert_allclose(_arr(buf), ref[name], err_msg=name,
                                   **SCHED_TOL)
    assert float(d.alphas_cumprod_prev[0]) == 1.0
    assert float(d.snr_weights[0]) == 1.0
    if T > 1:
        np.testing.assert_allclose(
            _arr(d.posterior_log_variance_clipped),
            ref['posterior_log_variance_clipped'], **SCHED_TOL)
        # the clipped log-variance repeats step 1 at step 0
        assert float(d.posterior_log_variance_clipped[0]) == \
            float(d.posterior_log_variance_clipped[1])
    else:
        # T = 1: abar_{-1} = 1, so the posterior is x0_hat itself
        assert float(d.posterior_variance[0]) == 0.0
        assert float(d.posterior_mean_coef1[0]) == pytest.approx(1.0,
                                                                 rel=1e-12)
        assert float(d.posterior_mean_coef2[0]) == 0.0
    # the buffers travel with the state dict
    assert set(names) <= set(d.state_dict())


def test_invalid_steps_raise_config_error():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ConfigError):
            GaussianDiffusion(steps=bad)


# ---------------------------------------------------------------------------
# Forward noising and posterior mean
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('scale,lo,hi,T,fixed', SCHEDULES)
def test_q_sample_and_posterior_mean(scale, lo, hi, T, fixed):
    ref = ref_schedule(scale, lo, hi, T, fixed)
    d = GaussianDiffusion(scale, lo, hi, T, beta_fixed=fixed)
    g = np.random.default_rng(1)
    B, I = 9, 13
    x0 = g.random((B, I))
    noise = g.standard_normal((B, I))
    t = g.integers(0, T, size=B)
    t[0], t[-1] = 0, T - 1
    noise_t = torch.from_numpy(noise.copy())
    x_t = d.q_sample(torch.from_numpy(x0), torch.from_numpy(t), noise_t)
    assert x_t.dtype == torch.float64 and x_t.shape == (B, I)
    np.testing.assert_allclose(x_t.numpy(), ref_q_sample(ref, x0, t, noise),
                               **ROW_TOL)
    # the given noise is not modified
    assert np.array_equal(noise_t.numpy(), noise)

    x0_hat = g.standard_normal((B, I))
    mu = d.posterior_mean(torch.from_numpy(x0_hat), x_t,
                          torch.from_numpy(t))
    np.testing.assert_allclose(
        mu.numpy(), ref_posterior_mean(ref, x0_hat, x_t.numpy(), t),
        **ROW_TOL)


# ---------------------------------------------------------------------------
# Reverse loop
# ---------------------------------------------------------------------------
REVERSE_SCHEDULES = [s for s in SCHEDULES if s[3] in (1, 2, 5, 10)]


@pytest.mark.parametrize('sampling_noise', [False, True])
@pytest.mark.parametrize('scale,lo,hi,T,fixed', REVERSE_SCHEDULES)
def test_reverse_matches_literal_loop(scale, lo, hi, T, fixed,
                                      sampling_noise):
    ref = ref_schedule(scale, lo, hi, T, fixed)
    d = GaussianDiffusion(scale, lo, hi, T, beta_fixed=fixed)
    B, I = 6, 11
    x0 = np.random.default_rng(T).random((B, I))
    for s in sorted({0, 1, T // 2, T}):
        seed = 1000 + 10 * T + s
        toy = ToyDenoiser(I, T, seed=3)
        torch.manual_seed(seed)
        out = d.reverse(toy.torch_fn, torch.from_numpy(x0),
                        sampling_steps=s, sampling_noise=sampling_noise)
        assert out.dtype == torch.float64 and out.shape == (B, I)
        # called once per step, from T-1 down to 0, on the whole batch
        assert len(toy.calls) == T
        for (t, shape, dtype), step in zip(toy.calls,
                                           range(T - 1, -1, -1)):
            assert t.dtype == torch.long and t.shape == (B,)
            assert t.tolist() == [step] * B
            assert shape == (B, I) and dtype == torch.float64
        expect = ref_reverse(ref, toy.numpy_fn, x0, T, s, sampling_noise,
                             seed)
        np.testing.assert_allclose(out.numpy(), expect, **ROW_TOL,
                                   err_msg=f'sampling_steps={s}')


def test_reverse_noise_order_is_observable():
    r"""Guard for the test above: with noise, a different seed changes the
    result, and without q-sample noise (s = 0) and without sampling noise
    the result does not depend on the RNG at all."""
    d = GaussianDiffusion(0.1, 1e-4, 0.02, 5)
    x0 = torch.from_numpy(np.random.default_rng(0).random((4, 7)))
    toy = ToyDenoiser(7, 5)
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(d.reverse(toy.torch_fn, x0, 3, True))
    assert not torch.equal(outs[0], outs[1])
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(d.reverse(toy.torch_fn, x0, 0, False))
    assert torch.equal(outs[0], outs[1])


def test_reverse_does_not_modify_x0():
    d = GaussianDiffusion(0.1, 1e-4, 0.02, 5)
    x0 = torch.from_numpy(np.random.default_rng(0).random((4, 7)))
    keep = x0.clone()
    toy = ToyDenoiser(7, 5)
    for s in (0, 2):
        for noise in (False, True):
            d.reverse(toy.torch_fn, x0, s, noise)
            assert torch.equal(x0, keep)


@pytest.mark.parametrize('T', [1, 2, 5])
def test_sampling_steps_out_of_range(T):
    d = GaussianDiffusion(0.1, 1e-4, 0.02, T)
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    calls = []

    def fn(x, t):
        calls.append(t)
        return x

    for bad in (-1, T + 1, T + 10):
        with pytest.raises(ConfigError, match='sampling_steps'):
            d.reverse(fn, x0, sampling_steps=bad)
    assert calls == []
    # the ends of the range are accepted
    for ok in (0, T):
        d.reverse(fn, x0, sampling_steps=ok)
