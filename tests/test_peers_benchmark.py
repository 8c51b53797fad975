"""benchmarks/peers.py without RecBole: the split -> atomic files round trip,
the parameter mapping, the stop rule, the metric cross-check and the report
(ratios, formatting).  Nothing here runs RecBole or asserts a time."""
import ast
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / 'benchmarks'
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402

from mmdiff.data import edge_index_of, make_synthetic, num_items  # noqa: E402
from mmdiff.nn.models import get_model_class  # noqa: E402
from mmdiff.train.config import preset  # noqa: E402


@pytest.fixture(scope='module')
def tiny():
    return make_synthetic(num_users=40, num_items=30, modalities={},
                          interactions_per_user=6, seed=3)


def test_atomic_files_round_trip_the_split_exactly(tiny, tmp_path):
    paths = peers.write_atomic(peers.data_splits(tiny), tmp_path, 'tiny')
    assert {k: p.name for k, p in paths.items()} == {
        'train': 'tiny.train.inter', 'val': 'tiny.valid.inter',
        'test': 'tiny.test.inter'}
    assert all(p.parent == tmp_path / 'tiny' for p in paths.values())
    for split in ('train', 'val', 'test'):
        text = paths[split].read_text()
        assert text.splitlines()[0] == 'user_id:token\titem_id:token'
        users, items = peers.read_atomic(paths[split])
        e = edge_index_of(tiny, split)
        assert e.size(1) > 0
        assert torch.equal(torch.tensor([users, items]), e)  # same order


def test_atomic_writer_refuses_ragged_columns(tmp_path):
    bad = {'train': ([0, 1], [2]), 'val': ([], []), 'test': ([], [])}
    with pytest.raises(ValueError, match='users but'):
        peers.write_atomic(bad, tmp_path, 'x')


def test_lightgcn_mapping_of_the_baby_preset():
    cfg = preset('lightgcn', 'baby')
    params, rows = peers.recbole_params('lightgcn', cfg, max_epochs=40,
                                        patience=7, seed=0, num_items=7050)
    assert params['train_batch_size'] == cfg['batch_size'] == 2048
    assert params['embedding_size'] == cfg['embedding_dim'] == 64
    assert params['n_layers'] == cfg['num_layers'] == 3
    assert params['reg_weight'] == cfg['reg'] == 1e-4
    assert params['learning_rate'] == cfg['lr'] == 1e-3
    assert params['require_pow'] is True
    assert params['train_neg_sample_args'] == {'distribution': 'uniform',
                                               'sample_num': 1}
    assert (params['epochs'], params['stopping_step']) == (40, 7)
    assert params['valid_metric'] == 'recall@20'
    assert params['eval_batch_size'] == 1024 * 7051
    assert params['benchmark_filename'] == ['train', 'valid', 'test']
    assert params['metric_decimal_place'] >= 8
    assert ('batch_size = 2048', 'train_batch_size', '2048') in rows


def test_diffrec_mapping_of_the_baby_preset():
    cfg = preset('diffrec', 'baby')
    params, rows = peers.recbole_params('diffrec', cfg, max_epochs=10,
                                        patience=3, seed=0, num_items=100)
    assert params['dims_dnn'] == [1000]
    assert params['embedding_size'] == 10
    assert params['learning_rate'] == 5e-5
    assert params['train_batch_size'] == 400
    assert (params['noise_scale'], params['noise_min'],
            params['noise_max']) == (1e-4, 5e-4, 5e-3)
    assert params['noise_schedule'] == 'linear-var'
    assert params['steps'] == 5 and params['sampling_steps'] == 0
    assert params['mean_type'] == 'x0' and params['reweight'] is True
    assert params['train_neg_sample_args'] is None
    assert any(r[1] == '(fixed in RecBole)' and r[0].startswith('dropout')
               for r in rows)


@pytest.mark.parametrize('model', peers.MODELS)
def test_mapped_settings_are_mmdiff_hyper_parameters(model):
    cls = get_model_class(model)
    names = set(cls.hparam_names()) | {'batch_size', 'epochs', 'patience'}
    assert set(peers.MAPPING[model]) <= names
    assert set(peers.REQUIRED[model]) <= names


def test_mapping_refuses_what_recbole_cannot_do():
    cfg = dict(preset('diffrec', 'baby'), dropout=0.2)
    with pytest.raises(ValueError, match='dropout'):
        peers.recbole_params('diffrec', cfg, max_epochs=1, patience=1,
                             seed=0, num_items=10)
    with pytest.raises(ValueError, match='no RecBole mapping'):
        peers.recbole_params('diffmm', {}, max_epochs=1, patience=1, seed=0,
                             num_items=10)


def test_selection_is_the_trainers_rule():
    sel = peers.Selection(max_epochs=100, patience=2)
    stops = [sel.update(s) for s in (0.1, 0.3, 0.3, 0.2)]
    assert stops == [False, False, False, True]   # ties do not improve
    assert (sel.best_epoch, sel.epochs, sel.reason) == (1, 4, 'patience')
    cap = peers.Selection(max_epochs=3, patience=0)
    assert [cap.update(s) for s in (0.3, 0.2, 0.1)] == [False, False, True]
    assert (cap.best_epoch, cap.reason) == (0, 'cap')


