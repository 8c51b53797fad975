r"""Readers that turn files or a :class:`pandas.DataFrame` into the canonical
:class:`~torch_geometric.data.HeteroData` of :mod:`mmdiff.data.hetero`.

Two on-disk layouts are understood:

* **DiffMM / MMSSL** (:func:`read_diffmm_folder`): ``trnMat.pkl``,
  ``valMat.pkl`` (optional), ``tstMat.pkl`` — pickled ``[U, I]``
  :class:`scipy.sparse.coo_matrix` objects, read with the restricted
  unpickler of :mod:`mmdiff.data.safe_pickle` — plus any number of
  ``<modality>_feat.npy`` ``[I, dim]`` item feature matrices.
* **MMRec** (:func:`read_mmrec_folder`): one tab-separated ``<name>.inter``
  file with at least the columns ``userID``, ``itemID`` and ``x_label``
  (``0``/``1``/``2`` = train/validation/test), plus ``<modality>_feat.npy``.

:func:`detect_layout` tells them apart and :func:`load_folder` dispatches.
:func:`from_dataframe` builds the data from a table of interactions with
arbitrary ids and splits it per user with :func:`split_per_user` (MMRec's
random protocol, or by time).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor
from torch_geometric.data import HeteroData

from mmdiff.data.hetero import add_modality, make_interaction_data
from mmdiff.data.safe_pickle import safe_load_npy, safe_load_pickle
from mmdiff.errors import ConfigError, DataError, MissingFileError

PathLike = Union[str, os.PathLike]
Modalities = Optional[Union[str, Sequence[str]]]

#: File names of the DiffMM layout, by split.
DIFFMM_FILES: Dict[str, str] = {'train': 'trnMat.pkl', 'val': 'valMat.pkl',
                                'test': 'tstMat.pkl'}
#: Suffix of an item feature file; the modality name is the part before it.
FEATURE_SUFFIX = '_feat.npy'
#: Columns an MMRec ``.inter`` file must have.
MMREC_COLUMNS = ('userID', 'itemID', 'x_label')
#: Users with fewer interactions than this get the fixed 1 validation /
#: 1 test item of MMRec's split instead of the ratio-based counts.
SMALL_USER_THRESHOLD = 10

_EPS = 1e-9


# Folders and feature files ##################################################

def _as_folder(path: PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(f"folder not found: {path}")
    if not path.is_dir():
        raise DataError(f"{path}: expected a folder holding the dataset "
                        f"files, got a file")
    return path


def feature_files(path: PathLike) -> Dict[str, Path]:
    r"""``{modality: file}`` for every ``<modality>_feat.npy`` in the folder
    ``path``, sorted by modality name."""
    folder = _as_folder(path)
    out = {}
    for file in sorted(folder.glob('*' + FEATURE_SUFFIX)):
        out[file.name[:-len(FEATURE_SUFFIX)]] = file
    return out


def _select(available: Dict[str, Path], modalities: Modalities,
            folder: Path) -> Dict[str, Path]:
    if modalities is None:
        return available
    if isinstance(modalities, str):
        modalities = [modalities]
    unknown = [m for m in modalities if m not in available]
    if unknown:
        have = sorted(available) if available else 'none'
        raise DataError(f"{folder}: unknown modality {unknown[0]!r}; "
                        f"available modalities: {have}")
    return {m: available[m] for m in modalities}


def _load_features(files: Dict[str, Path]) -> Dict[str, np.ndarray]:
    return {name: safe_load_npy(file) for name, file in files.items()}


def _build(num_users: int, num_items: int, splits: Dict[str, np.ndarray],
           features: Dict[str, np.ndarray],
           files: Dict[str, Path]) -> HeteroData:
    data = make_interaction_data(num_users, num_items, splits['train'],
                                 splits.get('val'), splits.get('test'))
    for name, feats in features.items():
        try:
            add_modality(data, name, feats)
        except DataError as e:
            where = files.get(name)
            raise DataError(f"{where}: {e}" if where else str(e)) from e
    return data


# DiffMM layout ##############################################################

def _load_sparse(path: Path) -> Tuple[Tuple[int, int], np.ndarray]:
    import scipy.sparse
    matrix = safe_load_pickle(path)
    if not scipy.sparse.issparse(matrix):
        raise DataError(f"{path}: expected a pickled scipy sparse matrix, "
                        f"got {type(matrix).__name__}")
    try:
        coo = matrix.tocoo()
        shape = tuple(int(s) for s in coo.shape)
        row = np.asarray(coo.row, dtype=np.int64)
        col = np.asarray(coo.col, dtype=np.int64)
        values = np.asarray(coo.data)
    except Exception as e:
        raise DataError(f"{path}: corrupt sparse matrix "
                        f"({type(e).__name__}: {e})") from e
    if len(shape) != 2 or not (row.shape == col.shape == values.shape):
        raise DataError(f"{path}: corrupt sparse matrix (shape {shape}, "
                        f"{row.size} rows / {col.size} columns / "
                        f"{values.size} values)")
    if values.dtype.kind not in 'biuf':
        raise DataError(f"{path}: interaction values must be numeric, got "
                        f"dtype {values.dtype}")
    if not np.isfinite(values).all():
        raise DataError(f"{path}: {int((~np.isfinite(values)).sum())} "
                        f"interaction values are NaN or Inf")
    keep = values != 0  # binarise: every stored non-zero is one interaction
    return shape, np.stack([row[keep], col[keep]])


def read_diffmm_folder(path: PathLike,
                       modalities: Modalities = None) -> HeteroData:
    r"""Reads a DiffMM/MMSSL dataset folder.

    Args:
        path (str or Path): Folder with ``trnMat.pkl`` and ``tstMat.pkl``
            (required), ``valMat.pkl`` (optional, empty validation split if
            absent) and any ``<modality>_feat.npy`` files.  The matrices are
            ``[U, I]``; every stored non-zero is an interaction.  Row ``i`` of
            a feature matrix belongs to item (column) ``i``; ``float16``
            features are returned as ``float32``.
        modalities (str or list of str, optional): Load only these
            modalities, in this order.  (default: all, sorted by name)

    Raises:
        MissingFileError: the folder, ``trnMat.pkl`` or ``tstMat.pkl`` is
            missing.
        UnsafeFileError: a pickle references anything but a sparse matrix.
        DataError: the split shapes disagree, a file is corrupt, or a
            feature matrix is not ``[I, dim]`` finite floating point.
    """
    folder = _as_folder(path)
    files = {split: folder / name for split, name in DIFFMM_FILES.items()}
    missing = [files[s].name for s in ('train', 'test')
               if not files[s].exists()]
    if missing:
        raise MissingFileError(
            f"{folder}: missing {', '.join(missing)} (a DiffMM dataset folder "
            f"needs {DIFFMM_FILES['train']} and {DIFFMM_FILES['test']}, "
            f"optionally {DIFFMM_FILES['val']} and <modality>{FEATURE_SUFFIX} "
            f"files)")
    if not files['val'].exists():
        del files['val']

    shapes, splits = {}, {}
    for split, file in files.items():
        shapes[split], splits[split] = _load_sparse(file)
    for split in shapes:
        if shapes[split] != shapes['train']:
            raise DataError(
                f"split shapes disagree: {files['train']} is "
                f"{shapes['train'][0]}x{shapes['train'][1]} but {files[split]}"
                f" is {shapes[split][0]}x{shapes[split][1]} (users x items)")
    num_users, num_items = shapes['train']

    feat_files = _select(feature_files(folder), modalities, folder)
    return _build(num_users, num_items, splits, _load_features(feat_files),
                  feat_files)


# MMRec layout ###############################################################

def _find_inter(folder: Path, name: Optional[str]) -> Path:
    if name is not None:
        file = folder / (name if name.endswith('.inter') else f'{name}.inter')
        if not file.exists():
            raise MissingFileError(f"{folder}: missing {file.name}")
        return file
    candidates = sorted(folder.glob('*.inter'))
    if not candidates:
        raise MissingFileError(f"{folder}: no <name>.inter file (the MMRec "
                               f"layout needs one, with columns "
                               f"{', '.join(MMREC_COLUMNS)})")
    if len(candidates) > 1:
        raise DataError(f"{folder}: several .inter files "
                        f"({', '.join(c.name for c in candidates)}); pass "
                        f"name= to choose one")
    return candidates[0]


def _integer_column(values: np.ndarray, what: str, file: Path) -> np.ndarray:
    if values.dtype.kind == 'f':
        if np.isnan(values).any():
            raise DataError(f"{file}: column {what} has "
                            f"{int(np.isnan(values).sum())} missing values")
        if not np.all(values == np.round(values)):
            raise DataError(f"{file}: column {what} must hold integers")
    elif values.dtype.kind not in 'iu':
        raise DataError(f"{file}: column {what} must hold integers, got "
                        f"dtype {values.dtype}")
    values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise DataError(f"{file}: column {what} has a negative id "
                        f"{int(values.min())}")
    return values


def read_mmrec_folder(path: PathLike, name: Optional[str] = None,
                      modalities: Modalities = None) -> HeteroData:
    r"""Reads an MMRec dataset folder.

    Args:
        path (str or Path): Folder with ``<name>.inter`` (tab-separated, a
            header with at least ``userID``, ``itemID`` and ``x_label``; the
            label ``0``/``1``/``2`` puts a row in train/validation/test) and
            any ``<modality>_feat.npy`` files (row ``i`` = item ``i``).
        name (str, optional): Dataset name, i.e. the ``.inter`` file's stem.
            Needed only if the folder holds several ``.inter`` files.
        modalities (str or list of str, optional): Modalities to load.

    The number of users is the largest ``userID`` + 1; the number of items is
    the largest ``itemID`` + 1, or the feature row count if that is larger
    (items nobody interacted with).  Feature files with fewer rows than the
    largest ``itemID`` + 1 raise :class:`~mmdiff.errors.DataError`.
    """
    import pandas as pd

    folder = _as_folder(path)
    inter = _find_inter(folder, name)
    try:
        df = pd.read_csv(inter, sep='\t')
    except Exception as e:
        raise DataError(f"{inter}: cannot parse as a tab-separated table "
                        f"({type(e).__name__}: {e})") from e
    absent = [c for c in MMREC_COLUMNS if c not in df.columns]
    if absent:
        raise DataError(f"{inter}: missing column(s) {absent}; found "
                        f"{list(df.columns)} (columns must be tab-separated)")
    users = _integer_column(df['userID'].to_numpy(), 'userID', inter)
    items = _integer_column(df['itemID'].to_numpy(), 'itemID', inter)
    labels = _integer_column(df['x_label'].to_numpy(), 'x_label', inter)
    bad = ~np.isin(labels, (0, 1, 2))
    if bad.any():
        raise DataError(f"{inter}: x_label must be 0 (train), 1 (validation) "
                        f"or 2 (test); found {sorted(set(labels[bad]))[:5]}")
    if users.size == 0:
        raise DataError(f"{inter}: no interactions")

    feat_files = _select(feature_files(folder), modalities, folder)
    features = _load_features(feat_files)
    num_users = int(users.max()) + 1
    num_items = int(items.max()) + 1
    for m, feats in features.items():
        rows = int(feats.shape[0]) if feats.ndim >= 1 else 0
        if rows < num_items:
            raise DataError(f"{feat_files[m]}: {rows} feature rows but "
                            f"{inter.name} has item ids up to {num_items - 1}"
                            f" ({num_items} items)")
    if features:
        num_items = max(int(f.shape[0]) for f in features.values())
    splits = {split: np.stack([users[labels == k], items[labels == k]])
              for k, split in enumerate(('train', 'val', 'test'))}
    return _build(num_users, num_items, splits, features, feat_files)


# Layout detection ###########################################################

def detect_layout(path: PathLike) -> str:
    r"""Returns ``'diffmm'`` if the folder holds any of ``trnMat.pkl``,
    ``valMat.pkl``, ``tstMat.pkl``, else ``'mmrec'`` if it holds a
    ``.inter`` file; raises :class:`~mmdiff.errors.MissingFileError`
    naming the expected files otherwise."""
    folder = _as_folder(path)
    if any((folder / f).exists() for f in DIFFMM_FILES.values()):
        return 'diffmm'
    if any(folder.glob('*.inter')):
        return 'mmrec'
    raise MissingFileError(
        f"{folder}: no dataset found; expected either the DiffMM layout "
        f"({DIFFMM_FILES['train']}, {DIFFMM_FILES['test']}, optionally "
        f"{DIFFMM_FILES['val']} and <modality>{FEATURE_SUFFIX}) or the MMRec "
        f"layout (<name>.inter with columns {', '.join(MMREC_COLUMNS)}, "
        f"optionally <modality>{FEATURE_SUFFIX})")


def load_folder(path: PathLike, modalities: Modalities = None) -> HeteroData:
    r"""Reads a dataset folder in either layout (see :func:`detect_layout`),
    with the original ids of its MMRec id maps (``read_id_maps``) if it
    has them."""
    from mmdiff.data.hetero import num_items, num_users
    if detect_layout(path) == 'diffmm':
        data = read_diffmm_folder(path, modalities=modalities)
    else:
        data = read_mmrec_folder(path, modalities=modalities)
    return set_id_maps(data, *read_id_maps(path, num_users(data),
                                           num_items(data)))


# Splitting ##################################################################

def _check_ratios(val_ratio: float, test_ratio: float) -> None:
    for what, r in (('val_ratio', val_ratio), ('test_ratio', test_ratio)):
        if not (isinstance(r, (int, float)) and 0.0 <= r < 1.0):
            raise ConfigError(f"{what} must be in [0, 1), got {r!r}")
    if val_ratio + test_ratio >= 1.0:
        raise ConfigError(f"val_ratio + test_ratio must be < 1, got "
                          f"{val_ratio} + {test_ratio}")


def split_per_user(
    users: np.ndarray,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    *,
    seed: int = 0,
    times: Optional[np.ndarray] = None,
) -> np.ndarray:
    r"""Assigns each interaction to train (``0``), validation (``1``) or test
    (``2``), per user, generalising MMRec's protocol.

    A user with :math:`n` interactions gets

    * if :math:`n < 10`: one test interaction (if :math:`n \ge 2` and
      ``test_ratio > 0``), one validation interaction (if at least two remain
      and ``val_ratio > 0``), the rest for training — so :math:`n = 1` is
      train only, :math:`n = 2` is 1 train + 1 test, :math:`n \ge 3` is
      :math:`n - 2` / 1 / 1;
    * otherwise :math:`h = \lfloor (r_v + r_t) n \rfloor` held out (at most
      :math:`n - 1`), of which :math:`\lfloor h\, r_v / (r_v + r_t) \rfloor`
      validation and the rest test; with the defaults that is MMRec's
      :math:`\lfloor 0.2 n \rfloor` split half/half.

    Every user keeps at least one training interaction.  Which interactions
    are held out is uniformly random (seeded) when ``times`` is
    :obj:`None`; otherwise the latest go to test and the next latest to
    validation (ties broken by input order).

    Args:
        users (ndarray): ``[E]`` user id of each interaction (any hashable,
            sortable values).
        val_ratio (float): Validation share :math:`r_v`. (default: ``0.1``)
        test_ratio (float): Test share :math:`r_t`. (default: ``0.1``)
        seed (int): Seed of the random split. (default: ``0``)
        times (ndarray, optional): ``[E]`` sortable timestamps for a
            temporal split.

    Returns:
        ``[E]`` ``int8`` array of split labels.
    """
    _check_ratios(val_ratio, test_ratio)
    users = np.asarray(users)
    num = users.shape[0]
    if users.ndim != 1:
        raise DataError(f"users must be 1-D, got shape {users.shape}")
    if num == 0:
        return np.zeros(0, dtype=np.int8)
    _, codes, counts = np.unique(users, return_inverse=True,
                                 return_counts=True)
    codes = codes.reshape(-1)

    if times is None:
        key = np.random.default_rng(seed).permutation(num)
    else:
        times = np.asarray(times)
        if times.shape != (num,):
            raise DataError(f"times must have shape ({num},), got "
                            f"{times.shape}")
        if times.dtype.kind in 'fcmM' and np.isnan(times).any():
            raise DataError(f"{int(np.isnan(times).sum())} timestamps are "
                            f"missing (NaN/NaT)")
        order = np.argsort(times, kind='stable')
        ascending = np.empty(num, dtype=np.int64)
        ascending[order] = np.arange(num)
        key = num - 1 - ascending  # latest first; ties: earlier row first
    perm = np.lexsort((key, codes))  # grouped by user, then by key
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(num, dtype=np.int64)
    rank[perm] = np.arange(num) - starts[codes[perm]]

    n = counts
    total = val_ratio + test_ratio
    held = np.minimum(np.floor(total * n + _EPS).astype(np.int64), n - 1)
    n_val = (np.floor(held * (val_ratio / total) + _EPS).astype(np.int64)
             if total > 0 else np.zeros_like(n))
    n_test = held - n_val
    small = n < SMALL_USER_THRESHOLD
    small_test = ((n >= 2) & (test_ratio > 0)).astype(np.int64)
    small_val = ((n - small_test >= 2) & (val_ratio > 0)).astype(np.int64)
    n_test = np.where(small, small_test, n_test)
    n_val = np.where(small, small_val, n_val)

    r, t, v = rank, n_test[codes], n_val[codes]
    labels = np.zeros(num, dtype=np.int8)
    labels[r < t + v] = 1
    labels[r < t] = 2
    return labels


# DataFrames #################################################################

def _factorize(values: np.ndarray, what: str) -> Tuple[np.ndarray,
                                                       np.ndarray]:
    try:
        uniques, codes = np.unique(values, return_inverse=True)
    except TypeError as e:
        raise DataError(f"{what} ids must be mutually comparable (e.g. all "
                        f"strings or all integers): {e}") from e
    return codes.reshape(-1).astype(np.int64), uniques


def _as_table(name: str, value: object) -> object:
    r"""A keyed feature table as a :class:`pandas.DataFrame` (a mapping or
    a Series becomes one); arrays and tensors are returned as arrays."""
    import pandas as pd

    if isinstance(value, Mapping):
        try:
            value = pd.DataFrame.from_dict(dict(value), orient='index')
        except Exception as e:
            raise DataError(f"modality '{name}': cannot build a feature table "
                            f"from the mapping ({e})") from e
    if isinstance(value, pd.Series):
        value = value.to_frame()
    if isinstance(value, pd.DataFrame):
        if not value.index.is_unique:
            raise DataError(f"modality '{name}': the feature table has "
                            f"duplicate item ids in its index")
        if value.index.hasnans:
            raise DataError(f"modality '{name}': the feature table has a "
                            f"missing (NaN/None) item id in its index")
        return value
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise DataError(f"modality '{name}': expected a DataFrame or mapping "
                    f"keyed by item id, or an array aligned to the sorted "
                    f"item ids, got {type(value).__name__}")


def _feature_matrix(name: str, value: object, item_ids: np.ndarray,
                    cold: int = 0) -> np.ndarray:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        found = pd.Index(item_ids).isin(value.index)
        if not found.all():
            miss = item_ids[~found]
            raise DataError(f"modality '{name}': {miss.size} item(s) that "
                            f"have interactions"
                            + (" or features of another modality" if cold
                               else "")
                            + f" have no feature row, e.g. "
                            f"{list(miss[:5])}")
        frame = value.loc[item_ids]
        if not all(np.issubdtype(t, np.number) for t in frame.dtypes):
            kinds = sorted(set(map(str, frame.dtypes)))
            raise DataError(f"modality '{name}': feature columns must be "
                            f"numeric, got dtypes {kinds}")
        return np.array(frame.to_numpy())  # writable copy
    if value.ndim >= 1 and value.shape[0] != item_ids.size:
        where = (f"{item_ids.size} items ({item_ids.size - cold} with "
                 f"interactions and {cold} cold items that only have "
                 f"features in a keyed table)" if cold else
                 f"{item_ids.size} distinct items in the interactions")
        raise DataError(f"modality '{name}': {value.shape[0]} feature rows"
                        f" but {where} (an array must have one row per "
                        f"item, in sorted item-id order)")
    return value if value.flags.writeable else np.array(value)


def _item_universe(items: np.ndarray, tables: Mapping[str, object],
                   cold_items: bool) -> Tuple[np.ndarray, np.ndarray, int]:
    r"""``(codes, item_ids, num_cold)``: the item ids of the interactions,
    plus (with ``cold_items``) those of every keyed feature table, sorted;
    ``codes`` maps each interaction to its item's index."""
    import pandas as pd

    codes, item_ids = _factorize(items, 'item')
    if not cold_items:
        return codes, item_ids, 0
    extra = [t.index.to_numpy() for t in tables.values()
             if isinstance(t, pd.DataFrame)]
    if not extra:
        return codes, item_ids, 0
    known = pd.Index(item_ids)
    new = [e[~pd.Index(e).isin(known)] for e in extra]
    new = [e for e in new if e.size]
    if not new:
        return codes, item_ids, 0
    try:
        universe = np.unique(np.concatenate([item_ids] + new))
    except TypeError as e:
        raise DataError(f"item ids of the feature tables and of the "
                        f"interactions must be mutually comparable (e.g. "
                        f"all strings or all integers): {e}") from e
    pos = np.searchsorted(universe, item_ids)
    return pos[codes], universe, int(universe.size - item_ids.size)


