import numpy as np
import pytest
import torch

from mmdiff.data import make_synthetic
from mmdiff.data.hetero import edge_index_of, get_modalities, num_items
from mmdiff.data.hetero import num_users
from mmdiff.data.relevance import (
    ModalityRelevance,
    describe_relevance,
    modality_relevance,
    relevant_modalities,
)
from mmdiff.errors import ConfigError


@pytest.fixture(scope='module')
def planted():
    # image and text carry the planted item factors (rho 0.8 / 0.3), the two
    # noise modalities none
    data = make_synthetic(num_users=400, num_items=300,
                          modalities={'image': 32, 'text': 16},
                          informativeness={'image': 0.8, 'text': 0.3},
                          seed=1)
    g = np.random.default_rng(5)
    feats = dict(get_modalities(data))
    for d in (8, 256):
        feats[f'noise{d}'] = torch.from_numpy(
            g.standard_normal((num_items(data), d)).astype(np.float32))
    return data, feats


def test_informative_modalities_pass_and_noise_fails(planted):
    data, feats = planted
    rel = modality_relevance(edge_index_of(data), num_users(data),
                             num_items(data), feats)
    assert list(rel) == ['image', 'text', 'noise8', 'noise256']
    assert rel['image'].keep and rel['text'].keep
    assert not rel['noise8'].keep and not rel['noise256'].keep
    # the score orders the modalities by their planted signal
    assert rel['image'].score > rel['text'].score > 0.01
    assert max(rel['noise8'].score, rel['noise256'].score) < 0.005
    assert rel['image'].p_value == pytest.approx(1 / 100)
    assert rel['noise256'].p_value > 0.01
    assert relevant_modalities(rel) == ['image', 'text']
    text = describe_relevance(rel)
    assert 'noise8: held-out R^2' in text and text.count('dropped') == 2


def test_deterministic_and_leaves_torch_random_state_alone(planted):
    data, feats = planted
    args = (edge_index_of(data), num_users(data), num_items(data),
            {'image': feats['image'], 'noise8': feats['noise8']})
    torch.manual_seed(123)
    a = modality_relevance(*args, num_permutations=19, alpha=0.05)
    after = torch.rand(3)
    torch.manual_seed(123)
    b = modality_relevance(*args, num_permutations=19, alpha=0.05)
    assert torch.equal(torch.rand(3), after)
    assert a == b
    assert a['image'].p_value == pytest.approx(1 / 20)


def test_relevant_modalities_fallback_keeps_the_best():
    rel = {'a': ModalityRelevance(-0.01, 0.0, 0.9, False),
           'b': ModalityRelevance(0.002, 0.003, 0.2, False),
           'c': ModalityRelevance(-0.02, 0.0, 1.0, False)}
    assert relevant_modalities(rel) == []
    assert relevant_modalities(rel, at_least=1) == ['b']
    assert relevant_modalities(rel, at_least=2) == ['a', 'b']


def test_bad_arguments_raise(planted):
    data, feats = planted
    args = (edge_index_of(data), num_users(data), num_items(data),
            {'image': feats['image']})
    with pytest.raises(ConfigError, match='alpha'):
        modality_relevance(*args, alpha=0.0)
    with pytest.raises(ConfigError, match='num_permutations'):
        modality_relevance(*args, num_permutations=0)
