import warnings

import numpy as np
import pytest
import torch

from conftest import tiny_data
from mmdiff.data import add_modality
from mmdiff.data.hetero import get_modalities, modality_names, num_items
from mmdiff.errors import ConfigError, DataError


def feats(data, dim, seed=0):
    g = np.random.default_rng(seed)
    return g.standard_normal((num_items(data), dim)).astype(np.float32)


@pytest.mark.parametrize('new_dim', [8, 3])  # other width, same width
def test_existing_modality_is_not_replaced_silently(new_dim):
    data = tiny_data(modalities={'image': 8, 'text': 4})
    before = data['item'].image.clone()
    with pytest.raises(ConfigError) as info:
        add_modality(data, 'image', feats(data, new_dim, seed=1))
    msg = str(info.value)
    assert "'image'" in msg and 'width 8' in msg
    assert f'width {new_dim}' in msg and 'replace=True' in msg
    assert torch.equal(data['item'].image, before)
    assert modality_names(data) == ['image', 'text']


def test_replace_true_replaces_without_warning():
    data = tiny_data(modalities={'image': 8, 'text': 4})
    new = feats(data, 5, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        add_modality(data, 'image', new, replace=True)
    assert torch.equal(data['item'].image, torch.from_numpy(new))
    assert {m: x.size(1) for m, x in get_modalities(data).items()} == {
        'image': 5, 'text': 4}
    # a new name needs no replace=; replace=True on a new name just adds it
    add_modality(data, 'audio', feats(data, 2))
    add_modality(data, 'video', feats(data, 2), replace=True)
    assert modality_names(data) == ['image', 'text', 'audio', 'video']


def test_other_item_attribute_is_not_replaced_silently():
    data = tiny_data()
    data['item'].ids = torch.arange(num_items(data))
    with pytest.raises(ConfigError, match=r"'ids'.*not a modality.*width 3"):
        add_modality(data, 'ids', feats(data, 3))
    assert torch.equal(data['item'].ids, torch.arange(num_items(data)))
    add_modality(data, 'ids', feats(data, 3), replace=True)
    assert modality_names(data) == ['ids']


def test_bad_features_still_raise_data_error_first():
    data = tiny_data(modalities={'image': 8})
    with pytest.raises(DataError, match="modality 'image'"):
        add_modality(data, 'image', np.zeros((3, 8), np.float32),
                     replace=True)
    with pytest.raises(DataError, match="modality 'image'"):
        add_modality(data, 'image', np.zeros((num_items(data), 8), np.int64))