def test_metric_check_uses_mmdiff_definitions():
    from mmdiff.metrics import full_ranking_metrics
    g = torch.Generator().manual_seed(0)
    U, I = 12, 9
    scores = torch.randn(U, I, generator=g)
    train = torch.tensor([[u for u in range(U)], [u % I for u in range(U)]])
    test = torch.tensor([[0, 0, 1, 3, 3, 3, 7], [2, 5, 4, 1, 6, 8, 0]])
    masked = scores.clone()
    masked[train[0], train[1]] = float('-inf')
    topk = {str(u): masked[u].topk(5).indices.tolist() for u in range(U)}
    got = peers.metrics_of_topk(topk, (test[0].tolist(), test[1].tolist()),
                                ks=(3, 5))
    want = full_ranking_metrics(lambda u: scores[u], test, U, I, train=train,
                                ks=(3, 5))
    for key in ('recall@3', 'recall@5', 'ndcg@3', 'ndcg@5'):
        assert got[key] == pytest.approx(want[key], abs=1e-6)
    with pytest.raises(ValueError, match='no ranked list'):
        peers.metrics_of_topk({}, ([0], [1]))


def _rows(train, evals, r20):
    return [{'train_s': t, 'eval_s': e, 'loss': 1.0,
             'val': {'recall@20': r, 'ndcg@20': r / 2}}
            for t, e, r in zip(train, evals, r20)]


def _run():
    rec = {'epochs': _rows([9.0, 4.0, 6.0, 5.0], [3.0, 2.0, 2.0, 2.0],
                           [0.01, 0.03, 0.02, 0.02]),
           'best_epoch': 1, 'stopped_by': 'patience (4 epochs)',
           'ready': {'ready': 12.0, 'split_check': {
               'train': True, 'val': True, 'test': True, 'num_users': 40,
               'num_items': 30, 'items_match': True,
               'eval_users_per_batch': 1024},
               'versions': {'recbole': '1.2.1'}, 'threads': 2,
               'interop_threads': 2},
           'finish': {'test': {'recall@20': 0.05, 'ndcg@20': 0.02},
                      'test_s': 3.0, 'peak_rss_mb': 900.0,
                      'test_recbole_protocol': {'recall@20': 0.051,
                                                'ndcg@20': 0.021}},
           'metric_check': {'recall@20': [0.05, 0.05]},
           'metric_check_max_diff': 0.0}
    ours = {'epochs': _rows([5.0, 2.0, 2.0], [1.0, 1.0, 0.5],
                            [0.02, 0.01, 0.04]),
            'best_epoch': 2, 'stopped_by': 'cap (3 epochs)',
            'ready': {'ready': 4.0, 'versions': {'mmdiff': '0.1.0'},
                      'threads': 2, 'interop_threads': 2},
            'finish': {'test': {'recall@20': 0.04, 'ndcg@20': 0.025},
                       'test_s': 1.5, 'peak_rss_mb': 600.0}}
    run = {'num_users': 40, 'num_items': 30, 'sizes': 'train 10',
           'max_epochs': 4, 'patience': 2,
           'mapping': [('lr = 0.001', 'learning_rate', '0.001')],
           'contenders': {'recbole': rec, 'mmdiff': ours},
           'log': [(0, 'recbole', rec['epochs'][0]),
                   (0, 'mmdiff', ours['epochs'][0])]}
    run['summary'] = peers.summarise(run)
    return run


def test_summary_medians_skip_the_warm_up_and_ratios_pair_rounds():
    s = _run()['summary']
    assert s['recbole']['train_s'] == {'median': 5.0, 'min': 4.0,
                                       'max': 6.0, 'n': 3}
    assert s['mmdiff']['train_s']['median'] == 2.0
    # rounds 2 and 3 (both ran; round 1 is the warm-up): 4/2, 6/2
    assert s['ratio']['train_s'] == {'median': 2.5, 'min': 2.0, 'max': 3.0,
                                     'n': 2}
    assert s['ratio']['eval_s']['median'] == pytest.approx(3.0)
    assert s['ratio']['peak_rss_mb'] == pytest.approx(1.5)
    assert s['ratio']['test_recall'] == pytest.approx(1.25)
    assert s['ratio']['test_s'] == pytest.approx(2.0)
    assert (s['recbole']['best_epoch'], s['mmdiff']['best_epoch']) == (2, 3)
    assert s['recbole']['val_recall'] == 0.03
    assert (s['recbole']['first_train_s'], s['mmdiff']['first_eval_s']) == \
        (9.0, 1.0)


