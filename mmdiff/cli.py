r"""Command-line interface: ``mmdiff train | evaluate | recommend | data info
| demo``.

Errors caused by the user's input, including malformed command lines, are
printed as one line (``error: ...``) and the command exits with status 2;
nothing is written to ``--out`` before the data and the configuration have
been validated.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from mmdiff.errors import MMDiffError

from mmdiff.train.run import (  # noqa: F401 (re-exported)
    DEFAULT_DATASET,
    DEFAULT_MODEL,
    dataset_key,
    load_data,
    train_run,
)


class _UsageError(Exception):
    r"""A malformed command line (raised instead of argparse's usage dump
    and ``SystemExit``, so that it is reported as one ``error:`` line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # noqa: D102 - argparse hook
        raise _UsageError(f"{self.prog}: {message} (see '{self.prog} "
                          f"--help')")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}")
    return v


_IMPORT_HELP = ('import this module before resolving the model (repeatable; '
                'a module name found from the current folder, or a path to '
                'a .py file), e.g. one whose import registers your model '
                'with mmdiff.nn.models.register_model')
_ALLOCATOR_HELP = ('leave the C allocator as it is (by default glibc malloc '
                   'keeps freed memory for reuse, see '
                   'mmdiff.train.allocator: fewer page faults in CPU '
                   'training, the same results)')


def import_modules(modules: Optional[List[str]]) -> List[str]:
    r"""Imports each of ``modules`` (``--import``): a dotted module name,
    looked up with the current folder first on ``sys.path`` (as ``python
    -m`` does), or a path to a ``.py`` file.  Returns the list to store in
    the run configuration (file paths made absolute), so that ``evaluate``,
    ``recommend`` and ``--resume`` import them again.  A module that cannot
    be imported raises :class:`~mmdiff.errors.ConfigError`."""
    import importlib
    import importlib.util
    import os
    from mmdiff.errors import ConfigError
    stored = []
    for name in modules or []:
        name = str(name)
        try:
            if name.endswith('.py') or os.sep in name or \
                    (os.altsep and os.altsep in name):
                path = Path(name).expanduser().resolve()
                if not path.is_file():
                    raise ConfigError(f"--import {name}: no such file "
                                      f"{path}")
                mod_name = f"mmdiff_user_{path.stem}"
                if mod_name not in sys.modules:
                    spec = importlib.util.spec_from_file_location(mod_name,
                                                                  path)
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[mod_name] = module
                    try:
                        spec.loader.exec_module(module)
                    except BaseException:
                        del sys.modules[mod_name]
                        raise
                stored.append(str(path))
            else:
                cwd = os.getcwd()
                added = cwd not in sys.path
                if added:
                    sys.path.insert(0, cwd)
                try:
                    importlib.import_module(name)
                finally:
                    if added:
                        sys.path.remove(cwd)
                stored.append(name)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"--import {name}: cannot import it "
                              f"({type(e).__name__}: {e})") from None
    return stored


#: The ``synthetic:`` spec shown in ``mmdiff train --help``.
SYNTHETIC_SPEC_HELP = ('synthetic:users=N,items=M[,seed=S,per_user=X,'
                       'modalities=image:64+text:32]')


def model_names() -> List[str]:
    r"""The registered model names (:data:`mmdiff.nn.models.MODELS`, which
    :func:`~mmdiff.nn.models.register_model` extends), in registration
    order."""
    from mmdiff.nn.models import MODELS
    return list(MODELS)


def dataset_choices() -> List[str]:
    r"""The dataset names of :data:`mmdiff.data.datasets.DATASET_NAMES`,
    with the ``synthetic:`` spec after ``synthetic``."""
    from mmdiff.data.datasets import DATASET_NAMES
    out = []
    for name in DATASET_NAMES:
        out.append(name)
        if name == 'synthetic':
            out.append(SYNTHETIC_SPEC_HELP)
    return out


