r"""Seeding and device selection."""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from mmdiff.errors import ConfigError, DeviceError


def seed_everything(seed: int) -> torch.Generator:
    r"""Seeds Python, NumPy and PyTorch (CPU and CUDA) and returns a fresh
    :class:`torch.Generator` seeded with ``seed`` for the samplers.

    Unlike the official DiffMM code it never sets ``cudnn.benchmark`` (which
    contradicts ``deterministic``)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if not -2 ** 63 <= seed < 2 ** 64:
        raise ConfigError(f"seed {seed} is out of range (a seed must fit "
                          f"in 64 bits)")
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def resolve_device(device: Optional[str] = 'auto',
                   fallback: bool = False) -> torch.device:
    r"""``'auto'`` picks CUDA when available, else CPU.  Asking for CUDA on a
    machine without it raises :class:`DeviceError`, unless ``fallback`` is
    set, in which case CPU is used."""
    if device is None or device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {device!r}: expected 'auto', "
                          f"'cpu' or 'cuda[:N]'") from e
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            if fallback:
                return torch.device('cpu')
            raise DeviceError(f"device {device!r} requested but CUDA is not "
                              f"available on this machine (use --device cpu "
                              f"or --device auto, or --cpu-fallback to fall "
                              f"back to the CPU)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} requested but only "
                              f"{torch.cuda.device_count()} CUDA device(s) "
                              f"exist")
    elif dev.type not in ('cpu', 'mps', 'xpu'):
        raise ConfigError(f"unsupported device {device!r}")
    return dev
