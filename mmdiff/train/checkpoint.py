r"""Atomic checkpoint files, loaded with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import torch

from mmdiff.errors import CheckpointError, MissingFileError

FORMAT = 'mmdiff-checkpoint-v1'


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    r"""Writes ``obj`` with :func:`torch.save` to a temporary file in the same
    folder, flushes it to disk and renames it over ``path``: a crash leaves
    either the old or the new file, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                               dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: Union[str, Path]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                               dir=path.parent)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _refusal_reason(e: BaseException) -> str:
    r"""The informative line of a ``weights_only`` refusal (torch's message
    starts with advice to disable the safety check, which we never do)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if 'GLOBAL' in ln or 'nsupported' in ln:
            return ln
    return lines[0] if lines else type(e).__name__


def state_dict_mismatch(e: BaseException, limit: int = 300) -> str:
    r"""A one-line summary of a :meth:`~torch.nn.Module.load_state_dict`
    error (missing / unexpected keys, size mismatches)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = '; '.join(lines[1:] or lines) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + '...'


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    r"""Loads an :mod:`mmdiff` checkpoint safely (``weights_only=True``).

    A run folder is accepted too (its ``checkpoint.pt`` is read).  Missing,
    truncated, foreign or unsafe files raise a clear error."""
    path = Path(path)
    if path.is_dir() and path.suffix not in ('.pt', '.pth'):
        path = path / 'checkpoint.pt'  # a run folder
    if not path.exists():
        raise MissingFileError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a file")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load (not a plain-tensor "
                              f"checkpoint; only weights are loaded, never "
                              f"code): {_refusal_reason(e)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint "
                              f"(truncated or corrupt): "
                              f"{str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != FORMAT:
        raise CheckpointError(f"{path}: not an mmdiff checkpoint "
                              f"(expected format {FORMAT!r})")
    return ckpt