def build_parser() -> argparse.ArgumentParser:
    r"""The argument parser.  Lists of names in the help (models, datasets)
    are read from their registries when the parser is built, so a model added
    with :func:`~mmdiff.nn.models.register_model` before this call shows up
    in ``mmdiff train --help``."""
    from mmdiff.data.hetero import SPLITS
    # argparse %-formats help strings
    models = ' | '.join(model_names()).replace('%', '%%')
    datasets = ' | '.join(dataset_choices()).replace('%', '%%')
    p = _Parser(
        prog='mmdiff',
        description='Multi-modal diffusion recommenders (DiffMM, LD4MRec) '
                    'on PyTorch Geometric.')
    sub = p.add_subparsers(dest='command', required=True)

    t = sub.add_parser('train', help='train and evaluate a model')
    t.add_argument('--model', default=None,
                   help=f'{models} (default: {DEFAULT_MODEL}; with --resume '
                        f'it must match the run)')
    t.add_argument('--dataset', default=None,
                   help=f'{datasets} | PATH to a folder in the DiffMM or '
                        f'MMRec layout (default: {DEFAULT_DATASET}; with '
                        f'--resume: the run\'s dataset, or this one if '
                        f'given, e.g. after moving the data)')
    t.add_argument('--root', default=None,
                   help='folder holding <dataset>/ for named datasets '
                        '(e.g. data/)')
    t.add_argument('--modalities', nargs='+', default=None,
                   help='use only these item modalities (by name)')
    t.add_argument('--noise', type=float, default=0.0,
                   help='add this ratio of random noisy interactions to '
                        'train/validation (LD4MRec protocol)')
    t.add_argument('--epochs', type=_positive_int, default=None)
    t.add_argument('--batch-size', type=_positive_int, default=None)
    t.add_argument('--patience', type=_positive_int, default=None)
    t.add_argument('--seed', type=_positive_int, default=0)
    t.add_argument('--device', default='auto', help='auto | cpu | cuda[:N]')
    t.add_argument('--cpu-fallback', action='store_true',
                   help='use the CPU when CUDA is requested but missing')
    t.add_argument('--config', default=None, help='TOML file of overrides')
    t.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                   help='override hyper-parameters, e.g. --set lr=0.01')
    t.add_argument('--out', default=None, help='write the run to this folder')
    t.add_argument('--resume', default=None, metavar='DIR',
                   help='continue the interrupted run in DIR')
    t.add_argument('--progress', action='store_true', help='progress bars')
    t.add_argument('--quiet', action='store_true', help='no per-epoch log')
    t.add_argument('--threads', type=_positive_int, default=None,
                   help='CPU threads for torch (default: torch\'s choice; '
                        'on small shared VMs 1 is often fastest)')
    t.add_argument('--import', dest='imports', action='append', default=[],
                   metavar='MODULE', help=_IMPORT_HELP)
    t.add_argument('--system-allocator', action='store_true',
                   help=_ALLOCATOR_HELP)
    t.add_argument('--dist-timeout', type=float, default=300.0,
                   metavar='SECONDS',
                   help='under torchrun: seconds after which a collective '
                        'that a dead or hung rank never joins fails and '
                        'the job stops (default: 300)')

    e = sub.add_parser('evaluate', help='evaluate a saved run')
    e.add_argument('checkpoint', help='run folder or checkpoint file')
    e.add_argument('--root', default=None)
    e.add_argument('--split', default='test',
                   choices=[s for s in SPLITS if s != 'train'])
    e.add_argument('--device', default='auto')
    e.add_argument('--cpu-fallback', action='store_true',
                   help='use the CPU when CUDA is requested but missing')
    e.add_argument('--import', dest='imports', action='append', default=[],
                   metavar='MODULE', help=_IMPORT_HELP + ' (the modules of '
                   'the run are imported anyway)')

    r = sub.add_parser('recommend', help='top-k items for some users')
    r.add_argument('checkpoint', help='run folder or checkpoint file')
    r.add_argument('--users', nargs='+', type=_positive_int, required=True)
    r.add_argument('-k', type=_positive_int, default=10)
    r.add_argument('--root', default=None)
    r.add_argument('--device', default='auto')
    r.add_argument('--cpu-fallback', action='store_true',
                   help='use the CPU when CUDA is requested but missing')
    r.add_argument('--import', dest='imports', action='append', default=[],
                   metavar='MODULE', help=_IMPORT_HELP + ' (the modules of '
                   'the run are imported anyway)')

    d = sub.add_parser('data', help='dataset utilities')
    dsub = d.add_subparsers(dest='data_command', required=True)
    di = dsub.add_parser('info', help='describe a dataset')
    di.add_argument('path', help=f'dataset name ({datasets}) or folder')
    di.add_argument('--root', default=None)

    m = sub.add_parser('demo', help='train every model on the synthetic '
                                    'data and print a metrics table')
    m.add_argument('--models', nargs='+', default=None,
                   help=f'any of {models} (default: all of them)')
    m.add_argument('--seed', type=_positive_int, default=0)
    m.add_argument('--device', default='auto')
    m.add_argument('--out', default=None)
    m.add_argument('--threads', type=_positive_int, default=1,
                   help='CPU threads (default 1: the demo models are tiny '
                        'and extra threads only add synchronisation)')
    m.add_argument('--import', dest='imports', action='append', default=[],
                   metavar='MODULE', help=_IMPORT_HELP)
    m.add_argument('--system-allocator', action='store_true',
                   help=_ALLOCATOR_HELP)
    return p


