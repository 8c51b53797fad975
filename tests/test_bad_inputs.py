r"""The bad-input matrix: every way a user can hand ``mmdiff`` a broken input
gets a specific exception type and a message naming the problem, and nothing
is written to the output folder.

Each case is run twice:

* through the Python API (``train_run``, ``Trainer``, the readers...), which
  must raise ``case.exc`` with a message matching ``case.match``;
* where it is reachable from the command line, through
  :func:`mmdiff.cli.main`, which must return ``2`` and print exactly one
  ``error: ...`` line (matching the same pattern) and no traceback.

In both, the output folder (``--out``, or the run folder for ``evaluate`` /
``recommend`` / ``--resume``) must be left exactly as it was.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmdiff.cli import main, train_run
from mmdiff.data.hetero import edge_index_of, make_interaction_data, summary
from mmdiff.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    MissingFileError,
    MMDiffError,
    UnsafeFileError,
)
from mmdiff.metrics import recommend_topk
from mmdiff.nn.models import MF, LightGCN, MODELS, register_model
from mmdiff.train import Trainer
from mmdiff.train.checkpoint import atomic_save, load_checkpoint

U, I, DIM = 30, 25, 8
#: a small, fast training configuration (API side of the CLI flags below)
CFG = {'epochs': 1, 'batch_size': 64, 'patience': 0, 'embedding_dim': 4}


pytestmark = pytest.mark.usefixtures('one_thread')


# Building blocks ############################################################

def _split_edges(seed=0, num_users=U, num_items=I, per_user=6):
    r"""``{split: [(u, i), ...]}``: ``per_user`` distinct items per user,
    the last two held out (one validation, one test)."""
    g = np.random.default_rng(seed)
    out = {'train': [], 'val': [], 'test': []}
    for u in range(num_users):
        items = g.choice(num_items, size=per_user, replace=False)
        out['train'] += [(u, int(i)) for i in items[:-2]]
        out['val'].append((u, int(items[-2])))
        out['test'].append((u, int(items[-1])))
    return out


def _coo(pairs, shape):
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                         shape=shape)


def _dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=3))


def write_dataset(folder: Path, num_items=I, feats=True,
                  splits=None) -> Path:
    r"""A valid DiffMM-layout folder (``[U, num_items]`` matrices and, if
    ``feats``, an ``image`` modality)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = splits or _split_edges(num_items=num_items)
    for split, name in (('train', 'trnMat.pkl'), ('val', 'valMat.pkl'),
                        ('test', 'tstMat.pkl')):
        _dump(folder / name, _coo(splits[split], (U, num_items)))
    if feats:
        g = np.random.default_rng(1)
        np.save(folder / 'image_feat.npy',
                g.standard_normal((num_items, DIM)).astype(np.float32))
    return folder


