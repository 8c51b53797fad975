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


def run_and_kill(args, out: Path, cwd: Path, min_epoch: int = 1) -> int:
    r"""Runs ``python -m mmdiff.cli *args --out out`` on one thread, freezes
    it (SIGSTOP) whenever a checkpoint exists, and kills it with SIGKILL as
    soon as the checkpoint of epoch ``min_epoch`` or later is on disk.
    Returns that checkpoint's epoch."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mmdiff.train.checkpoint import load_checkpoint
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONWARNINGS='ignore')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'mmdiff.cli', *map(str, args), '--out',
         str(out)],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / 'checkpoint.pt'
    seen = -1
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists():
                proc.send_signal(signal.SIGSTOP)  # freeze, then look
                # never a partial file: the checkpoint is replaced atomically
                seen = load_checkpoint(out)['epoch']
                if seen >= min_epoch:
                    break
                proc.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        assert proc.poll() is None, (
            f"the run ended before it could be killed: "
            f"{proc.stderr.read().decode()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return seen
