r"""The golden regression cases: fixed-seed runs of every model whose loss
history and metrics are recorded once (``python -m tests.golden.record``)
and asserted unchanged by ``tests/test_golden.py``.

A refactor that claims to change no result must leave these numbers equal to
float rounding.  Each case trains through the same code path as ``mmdiff
train`` (presets, then the overrides below) with a fixed number of CPU
threads, so that the BLAS reductions are the same run to run.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / 'golden.json'
SHARED_DATA = HERE.parents[1].parent / 'shared' / 'data'

#: name -> (model, dataset, overrides of the preset, CPU threads)
SYNTHETIC = {
    f'{m}-synthetic': (m, 'synthetic', {'epochs': 6, 'patience': 0}, 1)
    for m in ('mf', 'lightgcn', 'diffmm', 'diffrec', 'ld4mrec')
}
TIKTOK = {
    'lightgcn-tiktok': ('lightgcn', 'tiktok', {'epochs': 3, 'patience': 0},
                        2),
    'diffmm-tiktok': ('diffmm', 'tiktok', {'epochs': 3, 'patience': 0}, 2),
}
CASES = {**SYNTHETIC, **TIKTOK}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def run_case(name: str) -> Dict[str, Any]:
    r"""Trains case ``name`` with seed 0 and returns its record: the
    per-epoch history without timings and the final metrics."""
    from mmdiff.train.config import preset
    from mmdiff.train.run import dataset_key, train_run
    model, dataset, overrides, threads = CASES[name]
    cfg = preset(model, dataset_key(dataset))
    cfg.update(overrides)
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as cache:
            data = None
            if dataset != 'synthetic':
                from mmdiff.data.datasets import get_dataset
                data = get_dataset(dataset, root=SHARED_DATA,
                                   cache_dir=cache)
            result, _, _ = train_run(model, dataset, seed=0, device='cpu',
                                     cfg=cfg, data=data,
                                     root=SHARED_DATA if data is not None
                                     else None)
    finally:
        torch.set_num_threads(n)
    history: List[Dict[str, Any]] = [
        {k: _clean(v) for k, v in row.items() if not k.startswith('time/')}
        for row in result.history]
    metrics = {k: _clean(v) for k, v in result.metrics_dict().items()
               if not k.startswith('seconds_per_epoch')}
    return {'history': history, 'metrics': metrics}


def load() -> Dict[str, Any]:
    return json.loads(GOLDEN.read_text())