#: Name of the MMRec id-map files, ``<kind>`` is ``u`` or ``i``:
#: tab-separated, a header, the original id in one column and the index
#: (``userID`` / ``itemID``) in the other.
ID_MAP_FILES = {'user': 'u_id_mapping.csv', 'item': 'i_id_mapping.csv'}
_ID_COLUMNS = {'user': 'userID', 'item': 'itemID'}


def set_id_maps(data: HeteroData, user_ids: Optional[Sequence] = None,
                item_ids: Optional[Sequence] = None) -> HeteroData:
    r"""Stores the original ids: ``data['user'].ids[u]`` is the original id
    of user ``u`` (a 1-D NumPy array), likewise ``data['item'].ids``.
    Entries may be :obj:`None` (no original id known)."""
    from mmdiff.data.hetero import num_items, num_users
    for kind, ids, n in (('user', user_ids, num_users(data)),
                         ('item', item_ids, num_items(data))):
        if ids is None:
            continue
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise DataError(f"{kind} id map: {ids.shape[0] if ids.ndim else 0}"
                            f" ids for {n} {kind}s")
        data[kind].ids = ids
    return data


def id_maps(data: HeteroData) -> Tuple[Optional[np.ndarray],
                                       Optional[np.ndarray]]:
    r"""``(user_ids, item_ids)``: the original ids the data carries
    (:func:`from_dataframe`, or the MMRec id-map files of a folder), or
    :obj:`None` for each kind without a map."""
    out = []
    for kind in ('user', 'item'):
        ids = getattr(data[kind], 'ids', None) if 'ids' in data[kind] \
            else None
        out.append(ids if isinstance(ids, np.ndarray) else None)
    return out[0], out[1]


