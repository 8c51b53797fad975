r"""The code path shared by ``mmdiff train``, the examples and the
benchmarks: load a dataset by name, build a model from its preset and
overrides, fit it with :class:`~mmdiff.train.Trainer`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from mmdiff.data.datasets import DATASET_NAMES

DEFAULT_MODEL = 'lightgcn'
DEFAULT_DATASET = 'synthetic'


def load_data(dataset: str, root: Optional[str] = None,
              modalities: Optional[List[str]] = None, noise: float = 0.0,
              seed: int = 0):
    r"""The dataset of a run: a named dataset (under ``root``), the synthetic
    default, or a folder path; optionally with noise added."""
    from mmdiff.data.datasets import get_dataset
    from mmdiff.data.hetero import get_modalities
    data = get_dataset(dataset, root=root, modalities=modalities)
    if modalities:
        get_modalities(data, modalities)  # raises on unknown names
    if noise:
        from mmdiff.data.noise import add_noise_interactions
        data = add_noise_interactions(data, noise, seed=seed)
    return data


def dataset_key(dataset: str) -> Optional[str]:
    r"""The preset section of ``dataset`` (``'synthetic:...'`` specs use
    the ``[synthetic]`` presets)."""
    key = str(dataset).lower()
    if key.startswith('synthetic:'):
        return 'synthetic'
    return key if key in DATASET_NAMES else None


def train_run(model_name: str, dataset: str, *, root=None, modalities=None,
              noise: float = 0.0, seed: int = 0, device: str = 'auto',
              cfg: Optional[Dict[str, Any]] = None, out: Optional[str] = None,
              resume: bool = False, progress: bool = False,
              log=None, data=None, cpu_fallback: bool = False,
              imports: Optional[List[str]] = None):
    r"""The code path shared by ``mmdiff train`` and the benchmarks: build
    data and model from names and a config, fit, return the
    :class:`~mmdiff.train.FitResult` (and write ``out`` if given).

    ``imports`` (the modules of ``mmdiff train --import``, already
    imported) is stored in the run configuration, so that ``mmdiff
    evaluate`` / ``recommend`` / ``--resume`` import them again."""
    from mmdiff.nn.models import get_model_class
    from mmdiff.train import Trainer
    from mmdiff.train.config import preset
    from mmdiff.train.seed import resolve_device
    cls = get_model_class(model_name)
    if cfg is None:
        cfg = preset(cls.name, dataset_key(dataset))
    cfg = cls.canonical_hparams(cfg, prefer_alias=True)
    dev = resolve_device(device, fallback=cpu_fallback)
    if data is None:
        data = load_data(dataset, root, modalities, noise, seed)
    model, trainer_kw = build_model(cls.name, data, cfg, seed=seed,
                                    modalities=modalities, dataset=dataset)
    config = {'model': cls.name, 'dataset': dataset,
              'root': str(Path(root).resolve()) if root else None,
              'modalities': list(modalities) if modalities else None,
              'noise': noise, 'seed': seed, 'hparams': cfg}
    if imports:
        config['imports'] = list(imports)
    trainer = Trainer(model, data, device=str(dev), seed=seed, out_dir=out,
                      resume=resume, progress=progress, log=log,
                      config=config, **trainer_kw)
    return trainer.fit(), model, data


def build_model(model_name: str, data, cfg: Dict[str, Any], *,
                seed: int = 0, modalities: Optional[List[str]] = None,
                dataset: str = 'the data'):
    r"""The model of a run, built as :func:`train_run` builds it: the
    configuration is split into trainer settings and model
    hyper-parameters, every random generator is seeded with ``seed``, then
    ``cls.from_data(data, **hparams)``.

    Returns ``(model, trainer_kw)`` (the settings of
    :class:`~mmdiff.train.Trainer`).  Two calls with the same arguments
    give bit-identical models and leave the random generators in the same
    state."""
    from mmdiff.nn.models import get_model_class
    from mmdiff.train.config import split_config
    from mmdiff.train.seed import seed_everything
    cls = get_model_class(model_name)
    cfg = cls.canonical_hparams(cfg, prefer_alias=True)
    trainer_kw, hparams = split_config(cfg, cls)
    if cls.requires_modalities:
        from mmdiff.data.hetero import modality_names
        if not modality_names(data):
            raise _no_modalities(cls.name, dataset)
    if modalities and 'modalities' in cls.hparam_names():
        hparams.setdefault('modalities', list(modalities))
    seed_everything(seed)
    return cls.from_data(data, **hparams), trainer_kw


def _no_modalities(model: str, dataset: str):
    from mmdiff.errors import ConfigError
    return ConfigError(f"model {model!r} needs at least one item modality, "
                       f"but dataset {dataset!r} has none")
