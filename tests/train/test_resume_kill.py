r"""Crash safety: a training process killed with SIGKILL mid-run and resumed
with ``mmdiff train --resume DIR`` ends with exactly the metrics of an
uninterrupted run of the same seed (CPU); checkpoints are written
atomically; a non-finite loss stops training and keeps the last good
checkpoint."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mmdiff.cli import main
from mmdiff.data.datasets import get_dataset
from mmdiff.errors import TrainingError
from mmdiff.nn.models import MF, MODELS, register_model
from mmdiff.train import Trainer
from mmdiff.train.checkpoint import atomic_save, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 30
ARGS = ['train', '--model', 'lightgcn', '--dataset',
        'synthetic:users=300,items=200', '--epochs', str(EPOCHS),
        '--patience', '0', '--batch-size', '256', '--seed', '7',
        '--device', 'cpu', '--set', 'embedding_dim=8', '--quiet']


from run_helpers import _cli, _history, _metrics, _one_thread, run_and_kill  # noqa: F401,E501


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path):
    killed = tmp_path / 'killed'
    seen = run_and_kill(ARGS, killed, ROOT)
    assert seen >= 1
    # the run was interrupted mid-way: no final outputs, a usable checkpoint
    assert not (killed / 'metrics.json').exists()
    assert not (killed / 'best_model.pt').exists()
    ck = load_checkpoint(killed)
    assert 1 <= ck['epoch'] < EPOCHS - 1

    _cli('train', '--resume', killed, '--quiet')
    full = tmp_path / 'full'
    _cli(*ARGS, '--out', full)

    assert _metrics(killed) == _metrics(full)
    assert _metrics(full)['epochs_run'] == EPOCHS
    assert _history(killed) == _history(full)
    assert [r['epoch'] for r in _history(killed)] == list(range(EPOCHS))
    assert load_checkpoint(killed)['epoch'] == EPOCHS - 1


# Atomic writes ##############################################################

def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / 'checkpoint.pt'
    good = {'format': 'mmdiff-checkpoint-v1', 'epoch': 3,
            'w': torch.arange(5.)}
    atomic_save(good, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError('disk on fire')
    big = {'format': 'mmdiff-checkpoint-v1', 'epoch': 4,
           'w': torch.zeros(100_000), 'boom': Boom()}
    with pytest.raises(RuntimeError, match='disk on fire'):
        atomic_save(big, path)
    ck = load_checkpoint(path)
    assert ck['epoch'] == 3 and torch.equal(ck['w'], torch.arange(5.))
    assert [p.name for p in tmp_path.iterdir()] == ['checkpoint.pt']


# Numerical guard #############################################################

class NaNFromEpoch2(MF):
    r"""MF whose BPR term becomes NaN from epoch 2 on."""
    name = 'nan_from_epoch_2'

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def loss(self, batch):
        out = super().loss(batch)
        if self._epoch >= 2:
            out['bpr'] = out['bpr'] * float('nan')
            out['loss'] = out['bpr'] + out['reg']
        return out


def _assert_last_good_checkpoint(run: Path) -> None:
    ck = load_checkpoint(run)
    assert ck['epoch'] == 1
    assert all(torch.isfinite(v).all() for v in ck['model_state'].values())
    assert len(ck['history']) == 2
    assert all(math.isfinite(r['bpr/loss']) for r in ck['history'])
    assert not (run / 'metrics.json').exists()


def test_non_finite_loss_names_epoch_and_term_keeps_checkpoint(tmp_path):
    data = get_dataset('synthetic:users=60,items=40')
    model = NaNFromEpoch2.from_data(data, embedding_dim=4)
    with pytest.raises(TrainingError,
                       match=r"epoch 2: the 'bpr' loss of phase 'bpr' is nan "
                             r"\(non-finite; also non-finite: loss\); "
                             r"training stopped, last good checkpoint kept "
                             r"in"):
        Trainer(model, data, epochs=5, batch_size=64, out_dir=tmp_path / 'a'
                ).fit()
    _assert_last_good_checkpoint(tmp_path / 'a')


def test_non_finite_loss_through_the_cli(tmp_path, capsys):
    register_model(NaNFromEpoch2)
    try:
        rc = main(['train', '--model', NaNFromEpoch2.name, '--dataset',
                   'synthetic:users=60,items=40', '--epochs', '5',
                   '--batch-size', '64', '--set', 'embedding_dim=4',
                   '--out', str(tmp_path / 'b'), '--quiet'])
    finally:
        MODELS.pop(NaNFromEpoch2.name, None)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(
        "error: epoch 2: the 'bpr' loss of phase 'bpr' is nan"), err
    _assert_last_good_checkpoint(tmp_path / 'b')