class _Payload:
    r"""Pickles to ``os.system('touch target')``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f'touch {self.target}',))


class NeedsModality(MF):
    r"""Stand-in for a model that needs item modalities (DiffMM may not be
    registered yet)."""
    name = 'needs_modality_stub'
    requires_modalities = True


@pytest.fixture(autouse=True)
def _stub_model():
    register_model(NeedsModality)
    yield
    MODELS.pop(NeedsModality.name, None)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    r"""One finished MF run on a DiffMM folder (trained once per module)."""
    base = tmp_path_factory.mktemp('trained')
    ds = write_dataset(base / 'ds')
    run = base / 'run'
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train_run('mf', str(ds), cfg=dict(CFG, epochs=2), out=str(run),
                  device='cpu')
    return ds, run


class Env:
    r"""Per-test folders.  ``out`` is the ``--out`` folder (must stay
    absent); ``watch`` lists further folders (run folders read by
    ``evaluate`` / ``recommend`` / ``--resume``) that must stay unchanged.
    A case that prepares a watched folder calls :meth:`rebase` once it is
    ready, so that only what the command itself does is compared."""

    def __init__(self, tmp: Path, trained) -> None:
        self.tmp = tmp
        self.out = tmp / 'out'
        self.watch: List[Path] = [self.out]
        self._trained = trained
        self.sentinel = tmp / 'pwned'
        self.before = self.snapshot()

    def rebase(self) -> None:
        self.before = self.snapshot()

    def dataset(self, name='ds', **kw) -> Path:
        return write_dataset(self.tmp / name, **kw)

    def run(self) -> Path:
        r"""A private copy of the trained run (with its dataset folder
        unchanged), watched for changes."""
        ds, run = self._trained
        dst = self.tmp / 'run'
        if not dst.exists():
            shutil.copytree(run, dst)
            self.watch.append(dst)
            self.rebase()
        return dst

    @property
    def trained_dataset(self) -> Path:
        return self._trained[0]

    def snapshot(self) -> Dict[str, object]:
        snap = {}
        for folder in self.watch:
            if not folder.exists():
                snap[str(folder)] = None
                continue
            snap[str(folder)] = sorted(
                (str(p.relative_to(folder)), p.stat().st_size,
                 p.stat().st_mtime_ns, p.is_dir())
                for p in folder.rglob('*'))
        return snap


@pytest.fixture
def env(tmp_path, trained, monkeypatch):
    # CUDA is never available here, whatever the machine has
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    return Env(tmp_path, trained)


def api_train(env: Env, dataset, model='mf', cfg=None, **kw):
    kw.setdefault('device', 'cpu')
    return train_run(model, str(dataset), cfg=dict(CFG, **(cfg or {})),
                     out=str(env.out), **kw)


def cli_train(env: Env, dataset, *extra, model='mf', sets=()):
    return (['train', '--model', model, '--dataset', str(dataset),
             '--epochs', '1', '--batch-size', '64', '--patience', '0',
             '--device', 'cpu', '--quiet', '--out', str(env.out),
             '--set', 'embedding_dim=4', *sets] + list(extra))


# The cases ##################################################################

@dataclass
class Case:
    id: str
    exc: type
    match: str
    #: builds the inputs, then raises through the Python API
    api: Optional[Callable[[Env], object]] = None
    #: builds the inputs and returns the argv of ``mmdiff``
    cli: Optional[Callable[[Env], List[str]]] = None


def _with_feature(array_fn):
    r"""A dataset folder whose ``image_feat.npy`` is ``array_fn()``."""
    def make(env: Env) -> Path:
        ds = env.dataset(feats=False)
        np.save(ds / 'image_feat.npy', array_fn(), allow_pickle=True)
        return ds
    return make


def _data_case(id, exc, match, make_ds, model='mf'):
    r"""A broken dataset, fed to ``train_run`` and ``mmdiff train``."""
    return Case(id, exc, match,
                api=lambda env: api_train(env, make_ds(env), model=model),
                cli=lambda env: cli_train(env, make_ds(env), model=model))


def _cfg_case(id, exc, match, cfg=None, extra=(), sets=(), model='mf',
              dataset=None, api_kw=None):
    r"""A bad option or config value on a valid dataset."""
    def ds(env):
        return dataset(env) if dataset else env.dataset()
    return Case(id, exc, match,
                api=lambda env: api_train(env, ds(env), model=model, cfg=cfg,
                                          **(api_kw or {})),
                cli=lambda env: cli_train(env, ds(env), *extra, model=model,
                                          sets=sets))


def _feat(shape=(I, DIM), dtype=np.float32, fill=None):
    def make():
        x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
        if fill is not None:
            x.flat[3] = fill
        return x
    return make


def _object_feats():
    x = np.empty((I, DIM), dtype=object)
    x[:] = 0.5
    return x


def _mutated_train(row=None, col=None):
    r"""``trnMat.pkl`` whose first stored entry has its row / column replaced
    (scipy checks ids on construction, not on unpickling)."""
    def make(env: Env) -> Path:
        ds = env.dataset()
        m = _coo(_split_edges()['train'], (U, I))
        if row is not None:
            m.row[0] = row
        if col is not None:
            m.col[0] = col
        _dump(ds / 'trnMat.pkl', m)
        return ds
    return make


def _replace(name, blob_fn):
    def make(env: Env) -> Path:
        ds = env.dataset()
        target = ds / name
        blob = blob_fn(env, target)
        if blob is None:
            target.unlink()
        elif blob == 'dir':
            target.unlink()
            target.mkdir()
        else:
            target.write_bytes(blob)
        return ds
    return make


def _truncate(env, path):
    return path.read_bytes()[:len(path.read_bytes()) // 2]


def _empty_train(env, path):
    return pickle.dumps(_coo([], (U, I)), protocol=3)


def _overlap(env, path):
    s = _split_edges()
    return pickle.dumps(_coo(s['test'] + s['train'][:1], (U, I)), protocol=3)


def _wider_test(env, path):
    return pickle.dumps(_coo(_split_edges()['test'], (U, I + 1)), protocol=3)


def _evil(env, path):
    return pickle.dumps(_Payload(env.sentinel), protocol=3)


def _a_file(env):
    f = env.tmp / 'interactions.csv'
    f.write_text('user,item\n0,1\n')
    return f


def _empty_folder(env):
    (env.tmp / 'empty').mkdir()
    return env.tmp / 'empty'


def _no_feats(env):
    return env.dataset(feats=False)


def _toml(text):
    def make(env):
        f = env.tmp / 'cfg.toml'
        f.write_text(text)
        return f
    return make


# -- checkpoint cases -------------------------------------------------------

def _other_items_dataset(env):
    return env.dataset('ds26', num_items=I + 1)


def _resume_api_other_model(env):
    run = env.run()
    data = _load(env.trained_dataset)
    model = LightGCN.from_data(data, embedding_dim=4)
    Trainer(model, data, epochs=3, out_dir=run, resume=True).fit()


def _resume_api_other_dim(env):
    run = env.run()
    data = _load(env.trained_dataset)
    Trainer(MF.from_data(data, embedding_dim=6), data, epochs=3,
            out_dir=run, resume=True).fit()


def _resume_api_other_items(env):
    run = env.run()
    data = _load(_other_items_dataset(env))
    Trainer(MF.from_data(data, embedding_dim=4), data, epochs=3,
            out_dir=run, resume=True).fit()


def _load(folder):
    from mmdiff.data import load_folder
    return load_folder(folder)


def _ckpt_with(env, name='best_model.pt', **changes) -> Path:
    r"""Rewrites ``name`` of the run copy with some entries replaced."""
    run = env.run()
    path = run / name
    ck = load_checkpoint(path)
    for k, v in changes.items():
        if k == 'config':
            ck['config'] = dict(ck['config'], **v)
        else:
            ck[k] = v
    atomic_save(ck, path)
    env.rebase()
    return run


def _evaluate_other_items(env):
    ds26 = _other_items_dataset(env)
    run = _ckpt_with(env, config={'dataset': str(ds26)})
    return ['evaluate', str(run), '--device', 'cpu']


def _evaluate_other_model_weights(env):
    lgn = LightGCN.from_data(_load(env.trained_dataset), embedding_dim=4)
    run = _ckpt_with(env, model_state=lgn.state_dict())
    return ['evaluate', str(run), '--device', 'cpu']


def _evaluate_other_model_name(env):
    run = _ckpt_with(env, model_name='lightgcn')
    return ['evaluate', str(run), '--device', 'cpu']


def _broken_best_model(env, kind) -> Path:
    r"""The run copy with ``best_model.pt`` truncated, replaced by a crafted
    pickle that would run ``touch sentinel``, or by a foreign file."""
    run = env.run()
    path = run / 'best_model.pt'
    if kind == 'truncated':
        path.write_bytes(path.read_bytes()[:200])
    elif kind == 'evil':
        torch.save({'format': 'mmdiff-checkpoint-v1',
                    'x': _Payload(env.sentinel)}, path)
    elif kind == 'foreign':
        torch.save({'weights': torch.zeros(3)}, path)
    env.rebase()
    return path


def _broken_ckpt_case(id, match, kind):
    return Case(id, CheckpointError, match,
                api=lambda env: load_checkpoint(_broken_best_model(env, kind)),
                cli=lambda env: ['evaluate',
                                 str(_broken_best_model(env, kind).parent),
                                 '--device', 'cpu'])


def _ckpt_dir(env) -> Path:
    run = env.tmp / 'weird'
    (run / 'checkpoint.pt').mkdir(parents=True)
    env.watch.append(run)
    env.rebase()
    return run


def _recommend(*args):
    def make(env):
        return ['recommend', str(env.run()), '--device', 'cpu', *args]
    return make


def _recommend_api(k=5, users=(0,)):
    def run(env):
        return recommend_topk(lambda u: torch.zeros(u.numel(), I),
                              torch.tensor(users), k, I)
    return run


CASES = [
    # -- item features -------------------------------------------------------
    _data_case('feature-rows-ne-items', DataError,
               r"image_feat\.npy: modality 'image': 28 feature rows but 25 "
               r"items", _with_feature(_feat((I + 3, DIM)))),
    _data_case('features-nan', DataError,
               r"modality 'image': 1 item rows contain NaN or Inf",
               _with_feature(_feat(fill=np.nan))),
    _data_case('features-inf', DataError,
               r"modality 'image': 1 item rows contain NaN or Inf",
               _with_feature(_feat(fill=np.inf))),
    _data_case('features-1d', DataError,
               r"modality 'image': features must be 2-D .*got 1-D",
               _with_feature(_feat((I,)))),
    _data_case('features-3d', DataError,
               r"modality 'image': features must be 2-D .*got 3-D",
               _with_feature(_feat((I, 2, 4)))),
    _data_case('features-int-dtype', DataError,
               r"modality 'image': features must be floating point, got "
               r"dtype int64", _with_feature(_feat(dtype=np.int64))),
    _data_case('features-object-dtype-npy', UnsafeFileError,
               r"image_feat\.npy: refusing an object-dtype array",
               _with_feature(_object_feats)),
    Case('features-object-dtype-array', DataError,
         r"modality 'image': object arrays are not features",
         api=lambda env: make_interaction_data(
             U, I, np.array([[0], [0]]), modalities={'image':
                                                     _object_feats()})),
    _data_case('features-dir-not-file', DataError,
               r"image_feat\.npy: expected a file but found a directory",
               _replace('image_feat.npy', lambda env, p: 'dir')),
    _data_case('features-truncated-npy', DataError,
               r"image_feat\.npy: .*truncated",
               _replace('image_feat.npy', _truncate)),
    # -- interactions ---------------------------------------------------------
    _data_case('negative-user-id', DataError,
               r"train interactions: negative user id -1",
               _mutated_train(row=-1)),
    _data_case('negative-item-id', DataError,
               r"train interactions: negative item id -3",
               _mutated_train(col=-3)),
    _data_case('item-id-out-of-range', DataError,
               r"train interactions: item id 99 is out of range for 25 items",
               _mutated_train(col=99)),
    _data_case('user-id-out-of-range', DataError,
               r"train interactions: user id 30 is out of range for 30 users",
               _mutated_train(row=U)),
    _data_case('empty-training-split', DataError,
               r"the training split is empty",
               _replace('trnMat.pkl', _empty_train)),
    _data_case('train-test-overlap', DataError,
               r"1 \(user, item\) pairs appear in both the train and the "
               r"test split", _replace('tstMat.pkl', _overlap)),
    _data_case('split-shapes-disagree', DataError,
               r"split shapes disagree: .*trnMat\.pkl is 30x25 but "
               r".*tstMat\.pkl is 30x26", _replace('tstMat.pkl', _wider_test)),
    _data_case('truncated-pkl', DataError,
               r"trnMat\.pkl: not a readable pickle \(truncated or corrupt\)",
               _replace('trnMat.pkl', _truncate)),
    _data_case('crafted-pickle', UnsafeFileError,
               r"trnMat\.pkl: refusing to load '(posix|nt|os)\.system'",
               _replace('trnMat.pkl', _evil)),
    _data_case('missing-test-file', MissingFileError,
               r"missing tstMat\.pkl",
               _replace('tstMat.pkl', lambda env, p: None)),
    _data_case('pkl-dir-not-file', DataError,
               r"trnMat\.pkl: expected a file but found a directory",
               _replace('trnMat.pkl', lambda env, p: 'dir')),
    _data_case('dataset-is-a-file', DataError,
               r"interactions\.csv: expected a folder", _a_file),
    _data_case('dataset-folder-empty', MissingFileError,
               r"no dataset found; expected either the DiffMM layout",
               _empty_folder),
    _data_case('dataset-missing', ConfigError,
               r"unknown dataset '.*nope': .*not an existing folder",
               lambda env: env.tmp / 'nope'),
    Case('bad-edge-shape', DataError,
         r"train interactions: expected shape \[2, E\]",
         api=lambda env: make_interaction_data(U, I, np.zeros((3, 4)))),
    Case('non-integer-ids', DataError,
         r"train interactions: ids must be integers",
         api=lambda env: make_interaction_data(U, I,
                                               np.array([[0.5], [1.0]]))),
    # -- configuration --------------------------------------------------------
    _cfg_case('unknown-modality', DataError,
              r"unknown modality 'sound'; available modalities: \['image'\]",
              extra=('--modalities', 'sound'),
              api_kw={'modalities': ['sound']}),
    _data_case('zero-modalities', ConfigError,
               r"model 'needs_modality_stub' needs at least one item "
               r"modality, but dataset '.*ds' has none", _no_feats,
               model=NeedsModality.name),
    _cfg_case('k-larger-than-items', ConfigError,
              r"K=500 is larger than the number of items \(25\)",
              cfg={'ks': [10, 500]}, sets=('ks=[10,500]',)),
    _cfg_case('k-non-integer', ConfigError, r"K must be an integer, got 2\.5",
              cfg={'ks': [2.5]}, sets=('ks=[2.5]',)),
    _cfg_case('k-a-word', ConfigError, r"K must be an integer, got 'ten'",
              cfg={'ks': 'ten'}, sets=('ks=ten',)),
    _cfg_case('k-zero', ConfigError, r"K must be >= 1, got 0",
              cfg={'ks': 0}, sets=('ks=0',)),
    _cfg_case('batch-size-zero', ConfigError,
              r"batch_size must be >= 1, got 0", cfg={'batch_size': 0},
              extra=('--batch-size', '0')),
    _cfg_case('negative-epochs', ConfigError, r"epochs must be >= 0, got -1",
              cfg={'epochs': -1}, extra=('--epochs', '-1')),
    _cfg_case('non-integer-epochs', ConfigError,
              r"epochs must be an integer, got 1\.5", cfg={'epochs': 1.5},
              sets=('epochs=1.5',)),
    _cfg_case('negative-patience', ConfigError,
              r"patience must be >= 0, got -2", cfg={'patience': -2},
              extra=('--patience', '-2')),
    _cfg_case('unknown-monitor', ConfigError,
              r"monitor 'auc@20' is not one of the computed metrics",
              cfg={'monitor': 'auc@20'}, sets=('monitor=auc@20',)),
    _cfg_case('unknown-hyper-parameter', ConfigError,
              r"MF: unknown hyper-parameter\(s\) embeding_dim",
              cfg={'embeding_dim': 4}, sets=('embeding_dim=4',)),
    Case('malformed-override', ConfigError,
         r"override 'lr' must look like key=value",
         api=lambda env: __import__('mmdiff.train.config', fromlist=['x'])
         .parse_overrides(['lr']),
         cli=lambda env: cli_train(env, env.dataset(), sets=('lr',))),
    Case('config-file-missing', MissingFileError,
         r"config file not found: .*nope\.toml",
         api=lambda env: __import__('mmdiff.train.config', fromlist=['x'])
         .user_config(env.tmp / 'nope.toml'),
         cli=lambda env: cli_train(env, env.dataset(), '--config',
                                   str(env.tmp / 'nope.toml'))),
    Case('config-is-a-directory', ConfigError,
         r"config path .* is a directory, expected a TOML file",
         api=lambda env: __import__('mmdiff.train.config', fromlist=['x'])
         .user_config(env.tmp),
         cli=lambda env: cli_train(env, env.dataset(), '--config',
                                   str(env.tmp))),
    Case('config-invalid-toml', ConfigError,
         r"config file .*cfg\.toml is not valid TOML",
         api=lambda env: __import__('mmdiff.train.config', fromlist=['x'])
         .user_config(_toml('epochs = = 3')(env)),
         cli=lambda env: cli_train(env, env.dataset(), '--config',
                                   str(_toml('epochs = = 3')(env)))),
    Case('config-file-bad-value', ConfigError,
         r"batch_size must be >= 1, got -5",
         api=lambda env: api_train(env, env.dataset(),
                                   cfg={'batch_size': -5}),
         cli=lambda env: ['train', '--model', 'mf', '--dataset',
                          str(env.dataset()), '--config',
                          str(_toml('batch_size = -5\n')(env)), '--out',
                          str(env.out), '--device', 'cpu']),
    _cfg_case('unknown-model', ConfigError,
              r"unknown model 'transformer4rec'; available: .*lightgcn",
              model='transformer4rec'),
    Case('unknown-dataset', ConfigError,
         r"unknown dataset 'movielens': not one of \['synthetic', 'tiktok'",
         api=lambda env: api_train(env, 'movielens'),
         cli=lambda env: cli_train(env, 'movielens')),
    Case('named-dataset-without-root', ConfigError,
         r"dataset 'tiktok' needs root=",
         api=lambda env: api_train(env, 'tiktok'),
         cli=lambda env: cli_train(env, 'tiktok')),
    Case('bad-synthetic-spec', ConfigError,
         r"dataset 'synthetic:users=many': users must be an integer",
         api=lambda env: api_train(env, 'synthetic:users=many'),
         cli=lambda env: cli_train(env, 'synthetic:users=many')),
    Case('unknown-synthetic-key', ConfigError,
         r"dataset 'synthetic:people=5': bad item 'people=5'",
         api=lambda env: api_train(env, 'synthetic:people=5'),
         cli=lambda env: cli_train(env, 'synthetic:people=5')),
    _cfg_case('negative-noise', DataError,
              r"noise ratio must be >= 0, got -0\.5",
              extra=('--noise', '-0.5'), api_kw={'noise': -0.5}),
    _cfg_case('seed-too-large', ConfigError, r"seed \d+ is out of range",
              extra=('--seed', str(3 ** 50)), api_kw={'seed': 3 ** 50}),
    # -- device ---------------------------------------------------------------
    _cfg_case('cuda-unavailable', DeviceError,
              r"device 'cuda' requested but CUDA is not available.*"
              r"--cpu-fallback", extra=('--device', 'cuda'),
              api_kw={'device': 'cuda'}),
    _cfg_case('unknown-device', ConfigError, r"invalid device 'tpu0'",
              extra=('--device', 'tpu0'), api_kw={'device': 'tpu0'}),
    # -- checkpoints ----------------------------------------------------------
    Case('resume-other-model', CheckpointError,
         r"model 'mf', not 'lightgcn'",
         api=_resume_api_other_model,
         cli=lambda env: ['train', '--resume', str(env.run()), '--model',
                          'lightgcn', '--device', 'cpu']),
    Case('resume-other-item-count', CheckpointError,
         r"30 users x 25 items, this data has 30 x 26",
         api=_resume_api_other_items,
         cli=lambda env: ['train', '--resume', str(env.run()), '--dataset',
                          str(_other_items_dataset(env)), '--device', 'cpu']),
    Case('resume-other-hyper-parameters', CheckpointError,
         r"checkpoint does not fit this 'mf' model \(other hyper-parameters\?"
         r"\): size mismatch for user_emb\.weight",
         api=_resume_api_other_dim),
    Case('evaluate-other-item-count', CheckpointError,
         r"checkpoint expects 30 users x 25 items, the dataset has 30 x 26",
         cli=_evaluate_other_items),
    Case('evaluate-other-model-weights', CheckpointError,
         r"best_model\.pt: checkpoint does not fit model 'mf': Missing "
         r"key\(s\) in state_dict: \"user_emb\.weight\"",
         cli=_evaluate_other_model_weights),
    Case('evaluate-other-model-name', CheckpointError,
         r"the weights belong to model 'lightgcn' but the run configuration "
         r"names 'mf'", cli=_evaluate_other_model_name),
    _broken_ckpt_case('checkpoint-truncated',
                      r"best_model\.pt: not a readable checkpoint "
                      r"\(truncated or corrupt\)", 'truncated'),
    _broken_ckpt_case('checkpoint-crafted-pickle',
                      r"best_model\.pt: refused to load \(not a plain-tensor "
                      r"checkpoint.*GLOBAL (posix|nt)\.system", 'evil'),
    _broken_ckpt_case('checkpoint-foreign',
                      r"best_model\.pt: not an mmdiff checkpoint", 'foreign'),
    Case('checkpoint-missing', MissingFileError,
         r"checkpoint not found: .*nothing",
         api=lambda env: load_checkpoint(env.tmp / 'nothing'),
         cli=lambda env: ['evaluate', str(env.tmp / 'nothing')]),
    Case('resume-without-checkpoint', MissingFileError,
         r"checkpoint not found: .*empty.checkpoint\.pt",
         api=lambda env: load_checkpoint(_empty_folder(env)),
         cli=lambda env: ['train', '--resume', str(_empty_folder(env))]),
    Case('checkpoint-is-a-directory', CheckpointError,
         r"checkpoint\.pt is a directory, expected a file",
         api=lambda env: load_checkpoint(_ckpt_dir(env) / 'checkpoint.pt'),
         cli=lambda env: ['train', '--resume', str(_ckpt_dir(env)),
                          '--device', 'cpu']),
    # -- recommend ------------------------------------------------------------
    Case('recommend-user-out-of-range', DataError,
         r"user id 999 is out of range for 30 users",
         cli=_recommend('--users', '0', '999')),
    Case('recommend-negative-user', DataError,
         r"user id -1 is out of range for 30 users",
         cli=_recommend('--users', '-1')),
    Case('recommend-k-too-large', ConfigError,
         r"K=26 is larger than the number of items \(25\)",
         api=_recommend_api(k=26), cli=_recommend('--users', '0', '-k', '26')),
    Case('recommend-k-zero', ConfigError, r"K must be >= 1, got 0",
         api=_recommend_api(k=0), cli=_recommend('--users', '0', '-k', '0')),
]

API_CASES = [c for c in CASES if c.api is not None]
CLI_CASES = [c for c in CASES if c.cli is not None]


def test_matrix_is_large_enough():
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(CASES) >= 25 and len(CLI_CASES) >= 25


@pytest.mark.parametrize('case', API_CASES, ids=lambda c: c.id)
def test_api_raises(case, env):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        with pytest.raises(case.exc, match=case.match) as info:
            case.api(env)
    assert isinstance(info.value, MMDiffError)
    assert not env.sentinel.exists(), 'a crafted payload was executed'
    assert env.snapshot() == env.before, 'the output folder was written to'
    assert not env.out.exists()


@pytest.mark.parametrize('case', CLI_CASES, ids=lambda c: c.id)
def test_cli_one_line_exit_2(case, env, capsys):
    argv = case.cli(env)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert 'Traceback' not in err
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert re.search(case.match, lines[0]), (case.match, lines[0])
    assert not env.sentinel.exists(), 'a crafted payload was executed'
    assert env.snapshot() == env.before, 'the output folder was written to'
    assert not env.out.exists()


# Usage errors: argparse's own checks also give one line and status 2 ########

@pytest.mark.parametrize('argv,match', [
    (['train', '--epochs', 'many'],
     r"argument --epochs: expected an integer, got 'many'"),
    (['train', '--batch-size', '1.5'],
     r"argument --batch-size: expected an integer, got '1\.5'"),
    (['train', '--frobnicate'], r"unrecognized arguments: --frobnicate"),
    (['recommend', 'run', '--users', '0', '-k', '2.5'],
     r"argument -k: expected an integer, got '2\.5'"),
    (['recommend', 'run'], r"the following arguments are required: --users"),
    (['explode'], r"invalid choice: 'explode'"),
    (['evaluate', 'run', '--split', 'train'],
     r"argument --split: invalid choice: 'train'"),
])
def test_cli_usage_errors(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith('error: mmdiff'), err
    assert re.search(match, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []


# Inputs that are handled, not refused ########################################

def test_users_without_training_interactions_are_kept_and_evaluated(env):
    s = _split_edges()
    # user 0 has only held-out items, user 1 has nothing at all
    s['train'] = [p for p in s['train'] if p[0] not in (0, 1)]
    s['val'] = [p for p in s['val'] if p[0] != 1]
    s['test'] = [p for p in s['test'] if p[0] != 1]
    ds = env.dataset(splits=s)
    result, _, data = api_train(env, ds)
    info = summary(data)
    assert info['users'] == U and info['users_without_train'] == 2
    # evaluated over every user with a held-out item: user 0 counts, 1 not
    assert result.test_metrics['num_users'] == U - 1
    assert np.isfinite(result.test_metrics['recall@20'])


def test_duplicate_interactions_are_removed_with_a_warning(env):
    s = _split_edges()
    s['train'] = s['train'] + s['train'][:3]  # three repeated pairs
    ds = env.dataset(splits=s)
    with pytest.warns(UserWarning, match=r"removed 3 duplicate"):
        result, _, data = api_train(env, ds)
    assert edge_index_of(data).size(1) == len(s['train']) - 3
    assert (env.out / 'metrics.json').exists()


def test_cuda_falls_back_to_cpu_only_when_asked(env, capsys):
    ds = env.dataset()
    with pytest.raises(DeviceError):
        api_train(env, ds, device='cuda')
    assert not env.out.exists()
    result, model, _ = api_train(env, ds, device='cuda', cpu_fallback=True)
    assert model.device.type == 'cpu'
    assert main(['evaluate', str(env.out), '--device', 'cuda',
                 '--cpu-fallback']) == 0
    assert 'recall@20' in capsys.readouterr().out


def test_payloads_are_live_under_unsafe_loaders(env):
    r"""The crafted files of the matrix really would run code if they were
    loaded without the restrictions (so 'refused' above means 'prevented')."""
    ds = _replace('trnMat.pkl', _evil)(env)
    pickle.loads((ds / 'trnMat.pkl').read_bytes())
    assert env.sentinel.exists()
    env.sentinel.unlink()
    path = _broken_best_model(env, 'evil')
    torch.load(path, weights_only=False)
    assert env.sentinel.exists()
