r"""Loading untrusted array files without executing code.

The DiffMM/MMSSL releases ship their interaction matrices as pickled
:class:`scipy.sparse.coo_matrix` objects.  A pickle can call any importable
function while it is being read, so :func:`safe_load_pickle` uses a restricted
:class:`pickle.Unpickler` whose :meth:`~pickle.Unpickler.find_class` resolves
only the handful of globals a pickled scipy sparse matrix needs (see
:data:`ALLOWED_GLOBALS`) and refuses everything else with
:class:`~mmdiff.errors.UnsafeFileError` *before* anything is called.

:func:`safe_load_npy` reads ``.npy`` files with pickling disabled.
"""
from __future__ import annotations

import codecs
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Tuple, Union

import numpy as np

from mmdiff.errors import DataError, MissingFileError, UnsafeFileError

PathLike = Union[str, os.PathLike]

_SPARSE_CLASSES = ('coo_matrix', 'csr_matrix', 'csc_matrix', 'coo_array',
                   'csr_array', 'csc_array')
_SPARSE_MODULES = ('scipy.sparse', 'scipy.sparse._coo', 'scipy.sparse._csr',
                   'scipy.sparse._csc', 'scipy.sparse.coo', 'scipy.sparse.csr',
                   'scipy.sparse.csc')

#: The ``(module, name)`` globals a pickle may reference.  Deprecated module
#: paths (``numpy.core``, ``scipy.sparse.coo``) are mapped straight to the
#: objects they alias, so they are never imported and warn nothing.
ALLOWED_GLOBALS: Tuple[Tuple[str, str], ...] = (
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    # Written by numpy >= 1.16 for pickle protocol 5:
    ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'),
    # Written for ``bytes`` under pickle protocols 0-2 (latin-1 only, below):
    ('_codecs', 'encode'),
) + tuple((m, c) for m in _SPARSE_MODULES for c in _SPARSE_CLASSES)
_ALLOWED = frozenset(ALLOWED_GLOBALS)


def _numpy_core(submodule: str) -> Any:
    import importlib
    try:
        return importlib.import_module(f'numpy._core.{submodule}')
    except ImportError:  # numpy < 2
        return importlib.import_module(f'numpy.core.{submodule}')


class _RefusedEncoding(pickle.UnpicklingError):
    pass


def _latin1_encode(obj: str, encoding: str = 'utf-8',
                   errors: str = 'strict') -> bytes:
    # Protocols 0-2 pickle ``bytes`` as ``_codecs.encode(str, 'latin1')``.
    if str(encoding).lower().replace('-', '').replace('_', '') not in (
            'latin1', 'iso88591'):
        raise _RefusedEncoding(
            f"refusing '_codecs.encode' with encoding {encoding!r} (only "
            f"latin-1 is allowed)")
    return codecs.encode(obj, 'latin-1', errors)


def _resolve(module: str, name: str) -> Callable[..., Any]:
    if module == 'numpy':
        return getattr(np, name)
    if module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        return getattr(_numpy_core('multiarray'), name)
    if module in ('numpy.core.numeric', 'numpy._core.numeric'):
        return getattr(_numpy_core('numeric'), name)
    if module == '_codecs':
        return _latin1_encode
    import scipy.sparse
    return getattr(scipy.sparse, name)


class RestrictedUnpickler(pickle.Unpickler):
    r"""A :class:`pickle.Unpickler` that resolves only
    :data:`ALLOWED_GLOBALS` and raises
    :class:`~mmdiff.errors.UnsafeFileError` for any other global."""

    def __init__(self, file: Any, source: str = '<pickle>') -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafeFileError(
                f"{self.source}: refusing to load '{module}.{name}': this "
                f"pickle references a global outside the whitelist of a "
                f"pickled scipy sparse matrix (numpy arrays/dtypes and scipy "
                f"coo/csr/csc matrices); the file is not loaded")
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self.source}: refusing persistent id "
                              f"{pid!r}; the file is not loaded")


def _check_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path}: expected a file but found a directory")
    return path


def safe_load_pickle(path: PathLike) -> Any:
    r"""Unpickles ``path`` allowing only the globals of a pickled scipy
    sparse matrix (:data:`ALLOWED_GLOBALS`).

    Raises:
        MissingFileError: ``path`` does not exist.
        UnsafeFileError: the pickle references any other global (nothing it
            asks for is called).
        DataError: the file is a directory, empty, truncated or corrupt.
    """
    path = _check_file(path)
    try:
        with open(path, 'rb') as f, warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            return RestrictedUnpickler(f, source=str(path)).load()
    except DataError:
        raise
    except _RefusedEncoding as e:
        raise UnsafeFileError(f"{path}: {e}; the file is not loaded") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e})") from e
    except Exception as e:  # truncated / corrupt: EOFError, UnpicklingError..
        raise DataError(f"{path}: not a readable pickle (truncated or "
                        f"corrupt): {type(e).__name__}: {e}") from e


def safe_load_npy(path: PathLike) -> np.ndarray:
    r"""Loads a ``.npy`` array with ``allow_pickle=False``.

    Raises:
        MissingFileError: ``path`` does not exist.
        UnsafeFileError: the array has ``dtype=object`` (it would need
            unpickling).
        DataError: the file is a directory, not a ``.npy`` file, truncated or
            corrupt.
    """
    path = _check_file(path)
    try:
        with open(path, 'rb') as f:
            try:
                version = np.lib.format.read_magic(f)
            except ValueError as e:
                raise DataError(f"{path}: not a .npy file ({e})") from e
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # pragma: no cover - future format versions
                f.seek(0)
                dtype = None
            if dtype is not None and dtype.hasobject:
                raise UnsafeFileError(
                    f"{path}: refusing an object-dtype array (loading it "
                    f"would unpickle arbitrary objects)")
            f.seek(0)
            expected = None
            if dtype is not None:
                expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            array = np.load(f, allow_pickle=False)
        if expected is not None and array.nbytes != expected:
            raise DataError(f"{path}: truncated .npy file")
        return array
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e})") from e
    except Exception as e:  # truncated data, bad header ...
        raise DataError(f"{path}: not a readable .npy file (truncated or "
                        f"corrupt): {type(e).__name__}: {e}") from e
