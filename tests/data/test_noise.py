import math

import pytest
import torch

from mmdiff.data.hetero import edge_index_of, make_interaction_data
from mmdiff.data.noise import add_noise_interactions
from mmdiff.data.synthetic import make_synthetic
from mmdiff.errors import DataError

SPLITS = ('train', 'val', 'test')


@pytest.fixture(scope='module')
def data():
    return make_synthetic(num_users=120, num_items=90, seed=4)


def _keys(d, split):
    e = edge_index_of(d, split)
    return e[0] * d['item'].num_nodes + e[1]


def _total(d):
    return sum(edge_index_of(d, s).size(1) for s in SPLITS)


def test_budget_test_untouched_no_duplicates(data):
    before = {s: edge_index_of(data, s).clone() for s in SPLITS}
    noisy = add_noise_interactions(data, 0.1, seed=0)
    budget = math.floor(0.1 * _total(data))
    assert _total(noisy) - _total(data) == budget
    assert torch.equal(edge_index_of(noisy, 'test'), before['test'])
    for s in SPLITS:  # input untouched
        assert torch.equal(edge_index_of(data, s), before[s])

    old = torch.cat([_keys(data, s) for s in SPLITS])
    new = torch.cat([_keys(noisy, s) for s in ('train', 'val')])
    added = new[~torch.isin(new, old)]
    assert added.numel() == budget  # noise never duplicates a clean pair
    assert torch.unique(new).numel() == new.numel()  # nor another noise pair
    for s in ('train', 'val'):  # clean pairs stay in their split
        assert torch.isin(_keys(data, s), _keys(noisy, s)).all()
    # Still canonical: sorted by (user, item).
    k = _keys(noisy, 'train')
    assert torch.equal(k, k.sort().values)
    assert noisy.noise_ratio == 0.1
    assert torch.equal(noisy['item'].image, data['item'].image)


def test_seeded(data):
    a = add_noise_interactions(data, 0.2, seed=1)
    b = add_noise_interactions(data, 0.2, seed=1)
    c = add_noise_interactions(data, 0.2, seed=2)
    for s in SPLITS:
        assert torch.equal(edge_index_of(a, s), edge_index_of(b, s))
    assert not torch.equal(edge_index_of(a), edge_index_of(c))


def test_val_share(data):
    n_val = edge_index_of(data, 'val').size(1)
    only_train = add_noise_interactions(data, 0.3, val_share=0.0)
    assert edge_index_of(only_train, 'val').size(1) == n_val
    only_val = add_noise_interactions(data, 0.3, val_share=1.0)
    assert torch.equal(edge_index_of(only_val), edge_index_of(data))
    big = add_noise_interactions(data, 1.0, seed=0)
    share = (edge_index_of(big, 'val').size(1) - n_val) / _total(data)
    assert abs(share - 1 / 9) < 0.03


def test_ratio_zero_and_errors(data):
    same = add_noise_interactions(data, 0.0)
    for s in SPLITS:
        assert torch.equal(edge_index_of(same, s), edge_index_of(data, s))
    assert same is not data
    with pytest.raises(DataError, match='>= 0'):
        add_noise_interactions(data, -0.1)
    with pytest.raises(DataError):
        add_noise_interactions(data, float('nan'))


def test_dense_graph():
    # 3 x 4 = 12 pairs, 4 observed: 8 free; ratio 2 asks for exactly 8.
    tiny = make_interaction_data(3, 4, torch.tensor([[0, 1, 2], [0, 1, 2]]),
                                 test=torch.tensor([[0], [3]]))
    full = add_noise_interactions(tiny, 2.0, seed=3)
    assert _total(full) == 12
    keys = torch.cat([_keys(full, s) for s in SPLITS])
    assert torch.equal(keys.sort().values, torch.arange(12))
    with pytest.raises(DataError, match='unobserved'):
        add_noise_interactions(tiny, 2.5)
