"""bfloat16 on a device without native bfloat16: detected and flagged with a
PerformanceWarning (results unaffected), silent where bfloat16 is native."""
import warnings

import pytest
import torch

from mmdiff.errors import PerformanceWarning
from mmdiff.nn import precision
from mmdiff.nn.contrastive import info_nce
from mmdiff.nn.diffusion.interaction import InteractionDiffusion


@pytest.fixture
def cpu_bf16(monkeypatch):
    r"""Sets whether the (x86) CPU has native bfloat16; returns a setter."""
    def set_native(native: bool):
        monkeypatch.setattr(precision.platform, 'machine', lambda: 'x86_64')
        monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported',
                            lambda: native, raising=False)
        monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported',
                            lambda: False, raising=False)
        precision._native_bf16.cache_clear()
    yield set_native
    precision._native_bf16.cache_clear()


def _perf_warnings(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        out = fn()
    return out, [w for w in rec if issubclass(w.category,
                                              PerformanceWarning)]


def test_native_bf16_follows_the_cpu_flags(cpu_bf16, monkeypatch):
    cpu_bf16(False)
    assert precision.native_bf16() is False
    assert precision.native_bf16('cpu') is False
    cpu_bf16(True)
    assert precision.native_bf16(torch.device('cpu')) is True
    # AMX alone counts too
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported',
                        lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: True,
                        raising=False)
    precision._native_bf16.cache_clear()
    assert precision.native_bf16('cpu') is True
    # not x86: unknown counts as native (no false alarm)
    monkeypatch.setattr(precision.platform, 'machine', lambda: 'aarch64')
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: False,
                        raising=False)
    precision._native_bf16.cache_clear()
    assert precision.native_bf16('cpu') is True


def test_check_bf16_warns_only_without_native_support(cpu_bf16):
    cpu_bf16(False)
    _, w = _perf_warnings(lambda: precision.check_bf16('cpu', 'the test'))
    assert len(w) == 1
    msg = str(w[0].message)
    assert 'the test' in msg and 'AVX512-BF16' in msg and 'float32' in msg
    cpu_bf16(True)
    _, w = _perf_warnings(lambda: precision.check_bf16('cpu', 'the test'))
    assert w == []


def test_bf16_denoiser_and_info_nce_warn_and_still_compute(cpu_bf16):
    torch.manual_seed(0)
    I = 12
    diff = InteractionDiffusion.diffmm(I, hidden_dims=(8,), steps=3)
    x0 = (torch.rand(5, I) < 0.3).float()
    ref = diff.denoise(x0)
    diff.autocast_bf16 = True
    for native in (False, True):
        cpu_bf16(native)
        out, w = _perf_warnings(lambda: diff.denoise(x0))
        assert len(w) == (0 if native else 1)
        assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
        _, w = _perf_warnings(lambda: diff.loss(x0))
        assert len(w) == (0 if native else 1)
    p, q = torch.randn(10, 4), torch.randn(10, 4)
    nodes = torch.tensor([0, 3, 3, 7])
    exact = info_nce(p, q, nodes, 0.5)
    for native in (False, True):
        cpu_bf16(native)
        val, w = _perf_warnings(lambda: info_nce(p, q, nodes, 0.5,
                                                 bf16=True))
        assert len(w) == (0 if native else 1)
        assert torch.allclose(val, exact, rtol=2e-2)
    # float32 never warns
    cpu_bf16(False)
    _, w = _perf_warnings(lambda: info_nce(p, q, nodes, 0.5))
    assert w == []


def test_cuda_native_bf16_from_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    for cap, native in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, 'get_device_capability',
                            lambda index=None, cap=cap: cap)
        precision._native_bf16.cache_clear()
        assert precision.native_bf16('cuda:0') is native
    precision._native_bf16.cache_clear()
