r"""A user's registered model through the CLI (``--import MODULE``): train,
evaluate, recommend and --resume re-import the module stored in the run
configuration; ``recommend`` prints scores and, when the data carries id
maps, the original user and item ids."""
import json
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from mmdiff.cli import main
from mmdiff.data import from_dataframe
from mmdiff.data.readers import write_folder
from mmdiff.nn.models import MODELS

MODULE = '''
import torch
from mmdiff.data.hetero import num_items, num_users
from mmdiff.nn.models import Recommender, TrainingPhase, register_model


@register_model
class TinyBias(Recommender):
    """Item biases + user embeddings, trained with BPR."""
    name = 'tinybias'

    def __init__(self, num_users, num_items, dim=4, lr=0.05):
        super().__init__()
        self.lr = lr
        self.user = torch.nn.Parameter(0.1 * torch.randn(num_users, dim))
        self.item = torch.nn.Parameter(0.1 * torch.randn(num_items, dim))
        self.bias = torch.nn.Parameter(torch.zeros(num_items))

    @classmethod
    def from_data(cls, data, **hparams):
        hparams = cls.validated_hparams(hparams)
        return cls(num_users(data), num_items(data), **hparams)

    def _s(self, u, i):
        return (self.user[u] * self.item[i]).sum(-1) + self.bias[i]

    def loss(self, b):
        x = self._s(b.users, b.pos) - self._s(b.users, b.neg)
        return {'loss': torch.nn.functional.softplus(-x).mean()}

    def phases(self):
        return [TrainingPhase('bpr', 'triplets', self.loss,
                              list(self.parameters()), lr=self.lr)]

    def score(self, users):
        return self.user[users] @ self.item.T + self.bias
'''


def _run(capsys, *argv, rc=0):
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == rc, err
    return out if rc == 0 else err


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / 'tinymodels.py').write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    MODELS.pop('tinybias', None)
    for name in [m for m in sys.modules if m.endswith('tinymodels')]:
        sys.modules.pop(name)


def _forget():
    MODELS.pop('tinybias', None)
    for name in [m for m in sys.modules if m.endswith('tinymodels')]:
        sys.modules.pop(name)


def test_train_evaluate_recommend_resume_with_imported_model(user_module,
                                                            capsys):
    run = user_module / 'run'
    err = _run(capsys, 'train', '--model', 'tinybias', '--dataset',
               'synthetic:users=40,items=30', '--epochs', '1', rc=2)
    assert "unknown model 'tinybias'" in err
    out = _run(capsys, 'train', '--import', 'tinymodels', '--model',
               'tinybias', '--dataset', 'synthetic:users=40,items=30',
               '--epochs', '2', '--out', run, '--quiet', '--set', 'dim=3')
    assert 'best epoch' in out
    config = json.loads((run / 'config.json').read_text())
    assert config['imports'] == ['tinymodels']
    assert config['model'] == 'tinybias'
    # a fresh process: the model is not registered until the run's module
    # is imported again, from the stored configuration
    _forget()
    assert 'test' in _run(capsys, 'evaluate', run)
    _forget()
    out = _run(capsys, 'recommend', run, '--users', '0', '3', '-k', '4')
    lines = out.splitlines()
    assert lines[0].startswith('user 0: ')
    assert lines[1].split() == ['rank', 'item', 'score']
    assert len([ln for ln in lines if ln.startswith('user ')]) == 2
    _forget()
    _run(capsys, 'train', '--resume', run, '--epochs', '3', '--quiet')


def test_import_by_path_and_bad_import(user_module, capsys):
    err = _run(capsys, 'train', '--import', 'no_such_module_xyz',
               '--model', 'mf', rc=2)
    assert err.startswith('error: --import no_such_module_xyz: cannot')
    run = user_module / 'run2'
    _run(capsys, 'demo', '--import', user_module / 'tinymodels.py',
         '--models', 'tinybias', '--out', user_module / 'demo')
    _run(capsys, 'train', '--import', user_module / 'tinymodels.py',
         '--model', 'tinybias', '--dataset', 'synthetic:users=40,items=30',
         '--epochs', '1', '--out', run, '--quiet')
    stored = json.loads((run / 'config.json').read_text())['imports']
    assert stored == [str((user_module / 'tinymodels.py').resolve())]
    _forget()
    assert 'test' in _run(capsys, 'evaluate', run)


def test_recommend_shows_original_ids(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [(f'user-{u}', f'sku{i:03d}') for u in range(30)
            for i in rng.choice(40, 6, replace=False)]
    df = pd.DataFrame(rows, columns=['user', 'item'])
    feats = {'image': pd.DataFrame(rng.normal(size=(42, 4)).astype('f4'),
                                   index=[f'sku{i:03d}' for i in range(42)])}
    folder = write_folder(from_dataframe(df, feats), tmp_path / 'mine')
    run = tmp_path / 'run'
    _run(capsys, 'train', '--model', 'lightgcn', '--dataset', folder,
         '--epochs', '1', '--out', run, '--quiet')
    out = _run(capsys, 'recommend', run, '--users', '0', '2', '-k', '3')
    lines = out.splitlines()
    assert lines[0].startswith('user 0 [user-0]: ')
    assert lines[1].split() == ['rank', 'item', 'original', 'id', 'score']
    row = lines[3].split()
    assert row[0] == '1' and row[2] == f'sku{int(row[1]):03d}'
    float(row[3])
    assert any(ln.startswith('user 2 [user-10]: ') for ln in lines)


def test_recommend_ids_of_a_named_dataset(tmp_path, capsys):
    # a named dataset is read from its processed cache, which keeps no id
    # maps: recommend reads them from the folder's MMRec id-map files
    from conftest import write_diffmm_folder
    folder = write_diffmm_folder(tmp_path / 'data' / 'baby')
    (folder / 'u_id_mapping.csv').write_text(
        'user_id\tuserID\n' + ''.join(f'A{u:03d}\t{u}\n' for u in range(20)))
    (folder / 'i_id_mapping.csv').write_text(
        'asin\titemID\n' + ''.join(f'B{i:04d}\t{i}\n' for i in range(15)))
    run = tmp_path / 'run'
    _run(capsys, 'train', '--model', 'mf', '--dataset', 'baby', '--root',
         tmp_path / 'data', '--epochs', '1', '--out', run, '--quiet',
         '--set', 'embedding_dim=4', 'ks=[5]', 'monitor=recall@5')
    out = _run(capsys, 'recommend', run, '--users', '7', '-k', '2')
    lines = out.splitlines()
    assert lines[0].startswith('user 7 [A007]: ')
    item = int(lines[3].split()[1])
    assert lines[3].split()[2] == f'B{item:04d}'
