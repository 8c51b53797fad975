r"""DiffMM and LD4MRec with 1, 2 and 4 item modalities of arbitrary names
(issue 14): each trains an epoch and scores every item, builds one denoiser
and one regenerated graph per modality (DiffMM) and one preference per
modality (LD4MRec).  Modality names must be Python identifiers (non-ASCII
ones included); anything else gets one clear DataError."""
import numpy as np
import pytest
import torch

from mmdiff.data import make_synthetic
from mmdiff.data.hetero import add_modality, modality_names
from mmdiff.errors import DataError
from mmdiff.nn.models import DiffMM, LD4MRec
from mmdiff.train import Trainer

NAMES = {1: ['thumbnail'], 2: ['price_text', 'x'],
         4: ['thumbnail', 'price_text', 'x', 'émoji']}
SMALL = {DiffMM: dict(embedding_dim=8, hidden_dims=[16], batch_size=32,
                      num_layers=1),
         LD4MRec: dict(hidden_dim=16, batch_size=32)}


def _data(names, seed=0):
    data = make_synthetic(num_users=40, num_items=30, modalities={},
                          seed=seed)
    rng = np.random.default_rng(seed)
    for k, name in enumerate(names):
        add_modality(data, name, rng.normal(size=(30, 4 + 2 * k))
                     .astype(np.float32))
    return data


@pytest.mark.parametrize('count', sorted(NAMES))
@pytest.mark.parametrize('cls', [DiffMM, LD4MRec], ids=['diffmm', 'ld4mrec'])
def test_models_train_and_score_with_named_modalities(cls, count):
    names = NAMES[count]
    data = _data(names)
    assert modality_names(data) == names
    torch.manual_seed(0)
    model = cls.from_data(data, **SMALL[cls])
    result = Trainer(model, data, epochs=1, batch_size=32, patience=0,
                     ks=(5,), monitor='recall@5').fit()
    assert set(result.test_metrics) >= {'recall@5', 'ndcg@5'}
    model.eval()
    with torch.no_grad():
        model.prepare_scoring()
        scores = model.score(torch.arange(5))
    assert scores.shape == (5, 30) and torch.isfinite(scores).all()
    if cls is DiffMM:
        assert model.modalities == names
        assert len(model.denoisers) == count
        assert len(model.graphs.train) == count  # regenerated per modality
    else:
        with torch.no_grad():
            prefs = model.preferences(torch.arange(3))
        assert model.modality_names == names and list(prefs) == names


def test_modality_subset_by_name():
    data = _data(NAMES[4])
    model = DiffMM.from_data(data, modalities=['émoji', 'x'], **SMALL[DiffMM])
    assert model.modalities == ['émoji', 'x'] and len(model.denoisers) == 2


@pytest.mark.parametrize('bad', ['price text', '3d', 'a-b', '', 'num_nodes'])
def test_unsupported_names_get_one_clear_error(bad):
    data = _data([])
    with pytest.raises(DataError, match='modality name|reserved'):
        add_modality(data, bad, np.ones((30, 2), np.float32))
