r"""End-to-end tests of the ``mmdiff`` command line on tiny synthetic data:
train -> evaluate -> recommend, ``data info``, config precedence, seeding."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdiff.cli import dataset_key, main
from mmdiff.data.datasets import get_dataset, parse_synthetic_spec
from mmdiff.data.hetero import edge_index_of, num_items, num_users
from mmdiff.errors import ConfigError
from mmdiff.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = 'synthetic:users=120,items=80'


pytestmark = pytest.mark.usefixtures('one_thread')


def _run(capsys, *argv) -> str:
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def _table(out: str) -> dict:
    r"""``{split: {column: value}}`` of the metrics table printed by the
    CLI."""
    lines = out.strip().splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith('split '))
    cols = lines[head].split()
    rows = {}
    for ln in lines[head + 2:]:
        parts = ln.split()
        if not parts or parts[0] not in ('val', 'test'):
            break
        rows[parts[0]] = dict(zip(cols[1:], map(float, parts[1:])))
    return rows


def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items()
            if not k.startswith('seconds_per_epoch')}


def test_train_evaluate_recommend_round_trip(tmp_path, capsys):
    run = tmp_path / 'run'
    out = _run(capsys, 'train', '--model', 'lightgcn', '--dataset',
               'synthetic', '--epochs', '2', '--out', run, '--set',
               'embedding_dim=8')
    assert re.search(r'epoch +1 ', out) and 'best epoch' in out
    files = {p.name for p in run.iterdir()}
    assert {'config.json', 'history.csv', 'history.jsonl', 'checkpoint.pt',
            'best_model.pt', 'metrics.json'} <= files
    assert not [f for f in files if f.endswith('.tmp')]
    m = json.loads((run / 'metrics.json').read_text())
    for k in ('test/recall@20', 'test/ndcg@20', 'test/precision@20',
              'val/recall@20', 'val/ndcg@20', 'val/precision@20',
              'test/recall@10', 'best_epoch', 'seconds_per_epoch'):
        assert k in m, k
    assert m['epochs_run'] == 2 and m['best_epoch'] in (0, 1)
    assert m['seconds_per_epoch'] > 0 and 0 <= m['test/recall@20'] <= 1
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['model'] == 'lightgcn' and cfg['dataset'] == 'synthetic'
    assert cfg['hparams']['embedding_dim'] == 8
    assert cfg['hparams']['epochs'] == 2
    ck = load_checkpoint(run)  # weights_only=True
    assert ck['epoch'] == 1 and ck['model_name'] == 'lightgcn'
    assert ck['num_items'] == 800

    # evaluate reproduces the stored metrics of the best model
    table = _table(_run(capsys, 'evaluate', run, '--device', 'cpu'))
    for col in ('recall@20', 'ndcg@20', 'precision@20', 'recall@10'):
        assert table['test'][col] == pytest.approx(m[f'test/{col}'],
                                                   abs=6e-5)
    table = _table(_run(capsys, 'evaluate', run, '--split', 'val'))
    assert table['val']['recall@20'] == pytest.approx(m['val/recall@20'],
                                                      abs=6e-5)

    # recommend: k distinct unseen items per user
    out = _run(capsys, 'recommend', run, '--users', '0', '5', '9', '-k', '7')
    lines = [ln for ln in out.strip().splitlines() if ln.startswith('user')]
    assert [ln.split(':')[0] for ln in lines] == ['user 0', 'user 5',
                                                  'user 9']
    data = get_dataset('synthetic')
    train = edge_index_of(data, 'train')
    for ln in lines:
        u = int(ln.split(':')[0].split()[1])
        items = [int(x) for x in ln.split(':')[1].split()]
        assert len(items) == len(set(items)) == 7
        assert all(0 <= i < 800 for i in items)
        seen = set(train[1, train[0] == u].tolist())
        assert not seen & set(items)


def test_recommend_and_evaluate_accept_checkpoint_files(tmp_path, capsys):
    run = tmp_path / 'run'
    _run(capsys, 'train', '--model', 'mf', '--dataset', SMALL, '--epochs',
         '1', '--out', run, '--set', 'embedding_dim=4', '--quiet')
    a = _run(capsys, 'evaluate', run / 'best_model.pt')
    b = _run(capsys, 'evaluate', run)
    assert _table(a) == _table(b)
    out = _run(capsys, 'recommend', run / 'checkpoint.pt', '--users', '3')
    first = out.splitlines()[0]
    assert first.startswith('user 3: ')
    assert len(first.split(':')[1].split()) == 10
    assert 'score' in out.splitlines()[1]


def test_data_info(tmp_path, capsys):
    out = _run(capsys, 'data', 'info', 'synthetic:users=50,items=40')
    assert 'users: 50   items: 40' in out
    assert 'modalities: image (64-d), text (32-d)' in out
    assert 'users without training interactions: 0' in out
    out = _run(capsys, 'data', 'info',
               'synthetic:users=30,items=20,modalities=none')
    assert 'modalities: none' in out

    # a DiffMM folder with a user that has no training interaction
    import pickle
    import scipy.sparse as sp
    folder = tmp_path / 'ds'
    folder.mkdir()

    def dump(name, pairs):
        r, c = zip(*pairs)
        m = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(3, 4))
        (folder / name).write_bytes(pickle.dumps(m, protocol=3))
    dump('trnMat.pkl', [(0, 0), (0, 1), (1, 2)])
    dump('tstMat.pkl', [(1, 0), (2, 1)])
    np.save(folder / 'text_feat.npy', np.ones((4, 3), dtype=np.float16))
    out = _run(capsys, 'data', 'info', folder)
    assert 'users: 3   items: 4' in out
    assert 'train: 3   val: 0   test: 2' in out
    assert 'users without training interactions: 1' in out
    assert 'modalities: text (3-d)' in out


def test_synthetic_spec():
    assert parse_synthetic_spec('synthetic:users=20,items=30,seed=3') == {
        'num_users': 20, 'num_items': 30, 'seed': 3}
    assert parse_synthetic_spec(
        'synthetic:per_user=7.5,latent_dim=4,modalities=a:3+b:5') == {
        'interactions_per_user': 7.5, 'latent_dim': 4,
        'modalities': {'a': 3, 'b': 5}}
    data = get_dataset('synthetic:users=20,items=30,modalities=none')
    assert (num_users(data), num_items(data)) == (20, 30)
    a = get_dataset('synthetic:users=20,items=30,seed=1')
    b = get_dataset('synthetic:users=20,items=30,seed=1')
    assert torch.equal(edge_index_of(a), edge_index_of(b))
    assert dataset_key('synthetic:users=20') == 'synthetic'
    with pytest.raises(ConfigError, match=r"modality 'a:x'"):
        parse_synthetic_spec('synthetic:modalities=a:x')
    with pytest.raises(ConfigError, match=r"num_users must be >= 1"):
        get_dataset('synthetic:users=0')


def test_config_file_flags_and_set_precedence(tmp_path, capsys):
    cfg = tmp_path / 'my.toml'
    cfg.write_text('epochs = 5\nlr = 0.02\nembedding_dim = 6\nreg = 0.5\n')
    run = tmp_path / 'run'
    _run(capsys, 'train', '--model', 'mf', '--dataset', SMALL, '--config',
         cfg, '--epochs', '1', '--set', 'embedding_dim=4', 'ks=[5,20]',
         '--out', run, '--quiet')
    h = json.loads((run / 'config.json').read_text())['hparams']
    # preset < --config < flags (--epochs) and --set
    assert h['epochs'] == 1 and h['lr'] == 0.02 and h['reg'] == 0.5
    assert h['embedding_dim'] == 4 and h['ks'] == [5, 20]
    assert h['patience'] == 10  # the [synthetic] preset of mf
    m = json.loads((run / 'metrics.json').read_text())
    assert 'test/recall@5' in m and 'test/recall@10' not in m
    assert m['epochs_run'] == 1


def test_same_seed_same_metrics_different_seed_differs(tmp_path, capsys):
    runs = {}
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        _run(capsys, 'train', '--model', 'lightgcn', '--dataset', SMALL,
             '--epochs', '3', '--seed', seed, '--batch-size', '256',
             '--set', 'embedding_dim=8', '--out', tmp_path / name, '--quiet')
        runs[name] = json.loads((tmp_path / name / 'metrics.json')
                                .read_text())
    assert _comparable(runs['a']) == _comparable(runs['b'])
    assert _comparable(runs['a']) != _comparable(runs['c'])
    hist = {n: [json.loads(ln)['bpr/loss'] for ln in
                (tmp_path / n / 'history.jsonl').read_text().splitlines()]
            for n in runs}
    assert hist['a'] == hist['b'] and hist['a'] != hist['c']


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    run = tmp_path / 'run'
    _run(capsys, 'train', '--model', 'mf', '--dataset', SMALL, '--epochs',
         '2', '--set', 'embedding_dim=4', '--out', run, '--quiet')
    before = json.loads((run / 'metrics.json').read_text())
    out = _run(capsys, 'train', '--resume', run)
    assert 'resumed from' in out
    after = json.loads((run / 'metrics.json').read_text())
    assert _comparable(after) == _comparable(before)


def test_real_process_reports_one_line_and_exit_2(tmp_path):
    r"""The installed entry point, in a fresh interpreter: one line on
    stderr, status 2, no traceback, nothing written."""
    proc = subprocess.run(
        [sys.executable, '-m', 'mmdiff.cli', 'train', '--dataset',
         'movielens', '--out', str(tmp_path / 'out')],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["error: unknown dataset 'movielens': not one of "
                     "['synthetic', 'tiktok', 'baby', 'sports'] and not an "
                     "existing folder"], proc.stderr
    assert not (tmp_path / 'out').exists()