# ----------------------------------------------------------------------
def run_config(args) -> Dict[str, Any]:
    from mmdiff.train.config import parse_overrides, preset, user_config
    from mmdiff.nn.models import get_model_class
    cls = get_model_class(args.model or DEFAULT_MODEL)
    key = dataset_key(args.dataset or DEFAULT_DATASET)
    cfg = preset(cls.name, key)
    if args.config:
        cfg.update(user_config(args.config, key))
    for flag, name in (('epochs', 'epochs'), ('batch_size', 'batch_size'),
                       ('patience', 'patience')):
        v = getattr(args, flag)
        if v is not None:
            cfg[name] = v
    cfg.update(parse_overrides(args.set))
    return cfg


def format_table(rows: List[Dict[str, Any]], columns: List[str]) -> str:
    widths = {c: max([len(c)] + [len(_fmt(r.get(c))) for r in rows])
              for c in columns}
    lines = ['  '.join(c.ljust(widths[c]) for c in columns),
             '  '.join('-' * widths[c] for c in columns)]
    for r in rows:
        lines.append('  '.join(_fmt(r.get(c)).ljust(widths[c])
                               for c in columns))
    return '\n'.join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.4f}'
    return '' if v is None else str(v)


def metrics_table(metrics: Dict[str, float], ks=None) -> str:
    r"""One row per split of every metric of
    :data:`mmdiff.metrics.METRIC_NAMES` at the cut-offs ``ks`` that
    ``metrics`` holds (``'test/recall@20'``...; default: every cut-off it
    holds)."""
    from mmdiff.metrics import METRIC_NAMES
    if ks is None:
        found = set()
        for key in metrics:
            name = key.rpartition('/')[2]
            m, at, k = name.partition('@')
            if at and m in METRIC_NAMES and k.isdigit() and \
                    key.split('/')[0] in ('val', 'test'):
                found.add(int(k))
        ks = sorted(found)
    names = [f'{m}@{k}' for k in ks for m in METRIC_NAMES]
    rows = []
    for split in ('val', 'test'):
        row = {'split': split}
        for name in names:
            key = f'{split}/{name}'
            if key in metrics:
                row[name] = metrics[key]
        if len(row) > 1:
            rows.append(row)
    cols = ['split'] + [c for c in names if any(c in r for r in rows)]
    return format_table(rows, cols)


