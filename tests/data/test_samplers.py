import pytest
import torch

from mmdiff.data.hetero import interaction_csr, edge_index_of
from mmdiff.data.samplers import (
    TripletSampler,
    UserRowSampler,
    dense_rows,
    sample_negatives,
)
from mmdiff.errors import ConfigError, DataError


def test_triplets_cover_train_and_negatives_are_never_positives(tiny):
    train = edge_index_of(tiny)
    s = TripletSampler(train, 30, batch_size=17,
                       generator=torch.Generator().manual_seed(0))
    batches = list(s)
    assert len(batches) == len(s)
    users = torch.cat([b.users for b in batches])
    pos = torch.cat([b.pos for b in batches])
    neg = torch.cat([b.neg for b in batches])
    got = sorted(zip(users.tolist(), pos.tolist()))
    assert got == sorted(zip(train[0].tolist(), train[1].tolist()))
    pos_set = set(zip(train[0].tolist(), train[1].tolist()))
    assert not any((u, j) in pos_set for u, j in zip(users.tolist(),
                                                     neg.tolist()))


def test_negatives_dense_user():
    # user 0 interacted with all items but one: the negative must be item 3
    keys = torch.tensor([0, 1, 2, 4])
    neg = sample_negatives(torch.zeros(50, dtype=torch.long), keys, 5,
                           torch.Generator().manual_seed(1))
    assert neg.unique().tolist() == [3]


def test_user_with_all_items_raises():
    ei = torch.tensor([[0, 0, 1], [0, 1, 0]])
    with pytest.raises(DataError, match='all 2 items'):
        TripletSampler(ei, 2, 4)


def test_sampler_determinism(tiny):
    train = edge_index_of(tiny)
    a = [b.neg for b in TripletSampler(train, 30, 16,
                                       torch.Generator().manual_seed(3))]
    b = [b.neg for b in TripletSampler(train, 30, 16,
                                       torch.Generator().manual_seed(3))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_user_rows_match_dense(tiny):
    csr = interaction_csr(tiny)
    dense = csr.to_dense()
    s = UserRowSampler(csr, 7, generator=torch.Generator().manual_seed(0))
    seen = []
    for b in s:
        assert b.rows.shape == (b.users.numel(), 30)
        assert torch.equal(b.rows, dense[b.users])
        seen.append(b.users)
    assert sorted(torch.cat(seen).tolist()) == list(range(40))


def test_dense_rows_empty_users():
    crow = torch.tensor([0, 0, 2, 2])
    col = torch.tensor([1, 3])
    out = dense_rows(crow, col, torch.tensor([0, 1, 2]), 4)
    assert out.tolist() == [[0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]]


@pytest.mark.parametrize('bs', [0, -3, 2.0])
def test_bad_batch_size(tiny, bs):
    with pytest.raises(ConfigError, match='batch_size'):
        TripletSampler(edge_index_of(tiny), 30, bs)
