r"""Whether a device computes in bfloat16 natively.

The ``bf16`` precision settings of the diffusion models and of
:func:`~mmdiff.nn.info_nce` pay only where the hardware multiplies bfloat16
matrices natively: x86 CPUs with AVX512-BF16 or AMX, CUDA GPUs with compute
capability 8.0 or newer.  Elsewhere PyTorch emulates bfloat16 products, with
the same results but at a small fraction of the float32 speed (on an
AVX2-only CPU a ``512^3`` product took about a hundred times as long as in
float32).  Using them there is almost certainly a mistake, so it is flagged
with a :class:`~mmdiff.errors.PerformanceWarning` instead of silently
costing hours.
"""
from __future__ import annotations

import functools
import platform
import warnings
from typing import Union

import torch

from mmdiff.errors import PerformanceWarning


def native_bf16(device: Union[str, torch.device, None] = None) -> bool:
    r"""Whether ``device`` multiplies bfloat16 matrices natively (see the
    module docstring).  Unknown CPU architectures (not x86) count as
    native: no warning is better than a wrong one."""
    device = torch.device('cpu' if device is None else device)
    return _native_bf16(device.type, device.index)


@functools.lru_cache(maxsize=None)
def _native_bf16(kind: str, index) -> bool:
    if kind == 'cuda':
        return bool(torch.cuda.is_available() and
                    torch.cuda.get_device_capability(index)[0] >= 8)
    if kind != 'cpu':
        return True
    if platform.machine().lower() not in ('x86_64', 'amd64', 'i386', 'i686'):
        return True
    probes = [getattr(torch.cpu, name, None) for name in
              ('_is_avx512_bf16_supported', '_is_amx_tile_supported')]
    probes = [p for p in probes if p is not None]
    if not probes:                       # an older/newer torch: unknown
        return True
    return any(bool(p()) for p in probes)


def check_bf16(device: Union[str, torch.device, None], where: str) -> None:
    r"""Warns (a :class:`~mmdiff.errors.PerformanceWarning`; Python's default
    filter shows it once per calling line) when bfloat16 compute is
    requested (``where`` names the setting) on a device without native
    bfloat16."""
    device = torch.device('cpu' if device is None else device)
    if not native_bf16(device):
        what = ('this CPU has neither AVX512-BF16 nor AMX'
                if device.type == 'cpu' else f'this {device.type} device '
                'lacks native bfloat16')
        warnings.warn(f"{where}: bfloat16 compute requested, but {what}; "
                      f"PyTorch emulates it, which is many times slower "
                      f"than float32 here (results are unaffected). Use "
                      f"precision='float32' on this machine.",
                      PerformanceWarning, stacklevel=3)