# ----------------------------------------------------------------------
def _set_allocator(args) -> None:
    if not getattr(args, 'system_allocator', False):
        from mmdiff.train.allocator import retain_freed_memory
        retain_freed_memory()


def _set_threads(n) -> None:
    if n is not None:
        if n < 1:
            from mmdiff.errors import ConfigError
            raise ConfigError(f"--threads must be >= 1, got {n}")
        import torch
        torch.set_num_threads(n)


def cmd_train(args) -> int:
    r"""``mmdiff train``; under ``torchrun`` (``WORLD_SIZE`` > 1) every rank
    runs it, data-parallel (:mod:`mmdiff.train.distributed`): rank 0 logs
    and writes the run folder, ``--batch-size`` is the global batch."""
    from mmdiff.train.distributed import env_world_size, init_distributed
    _set_threads(args.threads)
    _set_allocator(args)
    if env_world_size() > 1:
        ctx = init_distributed(args.device, timeout=args.dist_timeout)
        try:
            if not ctx.is_main:
                args.quiet, args.progress = True, False
            return _cmd_train(args, ctx.is_main)
        finally:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
    return _cmd_train(args, True)


def _cmd_train(args, main_rank: bool) -> int:
    if args.resume:
        from mmdiff.train.checkpoint import load_checkpoint
        from mmdiff.errors import CheckpointError
        from mmdiff.nn.models import get_model_class
        ckpt = load_checkpoint(args.resume)
        c = ckpt.get('config')
        if not isinstance(c, dict) or 'model' not in c or 'seed' not in c:
            raise CheckpointError(f"{args.resume}: the checkpoint holds no "
                                  f"run configuration; it cannot be resumed "
                                  f"from the command line")
        imports = import_modules(list(c.get('imports') or [])
                                 + list(args.imports))
        if args.model is not None and \
                get_model_class(args.model).name != c['model']:
            raise CheckpointError(f"{args.resume} holds a run of model "
                                  f"{c['model']!r}, not {args.model!r}")
        dataset = args.dataset if args.dataset is not None else c['dataset']
        root = args.root if args.root is not None else c.get('root')
        result, _, _ = train_run(
            c['model'], dataset, root=root,
            modalities=c.get('modalities'), noise=c.get('noise', 0.0),
            seed=c['seed'], device=args.device, cfg=c['hparams'],
            out=args.resume, resume=True, progress=args.progress,
            log=None if args.quiet else print,
            cpu_fallback=args.cpu_fallback, imports=imports or None)
    else:
        imports = import_modules(args.imports)
        cfg = run_config(args)
        result, model, data = train_run(
            args.model or DEFAULT_MODEL, args.dataset or DEFAULT_DATASET,
            root=args.root,
            modalities=args.modalities, noise=args.noise, seed=args.seed,
            device=args.device, cfg=cfg, out=args.out,
            progress=args.progress, log=None if args.quiet else print,
            cpu_fallback=args.cpu_fallback, imports=imports or None)
    if not main_rank:
        return 0
    m = result.metrics_dict()
    print(f"\nbest epoch {result.best_epoch} (validation-selected), "
          f"{result.epochs_run} epochs, "
          f"{result.seconds_per_epoch:.2f} s/epoch")
    print(metrics_table(m))
    if result.best_test_epoch_metrics:
        b = result.best_test_epoch_metrics
        print(f"best-test-epoch protocol (paper, leaks test): epoch "
              f"{result.best_test_epoch}  recall@20 {b.get('recall@20', 0):.4f}"
              f"  ndcg@20 {b.get('ndcg@20', 0):.4f}")
    return 0


