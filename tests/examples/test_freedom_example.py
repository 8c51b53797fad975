r"""examples/freedom.py: a user's own FREEDOM, registered with
``register_model``, trains through the library's ``train_run`` and runs as a
script."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from mmdiff.data import make_synthetic
from mmdiff.graph import normalized_edges
from mmdiff.nn.models import MODELS, get_model_class
from mmdiff.train.run import train_run

EXAMPLE = Path(__file__).resolve().parents[2] / 'examples' / 'freedom.py'


@pytest.fixture(scope='module')
def example():
    threads = torch.get_num_threads()
    # tiny graphs: one thread is far faster on a busy 2-core machine
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location('example_freedom', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    MODELS.pop('freedom', None)        # leave the registry as we found it
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def data():
    return make_synthetic(num_users=150, num_items=90, seed=0)


def test_short_and_registered(example):
    assert len(EXAMPLE.read_text().splitlines()) < 200
    assert get_model_class('freedom') is example.FREEDOM


def test_trains_through_train_run(example, data):
    cfg = dict(example.CONFIG, epochs=8, patience=0, batch_size=256, lr=1e-2,
               dropout=0.5, embedding_dim=16)
    result, model, _ = train_run('freedom', 'synthetic', data=data, cfg=cfg,
                                 seed=0, device='cpu')
    assert isinstance(model, example.FREEDOM) and result.epochs_run == 8
    losses = [row['bpr/loss'] for row in result.history]
    assert losses[-1] < 0.9 * losses[0] and losses[-1] < losses[1]
    assert all(math.isfinite(v) for v in result.test_metrics.values())
    assert result.val_metrics['recall@20'] > 0.0
    assert 0 <= result.best_epoch < 8


def test_graphs(example, data):
    torch.manual_seed(0)
    model = example.FREEDOM.from_data(data, knn_k=4, dropout=0.8,
                                      embedding_dim=8)
    U, I = model.num_users, model.num_items
    E = model.ui_edges.size(1)
    # frozen item-item graph: image 0.1 + text 0.9 of row-normalised kNN
    # lists (self included), so every item's weights sum to 1
    rows = torch.zeros(I).index_add_(0, model.mm_index[1], model.mm_weight)
    assert torch.allclose(rows, torch.ones(I), atol=1e-6)
    # a fresh degree-sensitive pruning every epoch, 20 % of the edges kept
    model.on_epoch_start(0)
    first = model._train_graph[0].clone()
    model.on_epoch_start(1)
    second = model._train_graph[0]
    assert first.size(1) == second.size(1) == 2 * int(E * 0.2)
    assert not torch.equal(first, second)
    # scoring uses the full graph, the same before and after re-pruning
    model.eval()
    with torch.no_grad():
        model.prepare_scoring()
        s1 = model.score(torch.arange(5))
        model.on_epoch_start(2)
        model.prepare_scoring()
        s2 = model.score(torch.arange(5))
    assert s1.shape == (5, I) and torch.equal(s1, s2)
    full = normalized_edges(model.ui_edges, U, I)[0]
    assert model._graph('full')[0].size(1) == full.size(1)


def test_runs_as_a_script(example, capsys):
    result, model = example.main(['--epochs', '2', '--threads', '1'])
    out = capsys.readouterr().out
    assert out.startswith('FREEDOM on synthetic (seed 0): epoch')
    assert 'test Recall@20' in out and result.epochs_run == 2


def _record(model, seed, r20, n20=0.04, cfg=None):
    metrics = {'test/recall@20': r20, 'test/ndcg@20': n20,
               'val/recall@20': r20, 'best_epoch': 5, 'epochs_run': 26,
               'seconds_per_epoch': 1.0}
    return {'model': model, 'dataset': 'tiktok', 'seed': seed, 'noise': 0.0,
            'metrics': metrics, 'machine': 'box', 'date': '2026-01-01',
            'command': 'benchmarks/freedom_tiktok.py',
            'config': cfg or {'epochs': 1000, 'patience': 20,
                              'dropout': 0.8, 'reg_weight': 1e-4}}


def test_benchmark_report_pairs_by_seed_and_answers(example):
    import sys
    sys.path.insert(0, str(EXAMPLE.parents[1] / 'benchmarks'))
    import freedom_tiktok
    freedom = [_record('freedom', s, 0.085 + 0.001 * s) for s in (0, 1, 2)]
    others = {'lightgcn': [_record('lightgcn', s, 0.080) for s in (0, 1, 2)],
              'diffmm': [_record('diffmm', s, 0.100 + 0.002 * s)
                         for s in range(4)]}
    grid = [_record('freedom-dropout0.9-reg_weight0.0001', s,
                    0.090 + 0.001 * s,
                    cfg={'epochs': 1000, 'patience': 20, 'dropout': 0.9,
                         'reg_weight': 1e-4}) for s in (0, 1, 2)]
    grid.append(_record('freedom-dropout0.8-reg_weight0.001', 0, 0.070,
                        cfg={'dropout': 0.8, 'reg_weight': 1e-3}))
    text = freedom_tiktok.render(freedom, others, grid)
    prior = 'FREEDOM (dropout 0.8, reg_weight 0.0001)'
    best = 'FREEDOM (dropout 0.9, reg_weight 0.0001)'
    assert f'| {prior}, prior choice | 0, 1, 2 | 0.0860 ± 0.0010 |' in text
    assert (f'| {best}, best validation R@20 of the grid on seed 0 | 0, 1, 2 '
            '| 0.0910 ± 0.0010 |') in text         # sample std
    assert '| DiffMM (float32) | 0, 1, 2, 3 | 0.1030 ± 0.0026 |' in text
    assert (f'{prior} − DiffMM (float32), R@20, seeds 0, 1, 2: mean -0.0160 '
            '(standard error 0.0006; FREEDOM higher on 0 of 3 seeds)') in text
    assert f'{best} − LightGCN, R@20, seeds 0, 1, 2: mean +0.0110' in text
    # the answer uses the validation-selected grid point
    assert (f"**Answer.** Yes: on TikTok (image + audio) DiffMM's "
            f"validation-selected test Recall@20 is above that of {best} by "
            "0.0110 on average over 3 paired seeds (more than two standard "
            "errors), while FREEDOM's is 0.0110 above LightGCN's") in text
    grid_rows = [ln for ln in text.splitlines() if ln.startswith('| 0.')]
    assert [ln.split(' | ')[:3] for ln in grid_rows] == [
        ['| 0.8', '0.0001', '0.0850'], ['| 0.8', '0.001', '0.0700'],
        ['| 0.9', '0.0001', '0.0900']]
    assert 'only' not in text
