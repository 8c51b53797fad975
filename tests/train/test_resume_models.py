r"""Crash safety of the diffusion models: a ``mmdiff train`` process killed
with SIGKILL after some epoch's checkpoint was written and resumed with
``mmdiff train --resume DIR`` ends with exactly the metrics, history and
best weights of an uninterrupted run of the same seed (CPU, one thread).

Mirrors tests/test_resume_kill.py (LightGCN) for DiffMM, LD4MRec and
DiffRec.  Only trainer-level flags are passed; the model hyper-parameters
are the ``[synthetic]`` presets.  To make the kill land mid-run however
fast the epochs are, the child is frozen with SIGSTOP as soon as a
checkpoint exists, the checkpoint is inspected, and the child is then
killed with SIGKILL (or continued if the checkpoint is still epoch 0).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmdiff.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DATASET = 'synthetic:users=150,items=100'
#: epochs per model: the fast models get more, so that the run is still
#: going when the checkpoint of epoch >= 1 is seen
EPOCHS = {'diffmm': 6, 'ld4mrec': 20, 'diffrec': 20}


def _args(model):
    return ['train', '--model', model, '--dataset', DATASET,
            '--epochs', str(EPOCHS[model]), '--patience', '0',
            '--batch-size', '64', '--seed', '5', '--device', 'cpu',
            '--quiet']


from run_helpers import _cli, _history, _metrics, _one_thread, run_and_kill  # noqa: F401,E501


def _same(a, b, where='') -> None:
    r"""Exact equality of nested state (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


@pytest.mark.parametrize('model', ['diffmm', 'ld4mrec', 'diffrec'])
def test_sigkill_then_resume_matches_uninterrupted(model, tmp_path):
    epochs = EPOCHS[model]
    killed = tmp_path / 'killed'
    seen = run_and_kill(_args(model), killed, ROOT)
    assert seen >= 1
    # interrupted mid-way: no final outputs, a usable checkpoint
    assert not (killed / 'metrics.json').exists()
    assert not (killed / 'best_model.pt').exists()
    ck = load_checkpoint(killed)
    assert ck['epoch'] == seen
    assert 1 <= ck['epoch'] < epochs - 1
    assert ck['config']['model'] == model
    assert len(ck['history']) == ck['epoch'] + 1

    _cli('train', '--resume', killed, '--quiet')
    full = tmp_path / 'full'
    _cli(*_args(model), '--out', full)

    assert _metrics(killed) == _metrics(full)
    assert _metrics(full)['epochs_run'] == epochs
    assert _history(killed) == _history(full)
    assert [r['epoch'] for r in _history(killed)] == list(range(epochs))
    # the history rows before the kill were kept, not recomputed
    assert _history(killed)[:seen + 1] == [
        {k: v for k, v in r.items() if not k.startswith('time/')}
        for r in ck['history']]
    # final state: last checkpoint and the selected weights are identical
    a, b = load_checkpoint(killed), load_checkpoint(full)
    assert a['epoch'] == b['epoch'] == epochs - 1
    _same(a['model_state'], b['model_state'], 'checkpoint')
    _same(a['best'], b['best'], 'best')
    _same(load_checkpoint(killed / 'best_model.pt')['model_state'],
          load_checkpoint(full / 'best_model.pt')['model_state'],
          'best_model')
