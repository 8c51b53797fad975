r"""Fault tolerance of a data-parallel job (gloo, 2 CPU processes): a rank
that dies or hangs ends the job with a clear error within a bounded time,
and resuming from the last checkpoint (rank 0's) gives the result of an
uninterrupted run, with the same or a different number of ranks.

Tolerances as in ``test_distributed.py`` (re-associated float32 sums)."""
from __future__ import annotations

import shutil
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch

from dist_helpers import launch, run_job
from test_distributed import WORKER, _assert_same_run, _single
from tests.train.dist_settings import DATASET, SEED, config_of

MODEL = 'diffmm'   # two phases, sharded regeneration, graphs in checkpoints
EPOCHS = 4
DIE_AT = 2


def _finish(procs, timeout: float, grace: float = 10.0):
    r"""Waits for the ranks; once one has failed, the others get ``grace``
    seconds before they are killed (what torchrun's agent does).  Returns
    ``(returncodes, stderrs, seconds until the first failure)``; a killed
    rank gets code :obj:`None`."""
    t0 = time.monotonic()
    first = None
    while time.monotonic() - t0 < timeout:
        codes = [p.poll() for p in procs]
        if first is None and any(c not in (None, 0) for c in codes):
            first = time.monotonic() - t0
        if all(c is not None for c in codes) or (
                first is not None and time.monotonic() - t0 > first + grace):
            break
        time.sleep(0.1)
    codes, errs = [], []
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()
            codes.append(None)
            errs.append('')
        else:
            codes.append(p.returncode)
            errs.append(p.communicate()[1])
    return codes, errs, first


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp('full')
    _single(out, [MODEL], epochs=EPOCHS)
    return out / MODEL


def test_dead_rank_stops_job_then_resume_matches(tmp_path, uninterrupted):
    from mmdiff.train.checkpoint import load_checkpoint
    procs = launch([str(tmp_path), MODEL, '--epochs', EPOCHS,
                    '--die-at', DIE_AT, '--timeout', 60], 2, module=WORKER)
    codes, errs, secs = _finish(procs, timeout=120)
    assert codes[1] == 17                     # the rank that died
    assert codes[0] == 2, errs[0]             # its peer: a clean error ...
    assert 'rank 0/2' in errs[0] and 'another rank died' in errs[0]
    assert '--resume' in errs[0]
    run = tmp_path / MODEL
    # ... no final files, the checkpoint of the last complete epoch
    assert not (run / 'metrics.json').exists()
    assert load_checkpoint(run)['epoch'] == DIE_AT - 1
    # resume with 1 process (a different number of ranks) ...
    one = tmp_path / 'one'
    shutil.copytree(tmp_path, one)
    from mmdiff.train.run import train_run
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            train_run(MODEL, DATASET, seed=SEED, device='cpu',
                      cfg=config_of(MODEL, EPOCHS), out=str(one / MODEL),
                      resume=True)
    finally:
        torch.set_num_threads(n)
    _assert_same_run(uninterrupted, one / MODEL)
    # ... and with the same 2 ranks
    run_job([str(tmp_path), MODEL, '--epochs', EPOCHS, '--resume'], 2,
            module=WORKER)
    _assert_same_run(uninterrupted, run)


def test_hung_rank_times_out_with_clear_error(tmp_path):
    timeout = 5
    procs = launch([str(tmp_path), 'mf', '--epochs', 3, '--hang-at', 1,
                    '--timeout', timeout], 2, module=WORKER)
    codes, errs, secs = _finish(procs, timeout=90)
    assert codes[0] == 2, errs[0]
    assert codes[1] is None                   # still asleep: killed here
    assert 'rank 0/2' in errs[0] and f'{timeout:g} s timeout' in errs[0]
    assert 'hung longer than' in errs[0]
