r"""RecBole beside mmdiff: LightGCN and DiffRec on the same split, machine
and threads, in one run.

Converts a dataset split read with mmdiff's own loaders to RecBole atomic
files with a fixed pre-split (``benchmark_filename``: train / valid / test
are exactly ours), then trains RecBole 1.2.1 and mmdiff side by side, each
in its own process (so that its peak resident memory is its own), one epoch
at a time in alternation (the order flips every round, so that a drift in
the machine's speed hits both), with the same threads, the same maximum
number of epochs, the same early-stopping rule (patience on validation
Recall\@20, the first best epoch wins) and full-ranking evaluation at
K = 20.  Writes ``benchmarks/results/peers.md`` and
``benchmarks/results/peers_runs/peers.json`` with the date, the machine, the
commands, the parameter mapping and the compatibility shims.

One command, from a fresh clone (``data/`` holds ``baby/`` with
``trnMat.pkl``, ``valMat.pkl`` and ``tstMat.pkl``); this is the budget of
the committed results (about 45 minutes on 2 cores)::

    scripts/setup.sh && .venv/bin/python benchmarks/peers.py --root data \
        --datasets baby --max-epochs lightgcn=50 diffrec=14 --patience 20

Without ``--max-epochs`` the presets' caps apply (1,000 epochs, patience
20): runs to convergence, many hours on 2 cores.

RecBole is never a dependency of mmdiff: the script creates (or reuses) a
separate virtual environment for it (``--recbole-venv``, default
``~/.cache/mmdiff-peers/recbole-venv``) with ``pip install torch==2.13.0``
first (the CPU build, as ``scripts/setup.sh`` installs it) and then
``pip install recbole==1.2.1``.  The RecBole process applies these runtime
shims for today's numpy / scipy / torch and nothing else (:data:`SHIMS`):
numpy 2's removed ``float_`` / ``complex_`` / ``unicode_`` aliases, which
RecBole's own ``np.float`` / ``np.int`` compatibility code reads;
``scipy.sparse.dok_matrix._update`` (removed from scipy; RecBole's LightGCN
builds its adjacency with it); ``torch.sparse.FloatTensor`` (removed from
torch).  One evaluation setting is aligned rather than shimmed: RecBole
masks training *and* validation items when it ranks for the test split,
mmdiff masks training items only; the benchmark gives RecBole's test loader
the training items as history, and also reports RecBole's own protocol.

``--quick`` (2 epochs, on ``--datasets synthetic`` in a few seconds) checks
the set-up; ``--max-epochs`` / ``--patience`` set the budget of both.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
RESULTS = HERE / 'results'
RUNS = RESULTS / 'peers_runs'

RECBOLE_VERSION = '1.2.1'
TORCH_VERSION = '2.13.0'
DEFAULT_VENV = Path(os.environ.get('XDG_CACHE_HOME') or
                    Path('~').expanduser() / '.cache') / 'mmdiff-peers' / \
    'recbole-venv'

MODELS = ('lightgcn', 'diffrec')
RECBOLE_MODEL = {'lightgcn': 'LightGCN', 'diffrec': 'DiffRec'}
CONTENDERS = ('recbole', 'mmdiff')
#: The cut-offs evaluated; selection and the headline use K = 20.
KS = (10, 20)
K = 20
#: RecBole's names of the benchmark files: <dataset>.<suffix>.inter
SPLIT_SUFFIX = {'train': 'train', 'val': 'valid', 'test': 'test'}
HEADER = 'user_id:token\titem_id:token'

#: (what, why) of every runtime shim the RecBole process applies.
SHIMS = [
    ('`numpy.float_`, `numpy.complex_`, `numpy.unicode_` set to '
     '`float64`, `complex128`, `str_`',
     'removed in numpy 2; RecBole\'s `Config.compatibility_settings` reads '
     'them to define `np.float`, `np.int`, ... (its NDCG uses `np.float`)'),
    ('`scipy.sparse.dok_matrix._update(d)` = `self._dict.update(d)`',
     'removed from scipy; RecBole\'s LightGCN fills its adjacency with it'),
    ('`torch.sparse.FloatTensor(i, v, shape)` = '
     '`torch.sparse_coo_tensor(i, v, shape)`',
     'removed from torch; RecBole\'s LightGCN builds its normalised '
     'adjacency with it'),
]
#: Settings that are not shims but are recorded beside them.
NOTES = [
    'Test ranking masks the training items only, as mmdiff does: RecBole '
    'masks training and validation items when it ranks for the test split, '
    'so its test loader is given the training items as history (its own '
    'protocol is reported too, as "RecBole protocol").  Validation ranking '
    'masks the training items in both libraries already.',
    'RecBole rounds metrics to `metric_decimal_place` (default 4 places), '
    'which makes ties in the selection; it is set to 10.',
    '`eval_batch_size` = 1,024 x (items + 1): RecBole scores as many whole '
    'users per batch as fit, so both libraries score 1,024 users at a time '
    '(its default, 4,096, would score one user per batch here).',
    'pandas 3 warns that RecBole\'s in-place NaN filling of a column is a '
    'no-op under copy-on-write; the atomic files have no missing values, '
    'and the split RecBole loads is checked against ours (below).',
    'Left as each library has it: the initialisation (LightGCN: RecBole '
    'draws the user and the item table separately from Xavier-uniform, '
    'mmdiff / PyG one table of users + items; DiffRec: RecBole zeroes the '
    'denoiser biases, mmdiff draws them from N(0, 0.001) as the official '
    'code does), RecBole\'s padding user (an empty row in DiffRec\'s '
    'training batches) and padding item (never ranked), and the random '
    'streams (same seed, different draws).',
    'Set-up time: RecBole builds its dataset from the atomic files; mmdiff '
    'reads the processed copy of the split that the benchmark\'s own '
    'loading wrote to the scratch folder (what a second `mmdiff train` on '
    'the same data does).',
    'RecBole\'s best weights are kept in memory and restored for the test '
    'evaluation, as mmdiff keeps its own (RecBole\'s `fit` would write them '
    'to disk; the copy\'s size is given per model below and is part of '
    'RecBole\'s peak); its checkpoint loading (`torch.load`, whose '
    '`weights_only` default changed) is never called, so it needs no '
    'shim.',
]

#: mmdiff preset key -> RecBole parameter, per model (same meaning, same
#: value).
MAPPING: Dict[str, Dict[str, str]] = {
    'lightgcn': {'batch_size': 'train_batch_size',
                 'embedding_dim': 'embedding_size',
                 'num_layers': 'n_layers', 'reg': 'reg_weight',
                 'lr': 'learning_rate'},
    'diffrec': {'batch_size': 'train_batch_size', 'lr': 'learning_rate',
                'weight_decay': 'weight_decay', 'hidden_dims': 'dims_dnn',
                'time_dim': 'embedding_size', 'steps': 'steps',
                'noise_scale': 'noise_scale', 'noise_min': 'noise_min',
                'noise_max': 'noise_max', 'sampling_steps': 'sampling_steps',
                'norm': 'norm'},
}
#: RecBole parameters fixed so that its model computes what mmdiff's does:
#: parameter -> (value, reason).
FIXED: Dict[str, Dict[str, Tuple[Any, str]]] = {
    'lightgcn': {
        'require_pow': (True, 'L2 term = reg x sum of squared layer-0 '
                              'embeddings / (2 x batch), as mmdiff'),
        'train_neg_sample_args': ({'distribution': 'uniform',
                                   'sample_num': 1},
                                  'one uniform negative per training '
                                  'interaction, never a training positive'),
        'learner': ('adam', 'Adam, as mmdiff'),
        'weight_decay': (0.0, 'no optimiser weight decay, as mmdiff'),
    },
    'diffrec': {
        'noise_schedule': ('linear-var', 'mmdiff: 1 - alpha_bar_t = scale x '
                                         'linspace(min, max, T)'),
        'beta_fixed': (True, 'beta_0 = 1e-5, as mmdiff\'s beta_fixed'),
        'mean_type': ('x0', 'x_0 prediction'),
        'reweight': (True, 'SNR(t-1) - SNR(t) loss weights'),
        'sampling_noise': (False, 'deterministic reverse process'),
        'history_num_per_term': (10, 'importance sampling history, as '
                                     'mmdiff'),
        'mlp_act_func': ('tanh', 'tanh denoiser MLP, as mmdiff'),
        'time-aware': (False, 'plain DiffRec'),
        'train_neg_sample_args': (None, 'user rows, no negatives'),
        'learner': ('adam', 'Adam, as mmdiff'),
    },
}
#: mmdiff settings RecBole has no parameter for: preset key -> the value
#: RecBole's model hard-codes (a preset with another value is refused).
REQUIRED: Dict[str, Dict[str, Any]] = {
    'lightgcn': {},
    'diffrec': {'dropout': 0.5, 'importance_sampling': True,
                'precision': 'float32', 'beta_fixed': 1e-5},
}


# ---------------------------------------------------------------- helpers
def peak_rss_mb() -> float:
    r"""This process's peak resident memory in MB: ``VmHWM`` of
    ``/proc/self/status`` (the peak of this program's own memory), else
    ``ru_maxrss``, which on Linux also keeps the launching process's
    resident size at the fork (:func:`ru_maxrss_mb`)."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return ru_maxrss_mb()


def rss_mb() -> Optional[float]:
    r"""This process's resident memory now (``VmRSS``) in MB."""
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def ru_maxrss_mb() -> float:
    r"""``getrusage(RUSAGE_SELF).ru_maxrss`` in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_ms(n: int = 2048, reps: int = 5) -> float:
    r"""Median milliseconds of one ``n x n`` float32 matrix product."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def machine_text(threads: int) -> str:
    cpu = platform.processor() or ''
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    mem = ''
    try:
        kb = int(Path('/proc/meminfo').read_text().split()[1])
        mem = f', {kb / 2 ** 20:.0f} GiB memory'
    except (OSError, ValueError, IndexError):
        pass
    return (f'{platform.machine()} {cpu}, {os.cpu_count()} cores{mem}, '
            f'Python {platform.python_version()}, {threads} threads per '
            f'process')


# ----------------------------------------------------------- atomic files
def write_atomic(splits: Dict[str, Sequence[Sequence[int]]], folder: Path,
                 name: str) -> Dict[str, Path]:
    r"""Writes ``{'train'|'val'|'test': [users, items]}`` as RecBole atomic
    files ``folder/name/name.{train,valid,test}.inter`` (tokens are our
    integer ids, rows in the given order) and returns their paths."""
    out = Path(folder) / name
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, suffix in SPLIT_SUFFIX.items():
        users, items = splits[split]
        users, items = list(users), list(items)
        if len(users) != len(items):
            raise ValueError(f'{split}: {len(users)} users but {len(items)} '
                             'items')
        p = out / f'{name}.{suffix}.inter'
        body = ''.join(f'{int(u)}\t{int(i)}\n' for u, i in zip(users, items))
        p.write_text(HEADER + '\n' + body)
        paths[split] = p
    return paths


def read_atomic(path: Path) -> Tuple[List[int], List[int]]:
    r"""The (users, items) columns of an atomic ``.inter`` file written by
    :func:`write_atomic`."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0] != HEADER:
        raise ValueError(f'{path}: unexpected header {lines[:1]}')
    users, items = [], []
    for line in lines[1:]:
        if line:
            u, i = line.split('\t')
            users.append(int(u))
            items.append(int(i))
    return users, items


def data_splits(data) -> Dict[str, Tuple[List[int], List[int]]]:
    r"""``{'train'|'val'|'test': (users, items)}`` of an mmdiff
    :class:`HeteroData`."""
    from mmdiff.data.hetero import edge_index_of
    out = {}
    for split in SPLIT_SUFFIX:
        e = edge_index_of(data, split)
        out[split] = (e[0].tolist(), e[1].tolist())
    return out


# ------------------------------------------------------ parameter mapping
def recbole_params(model: str, cfg: Dict[str, Any], *, max_epochs: int,
                   patience: int, seed: int, num_items: int,
                   eval_chunk: int = 1024
                   ) -> Tuple[Dict[str, Any], List[Tuple[str, str, str]]]:
    r"""RecBole's ``config_dict`` for ``model`` from mmdiff's preset ``cfg``
    and the mapping rows ``(mmdiff setting, RecBole parameter, value)``.

    Raises :class:`ValueError` if the preset sets something RecBole's model
    cannot do (:data:`REQUIRED`)."""
    if model not in MAPPING:
        raise ValueError(f'no RecBole mapping for {model!r}')
    for key, value in REQUIRED[model].items():
        if key in cfg and cfg[key] != value:
            raise ValueError(f'{model}: RecBole fixes {key} = {value!r}, the '
                             f'mmdiff preset has {cfg[key]!r}')
    params: Dict[str, Any] = {}
    rows: List[Tuple[str, str, str]] = []
    for ours, theirs in MAPPING[model].items():
        if ours not in cfg:
            continue
        value = cfg[ours]
        if isinstance(value, tuple):
            value = list(value)
        params[theirs] = value
        rows.append((f'{ours} = {value!r}', theirs, repr(value)))
    for key, value in REQUIRED[model].items():
        rows.append((f'{key} = {cfg.get(key, value)!r}', '(fixed in RecBole)',
                     repr(value)))
    for theirs, (value, why) in FIXED[model].items():
        params[theirs] = value
        rows.append((why, theirs, repr(value)))
    params.update({
        'epochs': max_epochs, 'stopping_step': patience, 'eval_step': 1,
        'seed': seed, 'reproducibility': True,
        'metrics': ['Recall', 'NDCG'], 'topk': list(KS),
        'valid_metric': f'recall@{K}', 'valid_metric_bigger': True,
        'metric_decimal_place': 10,
        'eval_args': {'group_by': 'user', 'order': 'RO', 'mode': 'full'},
        'eval_batch_size': eval_chunk * (num_items + 1),
        'benchmark_filename': [SPLIT_SUFFIX[s] for s in SPLIT_SUFFIX],
        'load_col': {'inter': ['user_id', 'item_id']},
        'use_gpu': False, 'show_progress': False, 'worker': 0,
        'state': 'WARNING', 'log_wandb': False, 'shuffle': True,
    })
    rows += [
        (f'epochs (cap) = {max_epochs}', 'epochs', repr(max_epochs)),
        (f'patience = {patience}', 'stopping_step', repr(patience)),
        ('validate every epoch', 'eval_step', '1'),
        (f'monitor = recall@{K}', 'valid_metric', repr(f'recall@{K}')),
        (f'eval_chunk = {eval_chunk} users', 'eval_batch_size',
         f'{eval_chunk} x (items + 1) = {eval_chunk * (num_items + 1)}'),
    ]
    return params, rows


def metrics_of_topk(topk: Dict[int, List[int]],
                    target: Tuple[Sequence[int], Sequence[int]],
                    ks: Sequence[int] = KS) -> Dict[str, float]:
    r"""Recall/NDCG/... at ``ks`` of ranked lists ``{user: [items]}``
    against held-out ``(users, items)``, computed by
    :func:`mmdiff.metrics.metrics_from_hits` (mmdiff's definitions) and
    averaged over the users with a held-out item."""
    import torch
    from mmdiff.metrics import metrics_from_hits
    topk = {int(u): v for u, v in topk.items()}  # JSON keys are text
    held: Dict[int, set] = {}
    for u, i in zip(*target):
        held.setdefault(int(u), set()).add(int(i))
    users = sorted(held)
    missing = [u for u in users if u not in topk]
    if missing:
        raise ValueError(f'{len(missing)} users with held-out items have no '
                         f'ranked list (first: {missing[0]})')
    width = max(ks)
    hits = torch.tensor([[i in held[u] for i in topk[u][:width]]
                         for u in users], dtype=torch.bool)
    n = torch.tensor([len(held[u]) for u in users])
    per_user = metrics_from_hits(hits, n, ks)
    return {k: float(v.sum()) / len(users) for k, v in per_user.items()}


# ------------------------------------------------------------ stop rule
class Selection:
    r"""mmdiff's selection and early stopping (``Trainer.fit``): an epoch
    is the new best when its validation Recall\@20 is strictly larger than
    the best so far (the first best wins); stop after ``patience``
    consecutive epochs without one (``0``: never), or after ``max_epochs``.
    Applied to both libraries by the benchmark's loop."""

    def __init__(self, max_epochs: int, patience: int):
        self.max_epochs, self.patience = max_epochs, patience
        self.best_score = float('-inf')
        self.best_epoch = -1
        self.bad = 0
        self.epochs = 0
        self.reason = ''

    def update(self, score: float) -> bool:
        r"""Records one epoch's score; returns whether to stop."""
        epoch = self.epochs
        self.epochs += 1
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad = score, epoch, 0
        else:
            self.bad += 1
        if self.patience and self.bad >= self.patience:
            self.reason = 'patience'
        elif self.epochs >= self.max_epochs:
            self.reason = 'cap'
        return bool(self.reason)


# ------------------------------------------------------------- workers
class _Protocol:
    r"""JSON lines to the parent on the process's original stdout; anything
    else printed goes to stderr."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), 'w', buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, obj: Dict[str, Any]) -> None:
        self.out.write(json.dumps(obj) + '\n')
        self.out.flush()

    @staticmethod
    def recv() -> str:
        line = sys.stdin.readline()
        return line.strip() or 'quit'


def apply_recbole_shims() -> None:
    r"""The runtime shims of :data:`SHIMS` (RecBole process only)."""
    import numpy as np
    import scipy.sparse as sp
    import torch
    for old, new in (('float_', np.float64), ('complex_', np.complex128),
                     ('unicode_', np.str_)):
        if old not in np.__dict__:
            setattr(np, old, new)
    if not hasattr(sp.dok_matrix, '_update'):
        sp.dok_matrix._update = lambda self, d: self._dict.update(d)
    if not hasattr(torch.sparse, 'FloatTensor'):
        torch.sparse.FloatTensor = \
            lambda i, v, shape: torch.sparse_coo_tensor(i, v, shape)


def _metrics(result) -> Dict[str, float]:
    return {str(k): float(v) for k, v in dict(result).items()}


def _recbole_worker(spec: Dict[str, Any], proto: _Protocol) -> None:
    import warnings
    warnings.filterwarnings('ignore')
    import torch
    threads = spec['threads']
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    apply_recbole_shims()
    import numpy as np
    import pandas
    import recbole
    import scipy
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config = Config(model=spec['recbole_model'], dataset=spec['dataset'],
                    config_dict=dict(spec['params'],
                                     data_path=spec['data_path'],
                                     checkpoint_dir=spec['scratch']))
    init_seed(config['seed'], config['reproducibility'])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    # the split RecBole loaded, in our ids, must be ours
    uid, iid = dataset.uid_field, dataset.iid_field
    u_tok = dataset.field2id_token[uid]
    i_tok = dataset.field2id_token[iid]
    check = {}
    for split, loader in (('train', train_data), ('val', valid_data),
                          ('test', test_data)):
        feat = loader._dataset.inter_feat
        got = sorted(zip((int(x) for x in u_tok[feat[uid].numpy()]),
                         (int(x) for x in i_tok[feat[iid].numpy()])))
        users, items = read_atomic(spec['files'][split])
        check[split] = got == sorted(zip(users, items))
    check['num_users'] = int(dataset.user_num - 1)
    check['num_items'] = int(dataset.item_num - 1)
    check['items_match'] = check['num_items'] == spec['num_items']
    check['eval_users_per_batch'] = int(valid_data.step)

    # test ranking masks training items only (mmdiff's protocol)
    train_items: Dict[int, set] = {}
    tf = train_data._dataset.inter_feat
    for u, i in zip(tf[uid].numpy().tolist(), tf[iid].numpy().tolist()):
        train_items.setdefault(u, set()).add(i)
    recbole_history = test_data.uid2history_item.copy()
    ours_history = recbole_history.copy()
    for u in test_data.uid_list.tolist():
        pos = set(test_data.uid2positive_item[u].tolist())
        ours_history[u] = torch.tensor(sorted(train_items.get(u, set()) -
                                              pos), dtype=torch.int64)

    init_seed(config['seed'], config['reproducibility'])
    model = get_model(config['model'])(config, train_data._dataset)
    model = model.to(config['device'])
    trainer = get_trainer(config['MODEL_TYPE'], config['model'])(config,
                                                                 model)
    torch.set_num_threads(threads)
    proto.send({'ready': time.perf_counter() - t0, 'split_check': check,
                'threads': torch.get_num_threads(),
                'interop_threads': torch.get_num_interop_threads(),
                'versions': {'recbole': recbole.__version__,
                             'torch': torch.__version__,
                             'numpy': np.__version__,
                             'scipy': scipy.__version__,
                             'pandas': pandas.__version__,
                             'python': platform.python_version()},
                'rss_mb': peak_rss_mb()})

    best_score, best_state, epoch = float('-inf'), None, 0
    while True:
        cmd = proto.recv()
        if cmd == 'epoch':
            t = time.perf_counter()
            loss = trainer._train_epoch(train_data, epoch,
                                        show_progress=False)
            t1 = time.perf_counter()
            score, result = trainer._valid_epoch(valid_data,
                                                 show_progress=False)
            t2 = time.perf_counter()
            if isinstance(loss, tuple):
                loss = sum(loss)
            score = float(score)
            if score > best_score:
                best_score = score
                best_state = {k: v.detach().clone()
                              for k, v in model.state_dict().items()}
            proto.send({'train_s': t1 - t, 'eval_s': t2 - t1,
                        'loss': float(loss), 'val': _metrics(result)})
            epoch += 1
        elif cmd == 'finish':
            if best_state is not None:
                model.load_state_dict(best_state)
            for name in ('restore_user_e', 'restore_item_e'):
                if hasattr(model, name):  # LightGCN's scoring cache
                    setattr(model, name, None)
            test_data.uid2history_item = ours_history
            # the top-K lists RecBole's evaluator ranks (for the metric
            # cross-check in the parent), recorded on the way
            ranked: List[Any] = []
            original = trainer._full_sort_batch_eval

            def recording(batched_data):
                out = original(batched_data)
                interaction, scores = out[0], out[1]
                top = torch.topk(scores, K, dim=-1).indices
                ranked.append((interaction[uid].tolist(), top.tolist()))
                return out

            trainer._full_sort_batch_eval = recording
            t = time.perf_counter()
            test = trainer.evaluate(test_data, load_best_model=False,
                                    show_progress=False)
            t1 = time.perf_counter()
            trainer._full_sort_batch_eval = original
            topk = {int(u_tok[u]): [int(i_tok[i]) for i in row]
                    for users, rows in ranked
                    for u, row in zip(users, rows)}
            test_data.uid2history_item = recbole_history
            own = trainer.evaluate(test_data, load_best_model=False,
                                   show_progress=False)
            state_mb = sum(v.numel() * v.element_size() for v in
                           (best_state or {}).values()) / 2 ** 20
            proto.send({'test': _metrics(test), 'test_s': t1 - t,
                        'test_topk': topk, 'best_state_mb': state_mb,
                        'test_recbole_protocol': _metrics(own),
                        'peak_rss_mb': peak_rss_mb(),
                        'ru_maxrss_mb': ru_maxrss_mb()})
        else:
            return


def _mmdiff_worker(spec: Dict[str, Any], proto: _Protocol) -> None:
    import threading
    import warnings
    warnings.filterwarnings('ignore')
    import torch
    threads = spec['threads']
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    import mmdiff
    from mmdiff.nn.models import get_model_class
    from mmdiff.train import Trainer
    from mmdiff.train.config import split_config
    from mmdiff.train.run import load_data
    from mmdiff.train.seed import seed_everything

    data = load_data(spec['dataset'], spec['root'])
    cls = get_model_class(spec['model'])
    cfg = cls.canonical_hparams(dict(spec['cfg']), prefer_alias=True)
    tkw, hp = split_config(cfg, cls)
    tkw.update(epochs=spec['max_epochs'], patience=spec['patience'],
               track_test=False, eval_every=1, ks=list(KS),
               monitor=f'recall@{K}')
    seed_everything(spec['seed'])
    model = cls.from_data(data, **hp)
    go, done = threading.Semaphore(0), threading.Semaphore(0)
    state: Dict[str, Any] = {'row': None, 'error': None, 'result': None,
                             'finishing': False}

    def on_epoch(row: Dict[str, Any]) -> None:
        if state['finishing']:
            raise RuntimeError('mmdiff trained another epoch after the '
                               "benchmark's stop rule ended the run: the "
                               'two early-stopping rules disagree')
        state['row'] = row
        done.release()
        go.acquire()

    trainer = Trainer(model, data, device='cpu', seed=spec['seed'],
                      on_epoch=on_epoch, **tkw)

    def run() -> None:
        go.acquire()
        try:
            state['result'] = trainer.fit()
        except BaseException as e:  # reported to the parent
            state['error'] = e
        done.release()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    proto.send({'ready': time.perf_counter() - t0,
                'threads': torch.get_num_threads(),
                'interop_threads': torch.get_num_interop_threads(),
                'versions': {'mmdiff': getattr(mmdiff, '__version__', ''),
                             'torch': torch.__version__,
                             'python': platform.python_version()},
                'rss_mb': peak_rss_mb()})
    while True:
        cmd = proto.recv()
        if cmd == 'epoch':
            go.release()
            done.acquire()
            if state['error'] is not None:
                raise state['error']
            if state['result'] is not None:
                raise RuntimeError('mmdiff stopped before the benchmark '
                                   'asked it to: the early-stopping rules '
                                   'disagree')
            r = state['row']
            proto.send({'train_s': r['time/train'], 'eval_s': r['time/eval'],
                        'loss': float(next((v for k, v in r.items()
                                            if k.endswith('/loss')), 'nan')),
                        'val': {k[4:]: float(v) for k, v in r.items()
                                if k.startswith('val/') and
                                isinstance(v, (int, float))}})
        elif cmd == 'finish':
            state['finishing'] = True
            go.release()
            thread.join()
            if state['error'] is not None:
                raise state['error']
            res = state['result']
            t = time.perf_counter()  # the best model is loaded
            test = trainer.evaluate('test')
            t1 = time.perf_counter()
            proto.send({'test': {k: float(v) for k, v in test.items()},
                        'test_s': t1 - t, 'fit_best_epoch': res.best_epoch,
                        'fit_test': {k: float(v) for k, v in
                                     res.test_metrics.items()},
                        'peak_rss_mb': peak_rss_mb(),
                        'ru_maxrss_mb': ru_maxrss_mb()})
        else:
            return


def worker_main(kind: str, spec_path: str) -> int:
    proto = _Protocol()
    spec = json.loads(Path(spec_path).read_text())
    try:
        (_recbole_worker if kind == 'recbole' else _mmdiff_worker)(spec,
                                                                   proto)
    except BaseException:
        proto.send({'error': traceback.format_exc()})
        return 1
    return 0


class Contender:
    r"""A worker process spoken to in JSON lines."""

    def __init__(self, name: str, python: str, spec: Dict[str, Any],
                 scratch: Path, env: Dict[str, str]):
        self.name = name
        spec_path = scratch / f'{name}-{spec["model"]}-spec.json'
        spec_path.write_text(json.dumps(spec))
        self.log_path = scratch / f'{name}-{spec["model"]}.log'
        self._log = open(self.log_path, 'w')
        self.command = [python, str(Path(__file__).resolve()), '--worker',
                        name, str(spec_path)]
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, cwd=str(scratch), env=env)

    def _read(self) -> Dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f'{self.name} worker ended (exit '
                               f'{self.proc.returncode}); log tail:\n'
                               f'{self.log_tail()}')
        msg = json.loads(line)
        if 'error' in msg:
            raise RuntimeError(f'{self.name} worker failed:\n{msg["error"]}')
        return msg

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text()[-n:]

    def ready(self) -> Dict[str, Any]:
        return self._read()

    def ask(self, cmd: str) -> Dict[str, Any]:
        self.proc.stdin.write(cmd + '\n')
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write('quit\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ------------------------------------------------------------- the venv
def venv_python(venv: Path) -> Path:
    return Path(venv) / 'bin' / 'python'


def ensure_recbole_venv(venv: Path, log=print) -> Tuple[Path, List[str]]:
    r"""The python of a virtual environment with ``torch==2.13.0`` and
    ``recbole==1.2.1`` (created if missing), and the commands that create
    it."""
    venv = Path(venv).expanduser()
    py = venv_python(venv)
    pip = f'{shlex.quote(str(py))} -m pip --disable-pip-version-check -q'
    commands = [f'python3 -m venv {shlex.quote(str(venv))}',
                f'{pip} install "torch=={TORCH_VERSION}"',
                f'{pip} install "recbole=={RECBOLE_VERSION}"']
    probe = ('import recbole, torch; '
             'print(recbole.__version__, torch.__version__.split("+")[0])')
    if py.exists():
        out = subprocess.run([str(py), '-c', probe], capture_output=True,
                             text=True)
        if out.returncode == 0 and out.stdout.split() == [RECBOLE_VERSION,
                                                           TORCH_VERSION]:
            log(f'reusing the RecBole environment {venv}')
            return py, commands
    log(f'creating the RecBole environment {venv} (torch {TORCH_VERSION} '
        f'first, then recbole {RECBOLE_VERSION})')
    base = os.environ.get('PYTHON', 'python3')
    if not py.exists():
        subprocess.run([base, '-m', 'venv', str(venv)], check=True)
    pipc = [str(py), '-m', 'pip', '--disable-pip-version-check', '-q']
    subprocess.run(pipc + ['install', f'torch=={TORCH_VERSION}'], check=True)
    subprocess.run(pipc + ['install', f'recbole=={RECBOLE_VERSION}'],
                   check=True)
    return py, commands


# ------------------------------------------------------------- summary
def stats(values: Sequence[float]) -> Optional[Dict[str, float]]:
    r"""``{'median', 'min', 'max', 'n'}`` of ``values`` (None if empty)."""
    values = [float(v) for v in values]
    if not values:
        return None
    return {'median': statistics.median(values), 'min': min(values),
            'max': max(values), 'n': len(values)}


def timed_epochs(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    r"""The epochs that count for the timings: all but the first (a
    warm-up) when there are at least two."""
    return rows[1:] if len(rows) > 1 else rows


def paired_ratios(a: List[Dict[str, Any]], b: List[Dict[str, Any]],
                  key: str) -> Optional[Dict[str, float]]:
    r"""Median [min, max] over the rounds both ran (after the warm-up
    round) of ``a[round][key] / b[round][key]``."""
    n = min(len(a), len(b))
    pairs = [(x[key], y[key]) for x, y in zip(a[:n], b[:n])]
    pairs = pairs[1:] if len(pairs) > 1 else pairs
    return stats([x / y for x, y in pairs if y > 0])


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarise(run: Dict[str, Any]) -> Dict[str, Any]:
    r"""Per contender: timing statistics, selection, metrics; and RecBole /
    mmdiff ratios of every figure."""
    out: Dict[str, Any] = {}
    for name in CONTENDERS:
        c = run['contenders'][name]
        rows = c['epochs']
        t = timed_epochs(rows)
        best = c['best_epoch']
        out[name] = {
            'first_train_s': rows[0]['train_s'] if rows else None,
            'first_eval_s': rows[0]['eval_s'] if rows else None,
            'train_s': stats([r['train_s'] for r in t]),
            'eval_s': stats([r['eval_s'] for r in t]),
            'test_s': c['finish']['test_s'],
            'peak_rss_mb': c['finish']['peak_rss_mb'],
            'ru_maxrss_mb': c['finish'].get('ru_maxrss_mb'),
            'setup_s': c['ready']['ready'],
            'epochs_run': len(rows), 'best_epoch': best + 1,
            'stopped_by': c['stopped_by'],
            'val_recall': rows[best]['val'][f'recall@{K}'],
            'test_recall': c['finish']['test'][f'recall@{K}'],
            'test_ndcg': c['finish']['test'][f'ndcg@{K}'],
        }
    r, m = run['contenders']['recbole'], run['contenders']['mmdiff']
    ro, mo = out['recbole'], out['mmdiff']
    out['ratio'] = {
        'train_s': paired_ratios(r['epochs'], m['epochs'], 'train_s'),
        'eval_s': paired_ratios(r['epochs'], m['epochs'], 'eval_s'),
        'test_s': ratio(ro['test_s'], mo['test_s']),
        'peak_rss_mb': ratio(ro['peak_rss_mb'], mo['peak_rss_mb']),
        'setup_s': ratio(ro['setup_s'], mo['setup_s']),
        'test_recall': ratio(ro['test_recall'], mo['test_recall']),
        'test_ndcg': ratio(ro['test_ndcg'], mo['test_ndcg']),
        'best_epoch': ratio(ro['best_epoch'], mo['best_epoch']),
    }
    return out


def _fs(s: Optional[Dict[str, float]], digits: int = 2, unit: str = '') -> str:
    if not s:
        return 'n/a'
    return (f"{s['median']:.{digits}f}{unit} "
            f"[{s['min']:.{digits}f}–{s['max']:.{digits}f}]")


def _fm2(v: Optional[float]) -> str:
    return 'n/a' if v is None else f'{v:.2f}'


def _fm(v: Optional[float]) -> str:
    return 'n/a' if v is None else f'{v:.0f}'


def _fr(v: Optional[float], digits: int = 2) -> str:
    return 'n/a' if v is None else f'{v:.{digits}f}×'


def summary_table(s: Dict[str, Any]) -> List[str]:
    r"""Markdown rows of one (dataset, model): RecBole | mmdiff | ratio."""
    ro, mo, q = s['recbole'], s['mmdiff'], s['ratio']
    return [
        '| | RecBole 1.2.1 | mmdiff | RecBole / mmdiff |',
        '|---|---|---|---|',
        f"| train s/epoch, median [min–max] | {_fs(ro['train_s'])} | "
        f"{_fs(mo['train_s'])} | {_fs(q['train_s'], unit='×')} |",
        f"| first epoch (warm-up, not in the medians): train s / "
        f"validation s | {_fm2(ro.get('first_train_s'))} / "
        f"{_fm2(ro.get('first_eval_s'))} | {_fm2(mo.get('first_train_s'))} "
        f"/ {_fm2(mo.get('first_eval_s'))} | |",
        f"| full validation ranking s (all users with a validation item) | "
        f"{_fs(ro['eval_s'])} | {_fs(mo['eval_s'])} | "
        f"{_fs(q['eval_s'], unit='×')} |",
        f"| full test ranking s (best model, once) | {ro['test_s']:.2f} | "
        f"{mo['test_s']:.2f} | {_fr(q['test_s'])} |",
        f"| peak RSS MB (whole process, VmHWM) | {ro['peak_rss_mb']:.0f} | "
        f"{mo['peak_rss_mb']:.0f} | {_fr(q['peak_rss_mb'])} |",
        f"| ru_maxrss MB | {_fm(ro.get('ru_maxrss_mb'))} | "
        f"{_fm(mo.get('ru_maxrss_mb'))} | "
        f"{_fr(ratio(ro.get('ru_maxrss_mb'), mo.get('ru_maxrss_mb')))} |",
        f"| set-up s (data + model) | {ro['setup_s']:.1f} | "
        f"{mo['setup_s']:.1f} | {_fr(q['setup_s'])} |",
        f"| test Recall@{K} (validation-selected) | "
        f"{ro['test_recall']:.4f} | {mo['test_recall']:.4f} | "
        f"{_fr(q['test_recall'], 3)} |",
        f"| test NDCG@{K} (validation-selected) | {ro['test_ndcg']:.4f} | "
        f"{mo['test_ndcg']:.4f} | {_fr(q['test_ndcg'], 3)} |",
        f"| validation Recall@{K} of the selected epoch | "
        f"{ro['val_recall']:.4f} | {mo['val_recall']:.4f} | |",
        f"| selected epoch (1 = first) / epochs run | {ro['best_epoch']} / "
        f"{ro['epochs_run']} | {mo['best_epoch']} / {mo['epochs_run']} | "
        f"{_fr(q['best_epoch'])} |",
        f"| run ended by | {ro['stopped_by']} | {mo['stopped_by']} | |",
    ]


def convergence_note(s: Dict[str, Any]) -> str:
    r"""One sentence on whether each run converged (stopped by patience)
    or hit the cap, and whether its selected epoch was its last."""
    parts = []
    for name, label in (('recbole', 'RecBole'), ('mmdiff', 'mmdiff')):
        c = s[name]
        if c['stopped_by'].startswith('patience'):
            parts.append(f"{label} was stopped by the patience rule "
                         f"after {c['epochs_run']} epochs (best epoch "
                         f"{c['best_epoch']})")
        elif c['best_epoch'] == c['epochs_run']:
            parts.append(f'{label} hit the cap still improving (its last '
                         'epoch is its best)')
        else:
            parts.append(f"{label} hit the cap (best epoch "
                         f"{c['best_epoch']} of {c['epochs_run']})")
    capped = all(not s[n]['stopped_by'].startswith('patience')
                 for n in CONTENDERS)
    tail = (' The quality figures compare the two libraries after the same '
            'number of epochs, not at convergence.' if capped else '')
    return '; '.join(parts) + '.' + tail


def render(rec: Dict[str, Any]) -> str:
    r"""The text of ``peers.md``."""
    b = rec['budget']
    lines = [
        '# RecBole beside mmdiff: LightGCN and DiffRec, one run',
        '',
        f"- Date: {rec['date']} (run took {rec['wall_s'] / 60:.1f} min). "
        f"Machine: {rec['machine']}.",
        f"- 2048³ float32 matrix product, {rec['threads']} threads, before / "
        f"after the runs: {rec['matmul_ms']['before']:.1f} / "
        + ('(not measured)' if rec['matmul_ms']['after'] is None else
           f"{rec['matmul_ms']['after']:.1f}") + ' ms.',
        '- Load average (1, 5, 15 min) before / after the runs: '
        + ' / '.join('n/a' if v is None else ', '.join(f'{x:.2f}' for x in v)
                     for v in (rec.get('loadavg') or {}).values()) + '.',
        f"- Command: `{rec['command']}`",
        '- RecBole environment (created by the script when missing): '
        + '; '.join(f'`{c}`' for c in rec['setup_commands']) + '.',
        '- Versions: RecBole process '
        + ', '.join(f'{k} {v}' for k, v in
                    rec['versions'].get('recbole', {}).items())
        + '; mmdiff process '
        + ', '.join(f'{k} {v}' for k, v in
                    rec['versions'].get('mmdiff', {}).items())
        + '.',
        "- Budget, the same for both libraries: at most "
        + (f"{b['max_epochs']} epochs" if not isinstance(b['max_epochs'], dict)
           else ', '.join(f'{v} epochs for {k}'
                          for k, v in b['max_epochs'].items()))
        + ", "
        f"early stopping after {b['patience']} epochs without a better "
        f"validation Recall@{K} (strictly larger; the first best wins), "
        f"seed {b['seed']}, {rec['threads']} threads "
        '(`torch.set_num_threads` in each process, `OMP_NUM_THREADS` / '
        '`MKL_NUM_THREADS` set too). '
        'Full ranking over all items, training items masked, '
        f'K = {K}; the test metrics are those of the validation-selected '
        'epoch.',
        '- Each library runs in its own process; its peak RSS is `VmHWM` '
        'of that process (its own peak), with `ru_maxrss` beside it (on '
        'Linux `ru_maxrss` also keeps the resident size of the launching '
        'process at the fork: '
        + (f"{rec['launcher_rss_mb']:.0f} MB here" if
           rec.get('launcher_rss_mb') else 'not measured') + '). Both are '
        'set up one after the other, then every '
        'round runs one epoch (training + full validation ranking) of each, '
        'the order flipping every round. Timings are medians [min–max] over '
        'the epochs after the first (a warm-up); ratios are medians '
        '[min–max] over rounds of the same round\'s RecBole / mmdiff '
        'times. A ratio above 1 means RecBole takes longer / more.',
        '- The loop that drives both is the benchmark\'s: RecBole\'s '
        '`Trainer._train_epoch` and `Trainer._valid_epoch` (what its '
        '`fit` calls each epoch), mmdiff\'s `Trainer.fit` paused after every '
        'epoch through its `on_epoch` hook. The stop rule is mmdiff\'s, '
        'applied to both (mmdiff\'s own `fit` is checked to stop at the same '
        'epoch).',
        '',
        '## Runtime shims in the RecBole process (nothing else changed)',
        '',
    ]
    lines += [f'- {w}: {y}.' for w, y in rec['shims']]
    lines += ['', '## Evaluation settings', '']
    lines += [f'- {n}' for n in rec['notes']]
    lines += [
        f"- Metric definitions: RecBole's Recall@K (hits in the top K / "
        'number of held-out items) and NDCG@K (DCG of the top K over the '
        'ideal DCG of min(held-out items, K) hits, log2(rank + 1) '
        'discounts), each averaged over the users with at least one held-out '
        'item, are the definitions of `mmdiff.metrics`.',
    ]
    if not rec.get('complete', True):
        lines += ['', '**The run was still going or was stopped when this '
                  'was written: only the finished models are below.**']
    for ds, models in rec['runs'].items():
        for model, run in models.items():
            if 'error' in run:
                lines += ['', f'## {model} on {ds}: failed', '', '```',
                          run['error'].strip()[-3000:], '```']
                continue
            s = run['summary']
            rb = run['contenders']['recbole']
            chk = rb['ready']['split_check']
            lines += [
                '', f"## {model} on {ds} ({run['num_users']:,} users, "
                f"{run['num_items']:,} items; {run['sizes']})", '']
            lines += summary_table(s)
            own = run['contenders']['recbole']['finish'][
                'test_recbole_protocol']
            lines += ['', convergence_note(s)]
            lines += [
                '',
                f"RecBole protocol (validation items masked too at test "
                f"time): test Recall@{K} {own[f'recall@{K}']:.4f}, "
                f"NDCG@{K} {own[f'ndcg@{K}']:.4f}. "
                f"Split loaded by RecBole equals ours: train "
                f"{chk['train']}, valid {chk['val']}, test {chk['test']}; "
                f"users {chk['num_users']:,}, items {chk['num_items']:,}; "
                f"users per evaluation batch {chk['eval_users_per_batch']}. "
                "RecBole's test metrics recomputed from its own top-20 lists "
                "with `mmdiff.metrics.metrics_from_hits`: largest difference "
                f"{rb['metric_check_max_diff']:.1e} over "
                f"{', '.join(rb['metric_check'])}. In-memory copy of "
                "RecBole's best weights: "
                f"{rb['finish'].get('best_state_mb', float('nan')):.1f} MB. "
                "Threads seen by torch "
                "(intra-op / inter-op): RecBole "
                f"{rb['ready']['threads']} / {rb['ready']['interop_threads']}"
                f", mmdiff {run['contenders']['mmdiff']['ready']['threads']} "
                f"/ {run['contenders']['mmdiff']['ready']['interop_threads']}"
                '.',
                '', 'Parameter mapping (mmdiff preset → RecBole):', '',
                '| mmdiff | RecBole parameter | value |', '|---|---|---|']
            lines += [f'| {a} | `{p}` | `{v}` |' for a, p, v in run['mapping']]
            lines += ['', '<details><summary>every epoch</summary>', '',
                      '| round | library | train s | validation s | loss | '
                      f'val R@{K} | val N@{K} |',
                      '|---|---|---|---|---|---|---|']
            for rnd, name, r in run['log']:
                lines.append(
                    f"| {rnd + 1} | {name} | {r['train_s']:.2f} | "
                    f"{r['eval_s']:.2f} | {r['loss']:.4g} | "
                    f"{r['val'][f'recall@{K}']:.4f} | "
                    f"{r['val'][f'ndcg@{K}']:.4f} |")
            lines += ['', 'loss: RecBole\'s is the sum over the epoch\'s '
                      'batches, mmdiff\'s the mean per batch.', '',
                      '</details>']
    lines += ['', 'Written by `benchmarks/peers.py`; the JSON record beside '
              'it (`peers_runs/`) holds every figure above.', '']
    return '\n'.join(lines)


# ------------------------------------------------------------- the run
def parse_caps(values: Optional[Sequence[str]]):
    r"""``--max-epochs``: ``None``, one cap (``['40']`` -> ``40``) or caps
    per model (``['lightgcn=60', 'diffrec=15']`` -> a dict)."""
    if not values:
        return None
    if len(values) == 1 and '=' not in values[0]:
        return int(values[0])
    caps = {}
    for v in values:
        model, eq, n = v.partition('=')
        if not eq or model not in MODELS:
            raise ValueError(f'--max-epochs: {v!r} is not N or MODEL=N with '
                             f'MODEL in {list(MODELS)}')
        caps[model] = int(n)
    return caps


def cap_of(caps, model: str, preset_cap: int) -> int:
    if isinstance(caps, dict):
        return caps.get(model, preset_cap)
    return caps or preset_cap


def run_pair(dataset: str, model: str, args, data, py_recbole: Path,
             scratch: Path, env: Dict[str, str], log=print) -> Dict[str, Any]:
    from mmdiff.data.hetero import num_items, num_users
    from mmdiff.train.config import preset
    from mmdiff.train.run import dataset_key
    cfg = preset(model, dataset_key(dataset))
    max_epochs = cap_of(args.max_epochs, model, cfg.get('epochs', 1000))
    patience = cfg.get('patience', 20) if args.patience is None \
        else args.patience
    U, I = num_users(data), num_items(data)
    name = dataset.replace(':', '_').replace(',', '_').replace('=', '-')
    folder = scratch / 'atomic'
    files = write_atomic(data_splits(data), folder, name)
    params, mapping = recbole_params(model, cfg, max_epochs=max_epochs,
                                     patience=patience, seed=args.seed,
                                     num_items=I)
    common = {'model': model, 'threads': args.threads, 'seed': args.seed}
    specs = {
        'recbole': dict(common, recbole_model=RECBOLE_MODEL[model],
                        dataset=name, data_path=str(folder), params=params,
                        files={k: str(v) for k, v in files.items()},
                        num_items=I, scratch=str(scratch / 'recbole-saved')),
        'mmdiff': dict(common, dataset=dataset, cfg=cfg,
                       root=None if args.root is None else
                       str(Path(args.root).expanduser().absolute()),
                       max_epochs=max_epochs, patience=patience),
    }
    pythons = {'recbole': str(py_recbole), 'mmdiff': sys.executable}
    # only the mmdiff process sees this checkout on its path
    envs = {'recbole': {k: v for k, v in env.items() if k != 'PYTHONPATH'},
            'mmdiff': env}
    procs: Dict[str, Contender] = {}
    res: Dict[str, Any] = {n: {'epochs': []} for n in CONTENDERS}
    sel = {n: Selection(max_epochs, patience) for n in CONTENDERS}
    log_rows: List[Any] = []
    launcher_rss = rss_mb()
    try:
        for n in CONTENDERS:  # one after the other: no contention
            procs[n] = Contender(n, pythons[n], specs[n], scratch, envs[n])
            res[n]['ready'] = procs[n].ready()
            log(f"[{dataset} {model}] {n} ready in "
                f"{res[n]['ready']['ready']:.1f} s")
        if not all(res['recbole']['ready']['split_check'][k]
                   for k in ('train', 'val', 'test', 'items_match')):
            raise RuntimeError('RecBole did not load our split: '
                               f"{res['recbole']['ready']['split_check']}")
        active = list(CONTENDERS)
        rnd = 0
        while active:
            order = active if rnd % 2 == 0 else active[::-1]
            for n in list(order):
                row = procs[n].ask('epoch')
                res[n]['epochs'].append(row)
                log_rows.append((rnd, n, row))
                stop = sel[n].update(row['val'][f'recall@{K}'])
                log(f"[{dataset} {model}] round {rnd + 1} {n}: train "
                    f"{row['train_s']:.2f} s, validation {row['eval_s']:.2f} "
                    f"s, val R@{K} {row['val'][f'recall@{K}']:.4f}"
                    + (f' -> stop ({sel[n].reason})' if stop else ''))
                if stop:
                    res[n]['finish'] = procs[n].ask('finish')
                    res[n]['best_epoch'] = sel[n].best_epoch
                    res[n]['stopped_by'] = (
                        f'patience ({sel[n].epochs} epochs)'
                        if sel[n].reason == 'patience' else
                        f'cap ({sel[n].epochs} epochs)')
                    procs[n].close()
                    active.remove(n)
            rnd += 1
    finally:
        for p in procs.values():
            p.close()
    # RecBole's reported test metrics, recomputed from its own top-K lists
    # with mmdiff's metric code: the definitions agree if these do
    ours = metrics_of_topk(res['recbole']['finish'].pop('test_topk'),
                           data_splits(data)['test'])
    theirs = res['recbole']['finish']['test']
    res['recbole']['metric_check'] = {
        key: [theirs[key], ours[key]] for key in theirs if key in ours}
    res['recbole']['metric_check_max_diff'] = max(
        abs(a - b) for a, b in res['recbole']['metric_check'].values())
    fb = res['mmdiff']['finish']['fit_best_epoch']
    if fb != res['mmdiff']['best_epoch']:
        raise RuntimeError(f"mmdiff's fit selected epoch {fb}, the "
                           f"benchmark {res['mmdiff']['best_epoch']}")
    run = {'num_users': U, 'num_items': I, 'max_epochs': max_epochs,
           'launcher_rss_mb': launcher_rss,
           'patience': patience,
           'sizes': ', '.join(f'{k} {len(v[0]):,}' for k, v in
                              data_splits(data).items()),
           'mmdiff_preset': cfg, 'recbole_params': params,
           'mapping': mapping, 'contenders': res,
           'log': log_rows, 'commands': {n: procs[n].command
                                         for n in procs}}
    run['summary'] = summarise(run)
    return run


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['--worker']:
        return worker_main(argv[1], argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--root', default=None,
                    help='folder holding <dataset>/ (DiffMM or MMRec '
                         'layout); not needed for synthetic')
    ap.add_argument('--datasets', nargs='+', default=['baby'])
    ap.add_argument('--models', nargs='+', default=list(MODELS),
                    choices=MODELS)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--max-epochs', nargs='+', default=None,
                    metavar='N|MODEL=N',
                    help='epoch cap for both libraries, one number or one '
                         'per model (lightgcn=60 diffrec=15; default: the '
                         'preset\'s)')
    ap.add_argument('--patience', type=int, default=None,
                    help='early-stopping patience for both (default: the '
                         'preset\'s)')
    ap.add_argument('--quick', action='store_true',
                    help='2 epochs, patience 2 (a check of the set-up)')
    ap.add_argument('--recbole-venv', default=str(DEFAULT_VENV),
                    help='virtual environment for RecBole (created with '
                         f'torch=={TORCH_VERSION} and recbole=='
                         f'{RECBOLE_VERSION} if missing)')
    ap.add_argument('--scratch', default=None,
                    help='folder for the atomic files and logs (default: a '
                         'temporary folder, removed at the end)')
    ap.add_argument('--tag', default=None,
                    help='results name (default: peers, or peers-quick)')
    ap.add_argument('--render', default=None, metavar='JSON',
                    help='only rewrite <out>/<tag>.md from a stored JSON '
                         'record of this script (no run)')
    ap.add_argument('--out', default=str(RESULTS),
                    help='folder of <tag>.md (the JSON goes to '
                         '<out>/peers_runs/)')
    args = ap.parse_args(argv)
    try:
        args.max_epochs = parse_caps(args.max_epochs)
    except ValueError as e:
        ap.error(str(e))
    if args.quick:
        args.max_epochs = args.max_epochs or 2
        args.patience = 2 if args.patience is None else args.patience
    tag = args.tag or ('peers-quick' if args.quick else 'peers')
    if args.render:
        rec = json.loads(Path(args.render).read_text())
        for models in rec['runs'].values():
            for run in models.values():
                if 'error' not in run:
                    run['summary'] = summarise(run)
        (Path(args.out) / f'{tag}.md').write_text(render(rec))
        print(render(rec))
        return 0
    t_start = time.time()

    tmp = None
    if args.scratch is None:
        tmp = tempfile.TemporaryDirectory(prefix='mmdiff-peers-')
        scratch = Path(tmp.name)
    else:
        scratch = Path(args.scratch).resolve()
        scratch.mkdir(parents=True, exist_ok=True)
    # mmdiff's processed-data cache goes to the scratch folder, never into
    # the data folder
    os.environ['MMDIFF_CACHE_DIR'] = str(scratch / 'mmdiff-cache')
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), PYTHONWARNINGS='ignore')
    repo = str(HERE.parent)
    env['PYTHONPATH'] = repo + (os.pathsep + env['PYTHONPATH']
                                if env.get('PYTHONPATH') else '')

    py_recbole, setup_commands = ensure_recbole_venv(
        Path(args.recbole_venv), log=lambda s: print(s, flush=True))
    sys.path.insert(0, repo)  # this checkout's mmdiff
    import torch
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    before = matmul_ms()
    print(f'2048^3 float32 matmul: {before:.1f} ms', flush=True)

    from mmdiff.train.run import load_data
    runs: Dict[str, Dict[str, Any]] = {}
    versions: Dict[str, Any] = {}
    command = ' '.join(shlex.quote(a) for a in
                       [os.path.relpath(sys.executable)
                        if sys.executable.startswith(repo) else
                        sys.executable,
                        os.path.relpath(Path(__file__).resolve(),
                                        Path.cwd())] + argv)

    def write(after: Optional[float], final: bool) -> Dict[str, Any]:
        rec = {
            'command': command,
            'date': dt.datetime.now().isoformat(timespec='seconds'),
            'wall_s': time.time() - t_start,
            'complete': final,
            'machine': machine_text(args.threads),
            'threads': args.threads,
            'matmul_ms': {'before': before, 'after': after},
            'loadavg': {'before': load_before,
                        'after': list(os.getloadavg()) if final else None},
            'launcher_rss_mb': max(
                [r.get('launcher_rss_mb') or 0 for m in runs.values()
                 for r in m.values()] or [0]) or None,
            'setup_commands': setup_commands,
            'versions': versions,
            'budget': {'max_epochs': args.max_epochs,
                       'patience': args.patience, 'seed': args.seed},
            'shims': SHIMS, 'notes': NOTES,
            'runs': runs,
        }
        budgets = {(r['max_epochs'], r['patience']) for m in runs.values()
                   for r in m.values() if 'max_epochs' in r}
        if len(budgets) == 1:
            rec['budget'].update(zip(('max_epochs', 'patience'),
                                     budgets.pop()))
        out = Path(args.out)
        (out / 'peers_runs').mkdir(parents=True, exist_ok=True)
        (out / 'peers_runs' / f'{tag}.json').write_text(
            json.dumps(rec, indent=1, default=str))
        (out / f'{tag}.md').write_text(render(rec))
        return rec

    failed = False
    try:
        for ds in args.datasets:
            data = load_data(ds, args.root)
            runs[ds] = {}
            for model in args.models:
                work = scratch / f'{ds}-{model}'.replace(':', '_')
                work.mkdir(parents=True, exist_ok=True)
                try:
                    run = run_pair(ds, model, args, data, py_recbole, work,
                                   env, log=lambda s: print(s, flush=True))
                except Exception:  # recorded; the other runs go on
                    failed = True
                    runs[ds][model] = {'error': traceback.format_exc()}
                    print(runs[ds][model]['error'], file=sys.stderr,
                          flush=True)
                    write(None, False)
                    continue
                runs[ds][model] = run
                for n in CONTENDERS:
                    versions[n] = run['contenders'][n]['ready']['versions']
                print('\n'.join(summary_table(run['summary'])), flush=True)
                write(None, False)  # what is done so far
    finally:
        if tmp is not None:
            tmp.cleanup()
    rec = write(matmul_ms(), True)
    print(render(rec))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
