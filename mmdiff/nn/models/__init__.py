r"""Full recommenders following the :class:`Recommender` protocol, and the
registry the CLI and the benchmarks use to find them by name."""
from typing import Dict, Type

from mmdiff.errors import ConfigError
from mmdiff.nn.models.base import (
    Recommender,
    RowDiffusionRecommender,
    TrainingPhase,
    TripletBatch,
    UserBatch,
)
from mmdiff.nn.models.diffmm import DiffMM
from mmdiff.nn.models.diffrec import DiffRec
from mmdiff.nn.models.ld4mrec import LD4MRec
from mmdiff.nn.models.lightgcn import LightGCN
from mmdiff.nn.models.mf import MF

MODELS: Dict[str, Type[Recommender]] = {
    'mf': MF,
    'lightgcn': LightGCN,
    'diffmm': DiffMM,
    'diffrec': DiffRec,
    'ld4mrec': LD4MRec,
}


def register_model(cls: Type[Recommender]) -> Type[Recommender]:
    r"""Adds a :class:`Recommender` subclass to the registry under
    ``cls.name`` (usable as a class decorator)."""
    MODELS[cls.name] = cls
    return cls


def get_model_class(name: str) -> Type[Recommender]:
    key = name.lower()
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; available: "
                          f"{', '.join(sorted(MODELS))}")
    return MODELS[key]


__all__ = ['Recommender', 'RowDiffusionRecommender', 'TrainingPhase',
           'TripletBatch', 'UserBatch',
           'MF', 'LightGCN', 'DiffMM', 'DiffRec', 'LD4MRec', 'MODELS',
           'register_model', 'get_model_class']