def _rebuild(checkpoint: str, root: Optional[str], device: str,
             cpu_fallback: bool = False, imports: Optional[List[str]] = None):
    import torch
    from mmdiff.nn.models import get_model_class
    from mmdiff.train.checkpoint import load_checkpoint
    from mmdiff.train.config import split_config
    from mmdiff.train.seed import resolve_device
    from mmdiff.errors import CheckpointError
    dev = resolve_device(device, fallback=cpu_fallback)
    path = Path(checkpoint)
    if path.is_dir() and (path / 'best_model.pt').exists():
        path = path / 'best_model.pt'
    ckpt = load_checkpoint(path)
    c = ckpt.get('config')
    if not isinstance(c, dict) or 'model' not in c or 'dataset' not in c:
        raise CheckpointError(f"{path}: the checkpoint holds no run "
                              f"configuration (model, dataset); it cannot "
                              f"be rebuilt from the command line")
    import_modules(list(c.get('imports') or []) + list(imports or []))
    if ckpt.get('model_name') not in (None, '') and \
            ckpt['model_name'] != c['model']:
        raise CheckpointError(f"{path}: the weights belong to model "
                              f"{ckpt['model_name']!r} but the run "
                              f"configuration names {c['model']!r}")
    data = load_data(c['dataset'], root or c.get('root'), c.get('modalities'),
                     c.get('noise', 0.0), c.get('seed', 0))
    from mmdiff.data.hetero import num_items, num_users
    if (num_users(data), num_items(data)) != (ckpt['num_users'],
                                              ckpt['num_items']):
        raise CheckpointError(
            f"checkpoint expects {ckpt['num_users']} users x "
            f"{ckpt['num_items']} items, the dataset has {num_users(data)} x "
            f"{num_items(data)}")
    cls = get_model_class(c['model'])
    from mmdiff.errors import ConfigError
    try:
        _, hparams = split_config(c['hparams'], cls)
        if c.get('modalities') and 'modalities' in cls.hparam_names():
            hparams.setdefault('modalities', c['modalities'])
        model = cls.from_data(data, **hparams)
    except ConfigError as e:
        raise CheckpointError(f"{path}: the run configuration no longer "
                              f"builds a {c['model']!r} model: {e}") from None
    try:
        model.load_state_dict(ckpt['model_state'])
    except RuntimeError as e:
        from mmdiff.train.checkpoint import state_dict_mismatch
        raise CheckpointError(f"{path}: checkpoint does not fit model "
                              f"{c['model']!r}: {state_dict_mismatch(e)}") \
            from None
    model.to(dev).eval()
    _attach_id_maps(data, c, root)
    return model, data, dev


def _attach_id_maps(data, c: Dict[str, Any], root: Optional[str]) -> None:
    r"""Gives the data of a named dataset (read from its processed cache,
    which keeps no id maps) the original ids of its folder's MMRec id-map
    files, if it has them."""
    from mmdiff.data.datasets import DATASETS
    from mmdiff.data.hetero import num_items, num_users
    from mmdiff.data.readers import id_maps, read_id_maps, set_id_maps
    if any(m is not None for m in id_maps(data)):
        return
    name, base = str(c.get('dataset', '')).lower(), root or c.get('root')
    if name not in DATASETS or base is None:
        return
    for folder in (Path(base) / name / 'raw', Path(base) / name):
        if folder.is_dir():
            maps = read_id_maps(folder, num_users(data), num_items(data))
            if any(m is not None for m in maps):
                set_id_maps(data, *maps)
                return


def cmd_evaluate(args) -> int:
    from mmdiff.data.hetero import edge_index_of, num_items, num_users
    from mmdiff.metrics import full_ranking_metrics
    import torch
    model, data, dev = _rebuild(args.checkpoint, args.root, args.device,
                                args.cpu_fallback, args.imports)
    with torch.no_grad():
        model.prepare_scoring()
        m = full_ranking_metrics(model.score, edge_index_of(data, args.split),
                                 num_users(data), num_items(data),
                                 train=edge_index_of(data, 'train'),
                                 device=dev)
    print(metrics_table({f'{args.split}/{k}': v for k, v in m.items()}))
    return 0


