r"""PyG-style dataset classes for the benchmark datasets.

``TikTok(root)``, ``AmazonBaby(root)`` and ``AmazonSports(root)`` read the
raw files from ``root`` or ``root/raw`` (DiffMM or MMRec layout, see
:mod:`mmdiff.data.readers`) and keep a processed copy, ``processed/data.pt``,
so later loads skip the unpickling:

* under ``<cache_dir>/<name>-<hash of root>/processed`` if ``cache_dir=``
  is given, else if the environment variable ``MMDIFF_CACHE_DIR`` is set (it
  is the default ``cache_dir``); then nothing is ever written under ``root``,
* else under ``root/processed`` if ``root`` is writable (a folder without
  write permission bits counts as read-only even for the super-user),
* else under ``<cache>/mmdiff/<name>-<hash of root>/processed`` with
  ``<cache>`` = ``$XDG_CACHE_HOME`` or ``~/.cache``.

The cache holds only tensors, ints, strings and dicts (saved with
:func:`torch.save`, read with ``torch.load(weights_only=True)``) and is
rebuilt whenever the size or modification time of a raw file changes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch_geometric.data import HeteroData

from mmdiff.data.hetero import EDGE_TYPE, SPLITS, edge_index_of, \
    get_modalities, make_interaction_data, num_items, num_users
from mmdiff.data.readers import DIFFMM_FILES, FEATURE_SUFFIX, \
    MMREC_COLUMNS, detect_layout, load_folder
from mmdiff.errors import ConfigError, DataError, MissingFileError

PathLike = Union[str, os.PathLike]
Modalities = Optional[Union[str, Sequence[str]]]

#: Bumped whenever the layout of ``processed/data.pt`` changes.
CACHE_VERSION = 1


#: Environment variable naming the default ``cache_dir`` of the dataset
#: classes (set it to keep shared or read-only data folders untouched).
CACHE_DIR_ENV = 'MMDIFF_CACHE_DIR'


def env_cache_dir() -> Optional[Path]:
    r"""``$MMDIFF_CACHE_DIR`` as a path, or :obj:`None` if unset or empty."""
    value = os.environ.get(CACHE_DIR_ENV, '').strip()
    return Path(value).expanduser() if value else None


def user_cache_dir() -> Path:
    r"""``$XDG_CACHE_HOME/mmdiff`` or ``~/.cache/mmdiff``."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache')
    return Path(base).expanduser() / 'mmdiff'


def _is_writable(folder: Path) -> bool:
    r"""Whether ``folder`` is writable *and* not marked read-only: the
    super-user may write anywhere, but a folder without any write permission
    bit is treated as read-only for everyone.

    Deliberately no write probe (creating a file to see whether it works):
    a probe is itself a write into a folder that may be shared, and
    ``os.access`` already reports read-only file systems.  To keep a folder
    untouched whatever its permission bits say, pass ``cache_dir=`` or set
    ``MMDIFF_CACHE_DIR``."""
    if not os.access(folder, os.W_OK):
        return False
    if hasattr(os, 'geteuid') and os.geteuid() == 0:
        return bool(folder.stat().st_mode & 0o222)
    return True


