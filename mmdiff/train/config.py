r"""Hyper-parameter presets: one small TOML file per model
(``mmdiff/configs/<model>.toml``) with a ``[default]`` table and one table
per dataset (``[tiktok]``, ``[baby]``, ``[sports]``, ``[synthetic]``) that
overrides it.  A user's ``--config FILE`` (TOML, flat keys, or the same
sectioned layout) and ``--set key=value`` flags override the preset.

Keys in :data:`TRAINER_KEYS` configure the fit loop; every other key is a
hyper-parameter of the model (``Model.from_data(data, **hparams)``).
``batch_size`` is both: the trainer's default batch size, and the model's
own when the model takes one (DiffMM, DiffRec, LD4MRec).  Presets use the
library's names; a model's other names (:attr:`Recommender.hparam_aliases`,
e.g. DiffMM's official ``latdim``) are accepted in user configs and
``--set`` and translated by :func:`split_config`.
"""
from __future__ import annotations

import ast
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from mmdiff.errors import ConfigError, MissingFileError

TRAINER_KEYS = {'epochs', 'batch_size', 'eval_every', 'patience', 'ks',
                'monitor', 'eval_chunk', 'track_test', 'max_grad_norm'}
DATASET_SECTIONS = ('tiktok', 'baby', 'sports', 'synthetic')


def _read_toml(path) -> Dict[str, Any]:
    try:
        with open(path, 'rb') as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path {path} is a directory, expected a "
                          f"TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") \
            from None


def preset(model: str, dataset: Optional[str] = None) -> Dict[str, Any]:
    r"""The preset of ``model`` for ``dataset`` (``[default]`` merged with
    the dataset's table; unknown datasets get ``[default]``)."""
    name = f'{model.lower()}.toml'
    files = resources.files('mmdiff') / 'configs'
    f = files / name
    if not f.is_file():
        return {}
    with f.open('rb') as fh:
        table = tomllib.load(fh)
    out = dict(table.get('default', {}))
    if dataset is not None and dataset in table:
        out.update(table[dataset])
    return out


def user_config(path, dataset: Optional[str] = None) -> Dict[str, Any]:
    r"""A user's TOML config: flat keys, or ``[default]`` + dataset tables."""
    table = _read_toml(path)
    if any(isinstance(v, dict) for v in table.values()):
        out = dict(table.get('default', {}))
        if dataset is not None and dataset in table:
            out.update(table[dataset])
        return out
    return table


def parse_overrides(pairs) -> Dict[str, Any]:
    r"""``['lr=0.01', 'dims=[1000]']`` -> ``{'lr': 0.01, 'dims': [1000]}``
    (values parsed as Python literals, else kept as strings)."""
    out = {}
    for pair in pairs or []:
        if '=' not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value")
        key, value = pair.split('=', 1)
        key = key.strip()
        if not key.isidentifier():
            raise ConfigError(f"invalid override key {key!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            low = value.strip().lower()
            out[key] = {'true': True, 'false': False}.get(low, value)
    return out


#: Keys that configure the fit loop and are also passed to a model whose
#: ``from_data`` accepts them.
SHARED_KEYS = {'batch_size'}


def split_config(cfg: Dict[str, Any], model_cls=None
                 ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    r"""``(trainer_kwargs, model_hparams)`` of a merged configuration.

    With ``model_cls`` (a :class:`~mmdiff.nn.models.Recommender` class),
    the model's aliases are translated first (an alias, which can only come
    from a user's override of a preset, wins over the preset's name), and
    the keys of ``SHARED_KEYS`` the model accepts go to both sides."""
    if model_cls is not None:
        cfg = model_cls.canonical_hparams(cfg, prefer_alias=True)
    trainer = {k: v for k, v in cfg.items() if k in TRAINER_KEYS}
    model = {k: v for k, v in cfg.items() if k not in TRAINER_KEYS}
    if model_cls is not None:
        accepted = model_cls.hparam_names()
        model.update({k: v for k, v in cfg.items()
                      if k in SHARED_KEYS and k in accepted})
    return trainer, model