def test_paired_ratios_and_stats_edge_cases():
    assert peers.stats([]) is None
    one = _rows([2.0], [1.0], [0.1])
    assert peers.paired_ratios(one, _rows([1.0], [1.0], [0.1]),
                               'train_s')['median'] == 2.0
    assert peers.ratio(1.0, 0.0) is None and peers.ratio(None, 1.0) is None


def _record():
    run = _run()
    return {'command': '.venv/bin/python benchmarks/peers.py --datasets x',
           'date': '2026-01-01T00:00:00', 'wall_s': 120.0,
           'machine': 'test box', 'threads': 2,
           'matmul_ms': {'before': 100.0, 'after': 101.0},
           'setup_commands': ['python3 -m venv V'],
           'versions': {'recbole': {'recbole': '1.2.1'},
                        'mmdiff': {'mmdiff': '0.1.0'}},
           'budget': {'max_epochs': 4, 'patience': 2, 'seed': 0},
           'shims': peers.SHIMS, 'notes': peers.NOTES,
           'runs': {'x': {'lightgcn': run}}}


def test_report_lists_commands_shims_and_ratios():
    md = peers.render(json.loads(json.dumps(_record())))  # as stored
    assert '`.venv/bin/python benchmarks/peers.py --datasets x`' in md
    assert '`python3 -m venv V`' in md
    for what, _ in peers.SHIMS:
        assert what in md
    assert '| train s/epoch, median [min–max] | 5.00 [4.00–6.00] | ' \
        '2.00 [2.00–2.00] | 2.50× [2.00–3.00] |' in md
    assert '| peak RSS MB (whole process, VmHWM) | 900 | 600 | 1.50× |' in md
    assert '| ru_maxrss MB | n/a | n/a | n/a |' in md
    assert '| test Recall@20 (validation-selected) | 0.0500 | 0.0400 | ' \
        '1.250× |' in md
    assert '| selected epoch (1 = first) / epochs run | 2 / 4 | 3 / 3 |' in md
    assert 'patience (4 epochs)' in md and 'cap (3 epochs)' in md
    assert '| first epoch (warm-up, not in the medians): train s / ' \
        'validation s | 9.00 / 3.00 | 5.00 / 1.00 | |' in md
    assert '100.0 / 101.0 ms' in md
    assert 'RecBole 2 / 2, mmdiff 2 / 2' in md


def test_module_imports_only_the_standard_library_at_top_level():
    # the RecBole environment runs this file and has no mmdiff
    tree = ast.parse((BENCH / 'peers.py').read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split('.')[0])
    assert names <= set(sys.stdlib_module_names) | {'__future__'}


def test_default_environment_is_outside_the_repository():
    repo = BENCH.parent.resolve()
    assert repo not in peers.DEFAULT_VENV.resolve().parents
    assert num_items  # the synthetic helpers come from mmdiff.data


def test_render_rebuilds_the_report_from_a_stored_record(tmp_path):
    rec = _record()
    del rec['runs']['x']['lightgcn']['summary']  # recomputed from the epochs
    path = tmp_path / 'rec.json'
    path.write_text(json.dumps(rec))
    assert peers.main(['--render', str(path), '--out', str(tmp_path),
                       '--tag', 'again']) == 0
    md = (tmp_path / 'again.md').read_text()
    assert md == peers.render(json.loads(json.dumps(_record())))
    assert not (tmp_path / 'peers_runs').exists()


def test_failed_model_is_reported_not_hidden():
    rec = _record()
    rec['runs']['x']['diffrec'] = {'error': 'Traceback ...\nBoom: no'}
    rec['complete'] = False
    md = peers.render(json.loads(json.dumps(rec)))
    assert '## diffrec on x: failed' in md and 'Boom: no' in md
    assert 'only the finished models are below' in md


def test_caps_per_model():
    assert peers.parse_caps(None) is None
    assert peers.parse_caps(['7']) == 7
    caps = peers.parse_caps(['lightgcn=50', 'diffrec=14'])
    assert caps == {'lightgcn': 50, 'diffrec': 14}
    assert peers.cap_of(caps, 'diffrec', 1000) == 14
    assert peers.cap_of({'diffrec': 3}, 'lightgcn', 1000) == 1000
    assert peers.cap_of(None, 'lightgcn', 1000) == 1000
    with pytest.raises(ValueError, match='MODEL=N'):
        peers.parse_caps(['mf=3'])


def test_convergence_note_says_who_hit_the_cap():
    s = _run()['summary']
    note = peers.convergence_note(s)
    assert note == ('RecBole was stopped by the patience rule after 4 '
                    'epochs (best epoch 2); mmdiff hit the cap still '
                    'improving (its last epoch is its best).')
    s['recbole']['stopped_by'] = 'cap (4 epochs)'
    note = peers.convergence_note(s)
    assert note.startswith('RecBole hit the cap (best epoch 2 of 4)')
    assert note.endswith('after the same number of epochs, not at '
                         'convergence.')
    assert peers.convergence_note(s) in peers.render(
        json.loads(json.dumps(dict(_record(), runs={'x': {'m': dict(
            _run(), summary=s)}}))))
