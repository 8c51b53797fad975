import pytest
import torch

from mmdiff.data.hetero import edge_index_of, modality_names, summary
from mmdiff.data.synthetic import make_synthetic
from mmdiff.errors import ConfigError

SPLITS = ('train', 'val', 'test')


def _recall_at_k(scores, data, k=20):
    r"""Mean test Recall@k over users with test items; training items are
    masked."""
    train, test = edge_index_of(data, 'train'), edge_index_of(data, 'test')
    scores = scores.clone()
    scores[train[0], train[1]] = float('-inf')
    hit = torch.zeros(scores.shape, dtype=torch.bool)
    hit[test[0], test[1]] = True
    top = scores.topk(k, dim=1).indices
    hits = hit.gather(1, top).sum(1).float()
    num = hit.sum(1).float()
    mask = num > 0
    return (hits[mask] / num[mask]).mean().item()


def _r2(features, target):
    r"""Share of the variance of ``target`` explained by a least-squares
    fit on ``features`` (with intercept)."""
    x = torch.cat([features.double(), torch.ones(features.size(0), 1,
                                                 dtype=torch.float64)], 1)
    y = target.double() - target.double().mean(0)
    coef = torch.linalg.lstsq(x, y).solution
    resid = y - x @ coef
    return 1 - (resid ** 2).sum().item() / (y ** 2).sum().item()


def test_default_layout():
    data = make_synthetic(num_users=200, num_items=150)
    s = summary(data)
    assert (s['users'], s['items']) == (200, 150)
    assert modality_names(data) == ['image', 'text']
    assert s['modalities'] == {'image': 64, 'text': 32}
    assert data['item'].image.dtype == torch.float32
    assert s['users_without_train'] == 0
    total = sum(s[f'{x}_interactions'] for x in SPLITS)
    assert 10 * 200 < total < 30 * 200
    assert 0.05 < s['test_interactions'] / total < 0.2


def test_seeded():
    a = make_synthetic(num_users=100, num_items=80, seed=1)
    b = make_synthetic(num_users=100, num_items=80, seed=1)
    c = make_synthetic(num_users=100, num_items=80, seed=2)
    for split in SPLITS:
        assert torch.equal(edge_index_of(a, split), edge_index_of(b, split))
    assert torch.equal(a['item'].image, b['item'].image)
    assert not torch.equal(a['item'].image, c['item'].image)
    assert not torch.equal(edge_index_of(a), edge_index_of(c))


def test_any_modalities():
    mods = {'video': 7, 'audio': 3, 'title': 11, 'tags': 1}
    data = make_synthetic(num_users=60, num_items=50, modalities=mods,
                          informativeness={'tags': 0.0})
    assert modality_names(data) == list(mods)
    assert {m: data['item'][m].shape for m in mods} == {
        m: (50, d) for m, d in mods.items()}
    # A modality depends only on the seed, its name, dim and informativeness.
    data = make_synthetic(num_users=60, num_items=50, modalities=mods,
                          informativeness=0.6)
    one = make_synthetic(num_users=60, num_items=50, modalities={'audio': 3},
                         informativeness=0.6)
    assert torch.equal(one['item'].audio, data['item'].audio)
    assert torch.equal(edge_index_of(one), edge_index_of(data))
    assert modality_names(make_synthetic(50, 40, modalities={})) == []


def test_invalid_arguments():
    with pytest.raises(ConfigError):
        make_synthetic(informativeness={'image': 1.5})
    with pytest.raises(ConfigError, match='unknown modality'):
        make_synthetic(informativeness={'audio': 0.5})
    with pytest.raises(ConfigError):
        make_synthetic(num_users=0)
    with pytest.raises(ConfigError):
        make_synthetic(modalities={'image': 0})
    with pytest.raises(ConfigError):
        make_synthetic(temperature=0)


def test_planted_structure_is_learnable():
    data, truth = make_synthetic(num_users=600, num_items=400, seed=0,
                                 return_factors=True)
    oracle = truth['user'] @ truth['item'].T + truth['log_popularity']
    gen = torch.Generator().manual_seed(0)
    rand = torch.rand(oracle.shape, generator=gen)
    pop = torch.bincount(edge_index_of(data)[1], minlength=400).float()
    r_oracle = _recall_at_k(oracle, data)
    r_rand = _recall_at_k(rand, data)
    r_pop = _recall_at_k(pop.expand_as(oracle), data)
    assert r_oracle > 5 * r_rand
    assert r_oracle > r_pop + 0.2
    assert r_pop > 2 * r_rand  # popularity is long-tailed


def test_popularity_long_tailed():
    data = make_synthetic(num_users=500, num_items=400)
    items = torch.cat([edge_index_of(data, s)[1] for s in SPLITS])
    deg = torch.bincount(items, minlength=400).sort(descending=True).values
    assert deg[:40].sum() > 0.25 * deg.sum()  # top 10% items


def test_informativeness_controls_signal():
    data, truth = make_synthetic(
        num_users=50, num_items=600, modalities={'good': 16, 'noise': 16},
        informativeness={'good': 0.9, 'noise': 0.0}, return_factors=True)
    good = _r2(data['item'].good, truth['item'])
    noise = _r2(data['item'].noise, truth['item'])
    assert good > 0.5
    assert noise < 0.1