def cmd_recommend(args) -> int:
    import torch
    from mmdiff.data.hetero import edge_index_of, num_items, num_users
    from mmdiff.data.readers import id_maps
    from mmdiff.errors import DataError
    from mmdiff.metrics import recommend_topk
    model, data, dev = _rebuild(args.checkpoint, args.root, args.device,
                                args.cpu_fallback, args.imports)
    U = num_users(data)
    bad = [u for u in args.users if u < 0 or u >= U]
    if bad:
        raise DataError(f"user id {bad[0]} is out of range for {U} users")
    users = torch.tensor(args.users, dtype=torch.long)
    with torch.no_grad():
        model.prepare_scoring()
        items, scores = recommend_topk(model.score, users, args.k,
                                       num_items(data),
                                       train=edge_index_of(data, 'train'),
                                       num_users=U, device=dev)
    print(format_recommendations(args.users, items.tolist(), scores.tolist(),
                                 *id_maps(data)))
    return 0


def format_recommendations(users, items, scores, user_ids=None,
                           item_ids=None) -> str:
    r"""Per user a line ``user U: i1 i2 ...`` (mmdiff's item indices; the
    user's original id in brackets, ``user U [id]:``, when the data carries
    id maps), then a table of rank, item, original item id (if known) and
    score."""
    blocks = []
    for u, its, sc in zip(users, items, scores):
        who = f"user {u}" + (f" [{user_ids[u]}]" if user_ids is not None
                             and user_ids[u] is not None else '')
        lines = [f"{who}: " + ' '.join(str(i) for i in its)]
        rows = []
        for rank, (i, s) in enumerate(zip(its, sc), 1):
            row = {'rank': rank, 'item': i, 'score': f'{s:.4f}'}
            if item_ids is not None:
                row['original id'] = '' if item_ids[i] is None \
                    else str(item_ids[i])
            rows.append(row)
        cols = ['rank', 'item'] + (['original id'] if item_ids is not None
                                   else []) + ['score']
        lines += ['    ' + ln.rstrip()
                  for ln in format_table(rows, cols).splitlines()]
        blocks.append('\n'.join(lines))
    return '\n'.join(blocks)


def cmd_data(args) -> int:
    from mmdiff.data.hetero import describe
    data = load_data(args.path, args.root)
    print(describe(data))
    return 0


def cmd_demo(args) -> int:
    from mmdiff.nn.models import MODELS, get_model_class
    _set_threads(args.threads)
    _set_allocator(args)
    imports = import_modules(args.imports)
    rows = []
    for name in args.models or list(MODELS):
        get_model_class(name)
        out = str(Path(args.out) / name) if args.out else None
        print(f"training {name} on the synthetic data ...", flush=True)
        result, _, _ = train_run(name, 'synthetic', seed=args.seed,
                                 device=args.device, out=out,
                                 imports=imports or None)
        m = result.metrics_dict()
        row = {'model': name, 'best_epoch': result.best_epoch,
               's/epoch': result.seconds_per_epoch}
        for k in ('recall@10', 'ndcg@10', 'recall@20', 'ndcg@20',
                  'precision@20'):
            row[k] = m.get(f'test/{k}')
        rows.append(row)
    print('\nTest metrics of the validation-selected epoch '
          '(synthetic data, seed %d):' % args.seed)
    print(format_table(rows, ['model', 'recall@10', 'ndcg@10', 'recall@20',
                              'ndcg@20', 'precision@20', 'best_epoch',
                              's/epoch']))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
    warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')
    handlers = {'train': cmd_train, 'evaluate': cmd_evaluate,
                'recommend': cmd_recommend, 'data': cmd_data,
                'demo': cmd_demo}
    try:
        return handlers[args.command](args)
    except MMDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
