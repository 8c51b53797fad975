r"""Helpers shared by the tests that run ``mmdiff train`` and compare run
folders (importable because pytest puts this folder on ``sys.path``)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from mmdiff.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    # the killed subprocess runs with OMP_NUM_THREADS=1: match it in-process
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cli(*argv) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        assert main([str(a) for a in argv]) == 0


def _metrics(run: Path) -> dict:
    m = json.loads((run / 'metrics.json').read_text())
    return {k: v for k, v in m.items()
            if not k.startswith('seconds_per_epoch')}


def _history(run: Path) -> list:
    rows = [json.loads(ln) for ln in
            (run / 'history.jsonl').read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith('time/')}
            for r in rows]