def _has_dataset(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    try:
        detect_layout(folder)
    except MissingFileError:
        return False
    return True


def _raw_files(folder: Path) -> List[Path]:
    files = [folder / f for f in DIFFMM_FILES.values()]
    files += sorted(folder.glob('*.inter'))
    files += sorted(folder.glob('*' + FEATURE_SUFFIX))
    return [f for f in files if f.is_file()]


def _select(data: HeteroData, modalities: Modalities) -> HeteroData:
    if modalities is None:
        return data
    names = [modalities] if isinstance(modalities, str) else list(modalities)
    keep = get_modalities(data, names)  # raises on unknown names
    for name in list(get_modalities(data)):
        if name not in keep:
            del data['item'][name]
    return data


class InteractionDataset:
    r"""Base class of the benchmark datasets: one interaction graph (a
    :class:`~torch_geometric.data.HeteroData`, see
    :mod:`mmdiff.data.hetero`) read from ``root`` and cached.

    Args:
        root (str or Path): Folder holding the raw files, directly or in a
            ``raw/`` sub-folder.  It may be read-only.
        modalities (str or list of str, optional): Keep only these item
            modalities. (default: all)
        cache_dir (str or Path, optional): Put the processed cache under
            this folder instead of ``root/processed``; nothing is then
            written under ``root``.  (default: the environment variable
            ``MMDIFF_CACHE_DIR`` if set, else ``root/processed`` if
            writable, else ``user_cache_dir()``)
        force_reload (bool): Re-read the raw files even if a valid cache
            exists. (default: :obj:`False`)
    """
    #: Short name, used for the cache folder.
    name: str = 'dataset'
    #: Where the raw files can be obtained (shown when they are missing).
    source: str = ''

    def __init__(self, root: PathLike, modalities: Modalities = None, *,
                 cache_dir: Optional[PathLike] = None,
                 force_reload: bool = False) -> None:
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"{self.root}: expected a dataset folder, got a "
                            f"file")
        self._cache_dir = (cache_dir if cache_dir is not None
                           else env_cache_dir())
        self.raw_dir = self._find_raw_dir()
        self.processed_dir = self._find_processed_dir()
        self.data = _select(self._load(force_reload), modalities)

    # Folders ################################################################

    def _find_raw_dir(self) -> Path:
        for folder in (self.root / 'raw', self.root):
            if _has_dataset(folder):
                return folder
        where = f" Obtain them from {self.source}." if self.source else ''
        raise MissingFileError(
            f"{type(self).__name__}: no raw files in {self.root} or "
            f"{self.root / 'raw'}; expected {DIFFMM_FILES['train']}, "
            f"{DIFFMM_FILES['val']}, {DIFFMM_FILES['test']} and "
            f"<modality>{FEATURE_SUFFIX} files (DiffMM layout) or "
            f"<name>.inter with columns {', '.join(MMREC_COLUMNS)} (MMRec "
            f"layout).{where}")

    def _find_processed_dir(self) -> Path:
        local = self.root / 'processed'
        if self._cache_dir is None and _is_writable(self.root):
            try:
                local.mkdir(exist_ok=True)
                if _is_writable(local):
                    return local
            except OSError:
                pass
        base = (Path(self._cache_dir).expanduser() if self._cache_dir
                is not None else user_cache_dir())
        digest = hashlib.sha256(str(self.root).encode('utf-8')).hexdigest()
        folder = base / f"{self.name}-{digest[:16]}" / 'processed'
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MissingFileError(f"cannot create the cache folder {folder} "
                                   f"({e}); pass cache_dir= or set "
                                   f"{CACHE_DIR_ENV}") from e
        return folder

    @property
    def raw_paths(self) -> List[str]:
        r"""The raw files read (and fingerprinted for the cache)."""
        return [str(f) for f in _raw_files(self.raw_dir)]

    @property
    def processed_paths(self) -> List[str]:
        return [str(self.processed_dir / 'data.pt')]

    # Cache ##################################################################

    def _fingerprint(self) -> List[List[Any]]:
        out = []
        for f in _raw_files(self.raw_dir):
            st = f.stat()
            out.append([f.name, int(st.st_size), int(st.st_mtime_ns)])
        return out

    def _load(self, force_reload: bool) -> HeteroData:
        path = Path(self.processed_paths[0])
        fingerprint = self._fingerprint()
        if path.exists() and not force_reload:
            try:
                blob = torch.load(path, weights_only=True)
            except Exception:  # corrupt or foreign cache: rebuild it
                blob = None
            if (isinstance(blob, dict)
                    and blob.get('version') == CACHE_VERSION
                    and blob.get('raw_dir') == str(self.raw_dir)
                    and blob.get('fingerprint') == fingerprint):
                return self._from_blob(blob)
        data = self.process()
        self._save(data, path, fingerprint)
        return data

    def process(self) -> HeteroData:
        r"""Reads the raw files (all modalities)."""
        return load_folder(self.raw_dir)

    def _save(self, data: HeteroData, path: Path,
              fingerprint: List[List[Any]]) -> None:
        blob: Dict[str, Any] = {
            'version': CACHE_VERSION,
            'raw_dir': str(self.raw_dir),
            'fingerprint': fingerprint,
            'num_users': num_users(data),
            'num_items': num_items(data),
            'edges': {s: edge_index_of(data, s).clone() for s in SPLITS},
            'modalities': {m: x.clone()
                           for m, x in get_modalities(data).items()},
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(blob, tmp)
            os.replace(tmp, path)
        except OSError:  # a cache we cannot write is not an error
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _from_blob(blob: Dict[str, Any]) -> HeteroData:
        edges = blob['edges']
        data = make_interaction_data(blob['num_users'], blob['num_items'],
                                     edges['train'], edges['val'],
                                     edges['test'])
        for m, x in blob['modalities'].items():
            data['item'][m] = x
        return data

    # Dataset protocol #######################################################

    def __len__(self) -> int:
        return 1

    def __getitem__(self, idx: int) -> HeteroData:
        if idx not in (0, -1):
            raise IndexError(f"{type(self).__name__} holds one graph; index "
                             f"{idx} is out of range")
        return self.data

    def __repr__(self) -> str:
        store = self.data[EDGE_TYPE]
        mods = ', '.join(f"{m}={x.size(1)}" for m, x in
                         get_modalities(self.data).items()) or 'none'
        return (f"{type(self).__name__}(users={num_users(self.data)}, "
                f"items={num_items(self.data)}, "
                f"train={store.edge_index.size(1)}, modalities: {mods})")


class TikTok(InteractionDataset):
    r"""The TikTok micro-video dataset as released with MMSSL/DiffMM
    (9,308 users, 6,710 items; image and audio 128-d features; the 768-d
    text features are not public in this form)."""
    name = 'tiktok'
    source = ('https://github.com/HKUDS/DiffMM (Datasets/tiktok: trnMat.pkl, '
              'valMat.pkl, tstMat.pkl, image_feat.npy, audio_feat.npy, '
              'text_feat.npy)')


class AmazonBaby(InteractionDataset):
    r"""Amazon-Baby in the MMRec split (19,445 users, 7,050 items), DiffMM
    layout (``trnMat.pkl``...) or MMRec layout (``baby.inter``)."""
    name = 'baby'
    source = ('https://github.com/HKUDS/DiffMM (Datasets/baby) or MMRec '
              '(https://github.com/enoche/MMRec, baby.inter with '
              'image_feat.npy / text_feat.npy)')


class AmazonSports(InteractionDataset):
    r"""Amazon-Sports in the MMRec split (35,598 users, 18,357 items), DiffMM
    layout (``trnMat.pkl``...) or MMRec layout (``sports.inter``)."""
    name = 'sports'
    source = ("DiffMM's Google-Drive sports archive (linked from "
              "https://github.com/HKUDS/DiffMM) or MMRec "
              "(https://github.com/enoche/MMRec, sports.inter)")


#: The named datasets of :func:`get_dataset`.
DATASETS = {'tiktok': TikTok, 'baby': AmazonBaby, 'sports': AmazonSports}
DATASET_NAMES = ('synthetic',) + tuple(DATASETS)


#: ``synthetic:`` spec keys -> :func:`~mmdiff.data.synthetic.make_synthetic`
#: arguments.
SYNTHETIC_KEYS = {'users': 'num_users', 'items': 'num_items', 'seed': 'seed',
                  'latent_dim': 'latent_dim',
                  'per_user': 'interactions_per_user',
                  'modalities': 'modalities'}


def parse_synthetic_spec(spec: str) -> Dict[str, Any]:
    r"""Parses ``'synthetic:users=200,items=150,seed=1,per_user=10,
    latent_dim=8,modalities=image:16+text:8'`` into keyword arguments of
    :func:`~mmdiff.data.synthetic.make_synthetic`.

    ``users``, ``items``, ``seed`` and ``latent_dim`` are integers,
    ``per_user`` (mean interactions per user) a number, ``modalities`` a
    ``+``-separated list of ``name:dim`` (a bare ``name`` gets 32
    dimensions; ``none`` means no modality).
    Unknown keys and malformed values raise
    :class:`~mmdiff.errors.ConfigError`."""
    head, _, body = str(spec).partition(':')
    if head.lower() != 'synthetic':
        raise ConfigError(f"{spec!r} is not a synthetic dataset spec")
    out: Dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in body.split(','))):
        key, eq, value = part.partition('=')
        key, value = key.strip().lower(), value.strip()
        if not eq or key not in SYNTHETIC_KEYS:
            raise ConfigError(
                f"dataset {spec!r}: bad item {part!r}; expected key=value "
                f"with key in {sorted(SYNTHETIC_KEYS)}, e.g. "
                f"'synthetic:users=200,items=150'")
        if key == 'modalities':
            mods: Dict[str, int] = {}
            if value.lower() != 'none':
                for m in filter(None, value.split('+')):
                    name, colon, dim = m.partition(':')
                    try:
                        mods[name.strip()] = int(dim) if colon else 32
                    except ValueError:
                        raise ConfigError(
                            f"dataset {spec!r}: modality {m!r} must look "
                            f"like name:dim with an integer dim") from None
            out['modalities'] = mods
            continue
        try:
            out[SYNTHETIC_KEYS[key]] = (float(value) if key == 'per_user'
                                        else int(value))
        except ValueError:
            kind = 'a number' if key == 'per_user' else 'an integer'
            raise ConfigError(f"dataset {spec!r}: {key} must be {kind}, got "
                              f"{value!r}") from None
    return out


