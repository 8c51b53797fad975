r"""The Trainer restores the weights of the best validation epoch.

When the best validation epoch is not the last one (and not tied), the
metrics ``Trainer.fit`` reports for the restored model must be *exactly*
the ``val/...`` and ``test/...`` entries logged at that epoch
(``track_test=True``), and evaluating the trainer's model again must give
the same numbers.  Two set-ups, both through the real ``Trainer.fit``:

* :class:`EpochPeak`, a tiny recommender defined here whose scores depend on
  a buffer holding the current epoch, so that the validation curve peaks at
  :data:`PEAK` by construction (plus a trained item bias, so that the
  parameters must be restored too);
* MF and LightGCN on a small synthetic dataset with a large learning rate,
  whose validation Recall@20 rises then falls; several seeds are run and the
  exact checks apply to each, the "best epoch is not the last" precondition
  has to hold for at least one of them.
"""
from __future__ import annotations

import json
from typing import List

import numpy as np
import pytest
import torch

from mmdiff.data.hetero import edge_index_of, num_items, num_users
from mmdiff.data.synthetic import make_synthetic
from mmdiff.nn.models import MF, LightGCN
from mmdiff.nn.models.base import Recommender, TrainingPhase
from mmdiff.train import Trainer
from mmdiff.train.checkpoint import load_checkpoint

from conftest import tiny_data

#: EpochPeak's weight of the planted truth per epoch: peak at epoch 3
ALPHA = [0.0, 0.4, 1.0, 4.0, 1.5, 0.7, 0.2]
PEAK = 3


class EpochPeak(Recommender):
    r"""``score[u, i] = ALPHA[epoch] * truth[u, i] + noise[u, i] + 0.05 b_i``
    with ``truth`` marking each user's validation and test items, fixed
    Gaussian ``noise`` and a trained item bias ``b``; ``epoch`` is a buffer
    set by :meth:`on_epoch_start`, so it is part of the state dict."""
    name = 'epoch_peak_test_only'

    def __init__(self, data, lr=0.5, seed=0):
        super().__init__()
        U, I = num_users(data), num_items(data)
        truth = torch.zeros(U, I)
        for split in ('val', 'test'):
            u, i = edge_index_of(data, split)
            truth[u, i] = 1.0
        g = np.random.default_rng(seed)
        self.register_buffer('truth', truth)
        self.register_buffer('noise', torch.from_numpy(
            g.standard_normal((U, I)).astype(np.float32)))
        self.register_buffer('epoch', torch.zeros((), dtype=torch.long))
        self.bias = torch.nn.Parameter(torch.zeros(I))
        self.lr = lr

    @classmethod
    def from_data(cls, data, **hparams):
        return cls(data, **hparams)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch.fill_(epoch)

    def loss(self, batch):
        d = self.bias[batch.pos] - self.bias[batch.neg]
        loss = -torch.nn.functional.logsigmoid(d).mean()
        return {'loss': loss}

    def phases(self) -> List[TrainingPhase]:
        return [TrainingPhase('bias', 'triplets', self.loss, [self.bias],
                              lr=self.lr)]

    def score(self, users):
        alpha = ALPHA[int(self.epoch)]
        return (alpha * self.truth[users] + self.noise[users] +
                0.05 * self.bias)


def _split(row, prefix):
    return {k[len(prefix):]: v for k, v in row.items()
            if k.startswith(prefix)}


def _check_restore(trainer, res, monitor='recall@20'):
    r"""The exact restore checks; returns whether the best epoch is strictly
    best and not the last (the interesting case)."""
    hist = res.history
    vals = [r[f'val/{monitor}'] for r in hist]
    best = res.best_epoch
    # best_epoch is the first epoch with the highest validation score
    assert best == max(range(len(vals)), key=lambda e: (vals[e], -e))
    assert hist[best]['epoch'] == best
    row = hist[best]
    val_row, test_row = _split(row, 'val/'), _split(row, 'test/')
    assert val_row and test_row
    # exact equality: the restored model is the model of that epoch
    assert res.val_metrics == val_row
    assert res.test_metrics == test_row
    assert trainer.evaluate('val') == val_row
    assert trainer.evaluate('test') == test_row
    # the best-test-epoch protocol reports that epoch's logged test row
    tests = [r[f'test/{monitor}'] for r in hist]
    bt = res.best_test_epoch
    assert bt == max(range(len(tests)), key=lambda e: (tests[e], -e))
    assert res.best_test_epoch_metrics == _split(hist[bt], 'test/')
    strict = all(vals[best] > v for e, v in enumerate(vals) if e != best)
    return strict and best != len(hist) - 1


def test_epoch_peaked_model_restores_best_epoch(one_thread, tmp_path):
    data = tiny_data(num_users=60, num_items=80, per_user=8, seed=3)
    torch.manual_seed(0)
    model = EpochPeak(data)
    trainer = Trainer(model, data, epochs=len(ALPHA), batch_size=32,
                      patience=0, seed=0, track_test=True,
                      out_dir=tmp_path / 'run')
    res = trainer.fit()
    assert res.epochs_run == len(ALPHA)
    vals = [r['val/recall@20'] for r in res.history]
    # the validation curve peaks strictly in the middle
    assert res.best_epoch == PEAK != len(ALPHA) - 1
    assert all(vals[PEAK] > v for e, v in enumerate(vals) if e != PEAK), vals
    assert vals[-1] < vals[PEAK]
    assert _check_restore(trainer, res)
    # the restored state is the peak epoch's: buffer and trained bias
    assert int(model.epoch) == PEAK
    # the bias kept training after the peak: restoring it matters
    ck = load_checkpoint(tmp_path / 'run')
    assert int(ck['model_state']['epoch']) == len(ALPHA) - 1
    assert not torch.equal(ck['model_state']['bias'], model.bias.detach())
    # the files agree with the returned result
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert m['best_epoch'] == PEAK
    assert {k[4:]: v for k, v in m.items() if k.startswith('val/')} == \
        res.val_metrics
    assert {k[5:]: v for k, v in m.items() if k.startswith('test/')} == \
        res.test_metrics
    best = load_checkpoint(tmp_path / 'run' / 'best_model.pt')
    for k, v in model.state_dict().items():
        assert torch.equal(best['model_state'][k], v), k


@pytest.mark.parametrize('cls,kw', [
    (MF, dict(embedding_dim=16, lr=0.2, reg=0.0)),
    (LightGCN, dict(embedding_dim=16, num_layers=2, lr=0.1, reg=0.0)),
])
def test_natural_overfitting_restores_best_epoch(one_thread, cls, kw):
    data = make_synthetic(150, 100, modalities={}, seed=0)
    interesting = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = cls.from_data(data, **kw)
        trainer = Trainer(model, data, epochs=12, batch_size=64, patience=0,
                          seed=seed, track_test=True)
        res = trainer.fit()
        assert res.epochs_run == 12
        interesting.append(_check_restore(trainer, res))
    # at least one run peaked strictly before its last epoch
    assert any(interesting), interesting
