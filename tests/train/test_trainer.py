import json
import math

import pytest
import torch

from mmdiff.errors import CheckpointError, ConfigError, TrainingError
from mmdiff.nn.models import MF, LightGCN
from mmdiff.nn.models.base import TrainingPhase
from mmdiff.train import Trainer, load_checkpoint


def fit(data, seed=0, **kw):
    torch.manual_seed(seed)
    model = LightGCN.from_data(data, embedding_dim=16, num_layers=2, lr=0.01)
    kw.setdefault('epochs', 4)
    return Trainer(model, data, batch_size=32, seed=seed, **kw).fit(), model


def test_fit_improves_over_untrained(tiny):
    torch.manual_seed(0)
    model = MF.from_data(tiny, embedding_dim=16, lr=0.05)
    res = Trainer(model, tiny, epochs=15, batch_size=32, patience=0).fit()
    assert res.epochs_run == 15
    losses = [r['bpr/loss'] for r in res.history]
    assert losses[-1] < losses[0]
    assert set(res.test_metrics) >= {'recall@10', 'ndcg@20', 'precision@20',
                                     'hit@10'}
    assert res.best_epoch == max(
        range(15), key=lambda e: (res.history[e]['val/recall@20'], -e))


def test_same_seed_same_metrics_different_seed_differs(tiny):
    a, _ = fit(tiny, seed=1)
    b, _ = fit(tiny, seed=1)
    c, _ = fit(tiny, seed=2)
    assert a.test_metrics == b.test_metrics
    assert [r['bpr/loss'] for r in a.history] == \
        [r['bpr/loss'] for r in b.history]
    assert [r['bpr/loss'] for r in a.history] != \
        [r['bpr/loss'] for r in c.history]


def test_on_epoch_receives_each_finished_row(tiny):
    rows = []
    res, _ = fit(tiny, epochs=3, on_epoch=rows.append)
    assert [r['epoch'] for r in rows] == [0, 1, 2]
    assert rows == res.history
    assert all('val/recall@20' in r and r['time/epoch'] > 0 for r in rows)
    rows[0]['bpr/loss'] = float('nan')  # a copy: the history is untouched
    assert not math.isnan(res.history[0]['bpr/loss'])


def test_early_stopping_and_best_restored(tiny):
    res, model = fit(tiny, epochs=30, patience=2)
    assert res.epochs_run < 30
    assert res.epochs_run - 1 - res.best_epoch == 2
    best_row = res.history[res.best_epoch]
    assert res.val_metrics['recall@20'] == pytest.approx(
        best_row['val/recall@20'])


def test_out_dir_files(tiny, tmp_path):
    res, _ = fit(tiny, out_dir=tmp_path / 'run', config={'model': 'x'})
    files = {p.name for p in (tmp_path / 'run').iterdir()}
    assert {'checkpoint.pt', 'best_model.pt', 'history.csv',
            'history.jsonl', 'metrics.json', 'config.json'} <= files
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert m['test/recall@20'] == pytest.approx(res.test_metrics['recall@20'])
    assert m['best_epoch'] == res.best_epoch and m['seconds_per_epoch'] > 0
    lines = (tmp_path / 'run' / 'history.jsonl').read_text().splitlines()
    assert len(lines) == res.epochs_run
    ck = load_checkpoint(tmp_path / 'run')
    assert ck['epoch'] == res.epochs_run - 1


def test_resume_gives_identical_result(tiny, tmp_path):
    full, _ = fit(tiny, epochs=6, out_dir=tmp_path / 'a')
    part, _ = fit(tiny, epochs=3, out_dir=tmp_path / 'b')
    torch.manual_seed(123)  # resume must not depend on the global state
    model = LightGCN.from_data(tiny, embedding_dim=16, num_layers=2, lr=0.01)
    resumed = Trainer(model, tiny, epochs=6, batch_size=32, seed=0,
                      out_dir=tmp_path / 'b', resume=True).fit()
    assert resumed.test_metrics == full.test_metrics
    assert [r['bpr/loss'] for r in resumed.history] == \
        [r['bpr/loss'] for r in full.history]


def test_resume_wrong_model_or_items(tiny, tmp_path):
    fit(tiny, epochs=1, out_dir=tmp_path / 'a')
    model = MF.from_data(tiny, embedding_dim=16)
    with pytest.raises(CheckpointError, match="model 'lightgcn'"):
        Trainer(model, tiny, epochs=2, out_dir=tmp_path / 'a',
                resume=True).fit()


class NaNModel(MF):
    def loss(self, batch):
        out = super().loss(batch)
        out['exploding'] = out['loss'] * float('nan')
        return out


def test_non_finite_loss_stops_with_clear_error(tiny, tmp_path):
    model = NaNModel.from_data(tiny, embedding_dim=8)
    with pytest.raises(TrainingError, match=r"epoch 0: the 'exploding' loss"):
        Trainer(model, tiny, epochs=2, out_dir=tmp_path).fit()


@pytest.mark.parametrize('kw,msg', [
    ({'epochs': -1}, 'epochs'),
    ({'batch_size': 0}, 'batch_size'),
    ({'eval_every': 0}, 'eval_every'),
    ({'ks': [10, 1000]}, 'K=1000'),
    ({'monitor': 'auc@20'}, 'monitor'),
])
def test_bad_trainer_args(tiny, kw, msg):
    model = MF.from_data(tiny)
    with pytest.raises(ConfigError, match=msg):
        Trainer(model, tiny, **kw)