def get_dataset(name_or_path: PathLike, root: Optional[PathLike] = None,
                modalities: Modalities = None, *,
                cache_dir: Optional[PathLike] = None) -> HeteroData:
    r"""Returns a dataset's :class:`HeteroData` by name or folder.

    * ``'tiktok'``, ``'baby'``, ``'sports'``: read (and cache) the folder
      ``root/<name>`` with the matching dataset class.
    * ``'synthetic'``: read ``root/synthetic`` if ``root`` is given and that
      folder exists, else generate :func:`~mmdiff.data.synthetic.
      make_synthetic` with its defaults.
    * ``'synthetic:key=value,...'``: a generated dataset with other sizes,
      e.g. ``'synthetic:users=200,items=150'`` (see
      ``parse_synthetic_spec``); usable as ``mmdiff train --dataset``.
    * anything else: a dataset folder in either layout
      (:func:`~mmdiff.data.readers.load_folder`).

    Raises :class:`~mmdiff.errors.ConfigError` listing the valid names when
    ``name_or_path`` is neither a known name nor an existing path.
    """
    key = str(name_or_path)
    lower = key.lower()
    if lower in DATASETS:
        if root is None:
            raise ConfigError(f"dataset {key!r} needs root=, the folder that "
                              f"holds {lower}/ (e.g. root='data')")
        return DATASETS[lower](Path(root) / lower, modalities,
                               cache_dir=cache_dir).data
    if lower == 'synthetic':
        folder = Path(root) / lower if root is not None else None
        if folder is not None and folder.is_dir():
            return load_folder(folder, modalities=modalities)
        from mmdiff.data.synthetic import make_synthetic
        return _select(make_synthetic(), modalities)
    if lower.startswith('synthetic:'):
        from mmdiff.data.synthetic import make_synthetic
        return _select(make_synthetic(**parse_synthetic_spec(key)),
                       modalities)
    if Path(key).expanduser().exists():
        return load_folder(Path(key).expanduser(), modalities=modalities)
    raise ConfigError(f"unknown dataset {key!r}: not one of "
                      f"{list(DATASET_NAMES)} and not an existing folder")
