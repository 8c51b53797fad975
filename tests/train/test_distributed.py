r"""Data-parallel training (``torchrun``; gloo on CPU) equals one process
with the same global batch, for every model.

Each job is a set of local processes with the environment ``torchrun``
gives its workers (:mod:`dist_helpers`); one job trains all five models so
that the (slow) interpreter start is paid once.

Tolerances, and why: a sharded step computes the same per-row terms as one
process (identical random draws, :mod:`mmdiff.sharding`), but the batch sum
is split into per-rank partial sums that are all-reduced, i.e. float32
additions are re-associated (and DDP averages gradients as
:math:`\frac{1}{N}\sum_r N g_r`).  That changes results at the rounding
level of float32, ~1e-7 relative per step, and Adam carries it through a
few epochs; we allow 1e-5 relative on losses and 1e-4 relative on the
parameters.  Metrics are exact sums in one process and in the job (chunk
sums added in chunk order), so they could only move if a rounding-level
change of a score flipped a top-20 ranking; they must agree to 1e-6.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dist_helpers import ROOT, launch, run_job
from tests.train.dist_settings import DATASET, SEED, config_of

MODELS = ['mf', 'lightgcn', 'diffrec', 'ld4mrec', 'diffmm']
EPOCHS = 3
LOSS_REL = 1e-5
METRIC_ABS = 1e-6
PARAM_REL = 1e-4
WORKER = ('-m', 'tests.train.dist_worker')


def _single(out: Path, models, epochs: int = EPOCHS) -> None:
    from mmdiff.train.run import train_run
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            for m in models:
                train_run(m, DATASET, seed=SEED, device='cpu',
                          cfg=config_of(m, epochs), out=str(out / m))
    finally:
        torch.set_num_threads(n)


def _history(run: Path) -> list:
    rows = [json.loads(ln) for ln in
            (run / 'history.jsonl').read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith('time/')}
            for r in rows]


def _metrics(run: Path) -> dict:
    m = json.loads((run / 'metrics.json').read_text())
    return {k: v for k, v in m.items() if not k.startswith('seconds')}


def _assert_same_run(a: Path, b: Path) -> None:
    ha, hb = _history(a), _history(b)
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb):
        assert set(ra) == set(rb)
        for k, v in ra.items():
            metric = k.startswith(('val/', 'test/'))
            assert math.isclose(v, rb[k], rel_tol=0 if metric else LOSS_REL,
                                abs_tol=METRIC_ABS if metric else 1e-9), \
                (a.name, ra['epoch'], k, v, rb[k])
    ma, mb = _metrics(a), _metrics(b)
    assert set(ma) == set(mb)
    for k, v in ma.items():
        assert math.isclose(v, mb[k], rel_tol=0, abs_tol=METRIC_ABS), \
            (a.name, k, v, mb[k])
    sa = torch.load(a / 'best_model.pt', weights_only=True)['model_state']
    sb = torch.load(b / 'best_model.pt', weights_only=True)['model_state']
    for k, v in sa.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            torch.testing.assert_close(sb[k], v, rtol=PARAM_REL, atol=1e-6,
                                       msg=f'{a.name}: {k}')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp('single')
    _single(out, MODELS)
    return out


@pytest.fixture(scope='module')
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('two')
    run_job([str(out), *MODELS], 2, module=WORKER)
    return out


@pytest.mark.parametrize('model', MODELS)
def test_two_ranks_equal_one_process(model, reference, two_ranks):
    # rank 0 wrote the run folder, and training really changed the model
    hist = _history(two_ranks / model)
    assert len(hist) == EPOCHS
    losses = [r for r in hist[0] if r.endswith('/loss')]
    assert losses and hist[0][losses[0]] != hist[-1][losses[0]]
    _assert_same_run(reference / model, two_ranks / model)


def test_three_ranks_uneven_shards_mf_diffmm(tmp_path, reference):
    # 50 rows over 3 ranks: shards of 17/17/16; last batches of 20 and
    # fewer rows; DiffMM's regeneration: 3 user batches over 3 ranks
    run_job([str(tmp_path), 'mf', 'diffmm'], 3, module=WORKER)
    for m in ('mf', 'diffmm'):
        _assert_same_run(reference / m, tmp_path / m)


def test_wrong_loss_contract_is_detected(tmp_path, reference):
    # A model whose sharded loss is not additive (here: BPR phase declared
    # 'shard' but returning a per-rank batch mean) must NOT match: the
    # comparison above can fail.
    code = (
        "import sys; from mmdiff.nn.models import mf\n"
        "orig = mf.MF.phases\n"
        "def phases(self):\n"
        "    ps = orig(self)\n"
        "    for p in ps: p.reduction = 'shard'\n"
        "    return ps\n"
        "mf.MF.phases = phases\n"
        "from tests.train.dist_worker import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    run_job([str(tmp_path), 'mf'], 2, module=('-c', code))
    with pytest.raises(AssertionError):
        _assert_same_run(reference / 'mf', tmp_path / 'mf')


def test_torchrun_cli_entry_point(tmp_path, reference):
    # the documented entry point: torchrun -m mmdiff train (rank 0 writes)
    from mmdiff.train.run import train_run  # noqa: F401 (imports warm)
    cfg = config_of('lightgcn', EPOCHS)
    sets = [f'{k}={v}' for k, v in cfg.items()
            if k not in ('epochs', 'patience', 'batch_size')]
    from dist_helpers import free_port, worker_env
    env = worker_env(0, 1, free_port())
    for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE',
              'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(k)
    out = tmp_path / 'lightgcn'
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
         '2', '--master_port', str(free_port()), '-m', 'mmdiff', 'train',
         '--model', 'lightgcn', '--dataset', DATASET, '--seed', str(SEED),
         '--epochs', str(EPOCHS), '--patience', '0', '--batch-size',
         str(cfg['batch_size']), '--device', 'cpu', '--threads', '1',
         '--quiet', '--out', str(out), '--set', *sets],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count('best epoch') == 1   # rank 0 alone reports
    _assert_same_run(reference / 'lightgcn', out)


def test_early_stopping_decision_is_shared(tmp_path):
    # a high learning rate overfits within a few epochs: with patience 1
    # the one-process run stops early, and so does every rank of the job
    from mmdiff.train.run import train_run
    one = tmp_path / 'one'
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            r, _, _ = train_run('mf', DATASET, seed=SEED, device='cpu',
                                cfg=config_of('mf', 12, patience=1,
                                              lr=0.05),
                                out=str(one / 'mf'))
    finally:
        torch.set_num_threads(n)
    assert r.epochs_run < 12                   # it did stop early
    two = tmp_path / 'two'
    run_job([str(two), 'mf', '--epochs', '12', '--patience', '1', '--lr',
             '0.05'], 2, module=WORKER)       # both ranks exit cleanly
    assert len(_history(two / 'mf')) == r.epochs_run
    _assert_same_run(one / 'mf', two / 'mf')
