r"""Small, fast settings of every model for the distributed tests."""
from __future__ import annotations

from typing import Any, Dict

DATASET = 'synthetic:users=120,items=80'
SEED = 3
#: global batch; 120 users / 50 and ~1k training edges / 50 leave partial
#: last batches, and every second batch of a 3-rank job has uneven shards
BATCH = 50

_MODEL: Dict[str, Dict[str, Any]] = {
    'mf': {'embedding_dim': 8},
    'lightgcn': {'embedding_dim': 8, 'num_layers': 2},
    'diffrec': {'hidden_dims': [32], 'dropout': 0.5},
    'ld4mrec': {'hidden_dim': 16, 'svd_dim': 8, 'dropout': 0.2},
    'diffmm': {'embedding_dim': 8, 'hidden_dims': [32], 'batch_size': BATCH},
}


def config_of(model: str, epochs: int, **overrides) -> Dict[str, Any]:
    r"""The run configuration (preset keys) of ``model``; ``overrides``
    replace entries (e.g. ``patience``, ``lr``)."""
    from mmdiff.nn.models import get_model_class
    from mmdiff.train.config import preset
    cfg = preset(get_model_class(model).name, 'synthetic')
    cfg.update(_MODEL[model], epochs=epochs, patience=0, batch_size=BATCH)
    cfg.update(overrides)
    return cfg