def read_id_maps(path: PathLike, num_users: Optional[int] = None,
                 num_items: Optional[int] = None
                 ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    r"""Reads the MMRec id maps ``u_id_mapping.csv`` / ``i_id_mapping.csv``
    of a folder (tab-separated; columns ``userID`` / ``itemID`` plus the
    original id, e.g. ``user_id`` / ``asin``), as ``(user_ids, item_ids)``
    arrays of strings indexed by mmdiff's ids (:obj:`None` where a file is
    absent; ids a map does not name are :obj:`None`).  Ids out of
    ``[0, num)`` or repeated raise :class:`~mmdiff.errors.DataError`."""
    import pandas as pd

    folder = _as_folder(path)
    out = []
    for kind, n in (('user', num_users), ('item', num_items)):
        file = folder / ID_MAP_FILES[kind]
        if not file.is_file():
            out.append(None)
            continue
        col = _ID_COLUMNS[kind]
        try:
            table = pd.read_csv(file, sep='\t', dtype=str,
                                keep_default_na=False)
        except Exception as e:
            raise DataError(f"{file}: cannot parse as a tab-separated table "
                            f"({type(e).__name__}: {e})") from e
        others = [c for c in table.columns if c != col]
        if col not in table.columns or len(others) != 1:
            raise DataError(f"{file}: expected two tab-separated columns, "
                            f"{col!r} and the original id; found "
                            f"{list(table.columns)}")
        index = _integer_column(pd.to_numeric(table[col], errors='coerce')
                                .to_numpy(), col, file)
        size = n if n is not None else (int(index.max()) + 1
                                        if index.size else 0)
        if index.size and (index.min() < 0 or index.max() >= size):
            raise DataError(f"{file}: {col} must be in [0, {size - 1}], "
                            f"found {int(index.min())}..{int(index.max())}")
        if np.unique(index).size != index.size:
            raise DataError(f"{file}: repeated {col} values")
        ids = np.full(size, None, dtype=object)
        ids[index] = table[others[0]].to_numpy()
        out.append(ids)
    return out[0], out[1]


def write_folder(data: HeteroData, path: PathLike, name: str = 'data'
                 ) -> Path:
    r"""Writes ``data`` as an MMRec-layout folder that :func:`load_folder`
    and ``mmdiff train --dataset PATH`` read back unchanged:
    ``<name>.inter`` (``userID``, ``itemID``, ``x_label``), one
    ``<modality>_feat.npy`` per modality (``float32``, so items without
    interactions keep their features), and, if the data carries original
    ids (``id_maps``), ``u_id_mapping.csv`` / ``i_id_mapping.csv``.
    Returns the folder."""
    import pandas as pd
    from mmdiff.data.hetero import edge_index_of, get_modalities, num_items
    from mmdiff.data.hetero import num_users as _num_users

    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for label, split in enumerate(('train', 'val', 'test')):
        e = edge_index_of(data, split).cpu().numpy()
        frames.append(pd.DataFrame({'userID': e[0], 'itemID': e[1],
                                    'x_label': label}))
    inter = pd.concat(frames, ignore_index=True)
    mods = get_modalities(data)
    U, I = _num_users(data), num_items(data)
    users_seen = int(inter['userID'].max()) + 1 if len(inter) else 0
    items_seen = int(inter['itemID'].max()) + 1 if len(inter) else 0
    if users_seen < U or (items_seen < I and not mods):
        raise DataError(f"cannot write {folder}: the MMRec layout infers the "
                        f"number of users (items) from the largest id, but "
                        f"the last {U - users_seen} user(s) / "
                        f"{I - items_seen} item(s) have no interactions"
                        + ('' if mods else ' and there are no features'))
    inter.to_csv(folder / f'{name}.inter', sep='\t', index=False)
    for m, x in mods.items():
        np.save(folder / f'{m}{FEATURE_SUFFIX}', x.cpu().numpy())
    for kind, ids in zip(('user', 'item'), id_maps(data)):
        if ids is not None:
            pd.DataFrame({f'{kind}_id': ids,
                          _ID_COLUMNS[kind]: np.arange(ids.size)}).to_csv(
                folder / ID_MAP_FILES[kind], sep='\t', index=False)
    return folder


def from_dataframe(
    df,
    features: Optional[Mapping[str, object]] = None,
    *,
    user_col: str = 'user',
    item_col: str = 'item',
    time_col: Optional[str] = None,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    split: str = 'random',
    return_mappings: bool = False,
    cold_items: bool = True,
) -> Union[HeteroData, Tuple[HeteroData, np.ndarray, np.ndarray]]:
    r"""Builds the canonical data from a table of interactions.

    User and item ids may be anything sortable (integers, strings); they are
    remapped to ``0..U-1`` and ``0..I-1`` in sorted order of the distinct ids
    that occur in ``df`` (and, with ``cold_items``, in the index of a keyed
    feature table).  The original ids are kept on the data
    (``data['user'].ids``, ``data['item'].ids``; ``id_maps``), so
    ``write_folder`` and ``mmdiff recommend`` can show them.  Repeated
    (user, item) pairs are kept once (the earliest if ``time_col`` is
    given) with a warning.  The interactions are
    split per user by :func:`split_per_user`: at random (``split='random'``,
    MMRec's protocol) or by time (``split='time'``, needs ``time_col``; the
    latest interactions go to test).

    Args:
        df (pandas.DataFrame): One row per interaction.
        features (dict, optional): ``{modality: table}`` where ``table`` is a
            :class:`pandas.DataFrame` (or a ``{item_id: vector}`` mapping)
            indexed by the **original** item ids — an interacting item
            without a row raises; rows of items without interactions are
            kept as cold-start items (see ``cold_items``) — or an array /
            tensor of shape ``[I, dim]`` whose row ``i`` belongs to the
            ``i``-th smallest distinct item id.
        user_col (str): Column of user ids. (default: ``'user'``)
        item_col (str): Column of item ids. (default: ``'item'``)
        time_col (str, optional): Column of timestamps.
        val_ratio (float): Validation share. (default: ``0.1``)
        test_ratio (float): Test share. (default: ``0.1``)
        seed (int): Seed of the random split. (default: ``0``)
        split (str): ``'random'`` or ``'time'``. (default: ``'random'``)
        return_mappings (bool): Also return the original ids: ``(data,
            user_ids, item_ids)`` with ``user_ids[u]`` the original id of
            user ``u``. (default: :obj:`False`)
        cold_items (bool): Keep the items that have a row in a keyed
            feature table but no interaction: they get their features and
            no edges, so a model that reads features can score (and
            recommend) them.  With :obj:`False` those rows are ignored.
            Every keyed table must then have a row for every item.
            (default: :obj:`True`)
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got "
                        f"{type(df).__name__}")
    if split not in ('random', 'time'):
        raise ConfigError(f"split must be 'random' or 'time', got {split!r}")
    if split == 'time' and time_col is None:
        raise ConfigError("split='time' needs time_col=")
    needed = [user_col, item_col] + ([time_col] if time_col else [])
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise DataError(f"DataFrame has no column(s) {absent}; columns are "
                        f"{list(df.columns)}")
    _check_ratios(val_ratio, test_ratio)
    table = df[needed]
    nulls = int(table[[user_col, item_col]].isna().any(axis=1).sum())
    if nulls:
        raise DataError(f"{nulls} row(s) have a missing user or item id")
    if len(table) == 0:
        raise DataError("the DataFrame has no interactions")
    if time_col is not None:
        table = table.sort_values(time_col, kind='stable')
    dup = table.duplicated(subset=[user_col, item_col], keep='first')
    if dup.any():
        warnings.warn(f"removed {int(dup.sum())} duplicate (user, item) "
                      f"interactions", UserWarning, stacklevel=2)
        table = table[~dup.to_numpy()]

    users, user_ids = _factorize(table[user_col].to_numpy(), 'user')
    tables = {name: _as_table(name, value)
              for name, value in (features or {}).items()}
    items, item_ids, cold = _item_universe(table[item_col].to_numpy(),
                                           tables, cold_items)
    times = table[time_col].to_numpy() if split == 'time' else None
    labels = split_per_user(users, val_ratio, test_ratio, seed=seed,
                            times=times)
    splits = {s: np.stack([users[labels == k], items[labels == k]])
              for k, s in enumerate(('train', 'val', 'test'))}
    feats = {name: _feature_matrix(name, value, item_ids, cold)
             for name, value in tables.items()}
    data = _build(user_ids.size, item_ids.size, splits, feats, {})
    set_id_maps(data, user_ids, item_ids)
    if return_mappings:
        return data, user_ids, item_ids
    return data


__all__: List[str] = [
    'DIFFMM_FILES', 'FEATURE_SUFFIX', 'MMREC_COLUMNS', 'feature_files',
    'read_diffmm_folder', 'read_mmrec_folder', 'detect_layout', 'load_folder',
    'split_per_user', 'from_dataframe', 'ID_MAP_FILES', 'id_maps',
    'set_id_maps', 'read_id_maps', 'write_folder',
]
