import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmdiff.errors import ConfigError
from mmdiff.metrics import full_ranking_metrics, recommend_topk


def brute_force(scores, target, train, ks):
    U, I = scores.shape
    out = {f'{m}@{k}': 0.0 for k in ks
           for m in ('recall', 'ndcg', 'precision', 'hit')}
    n = 0
    for u in range(U):  # reference implementation: a plain loop on purpose
        T = set(target[1][target[0] == u].tolist())
        if not T:
            continue
        n += 1
        seen = set(train[1][train[0] == u].tolist())
        ranked = [i for i in sorted(range(I), key=lambda i: -scores[u, i])
                  if i not in seen]
        for k in ks:
            top = ranked[:k]
            hits = [1 if i in T else 0 for i in top]
            out[f'recall@{k}'] += sum(hits) / len(T)
            out[f'precision@{k}'] += sum(hits) / k
            out[f'hit@{k}'] += float(sum(hits) > 0)
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(T))))
            out[f'ndcg@{k}'] += dcg / idcg
    return {k: v / n for k, v in out.items()}


def random_split(U, I, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(U, I, generator=g)
    mask = torch.rand(U, I, generator=g)
    train = (mask < 0.2).nonzero().t()
    target = ((mask >= 0.2) & (mask < 0.35)).nonzero().t()
    return scores, train, target


@pytest.mark.parametrize('chunk', [1, 3, 100])
def test_against_brute_force(chunk):
    U, I = 13, 25
    scores, train, target = random_split(U, I, 0)
    ks = [1, 5, 10]
    ref = brute_force(scores, target, train, ks)
    got = full_ranking_metrics(lambda u: scores[u], target, U, I, train=train,
                               ks=ks, chunk_size=chunk)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


@settings(max_examples=25, deadline=None)
@given(U=st.integers(1, 12), I=st.integers(3, 20), seed=st.integers(0, 999),
       k=st.integers(1, 3))
def test_property_brute_force(U, I, seed, k):
    scores, train, target = random_split(U, I, seed)
    if target.size(1) == 0:
        return
    ref = brute_force(scores, target, train, [k])
    got = full_ranking_metrics(lambda u: scores[u], target, U, I, train=train,
                               ks=[k], chunk_size=4)
    for key, v in ref.items():
        assert got[key] == pytest.approx(v, abs=1e-6)
        assert 0.0 <= got[key] <= 1.0


def test_agrees_with_pyg_linkpred():
    from torch_geometric.metrics import (
        LinkPredNDCG,
        LinkPredPrecision,
        LinkPredRecall,
    )
    U, I, k = 20, 30, 10
    scores, train, target = random_split(U, I, 1)
    ours = full_ranking_metrics(lambda u: scores[u], target, U, I,
                                train=train, ks=[k])
    s = scores.clone()
    s[train[0], train[1]] = float('-inf')
    top = s.topk(k, dim=1).indices
    for cls, key in ((LinkPredRecall, 'recall'), (LinkPredNDCG, 'ndcg'),
                     (LinkPredPrecision, 'precision')):
        m = cls(k)
        m.update(top, target)
        assert float(m.compute()) == pytest.approx(ours[f'{key}@{k}'],
                                                   abs=1e-6), key


def test_validation_items_stay_rankable():
    # user 0: train item 0, val item 1, test item 2; scores prefer 0 > 1 > 2
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    m = full_ranking_metrics(lambda u: scores[u], torch.tensor([[0], [2]]),
                             1, 4, train=torch.tensor([[0], [0]]), ks=[1, 2])
    assert m['recall@1'] == 0.0  # item 1 (val) outranks the test item
    assert m['recall@2'] == 1.0


def test_users_without_targets_are_skipped():
    scores = torch.randn(5, 6)
    target = torch.tensor([[2], [1]])
    m = full_ranking_metrics(lambda u: scores[u], target, 5, 6, ks=[6])
    assert m['num_users'] == 1 and m['recall@6'] == 1.0


@pytest.mark.parametrize('bad', [0, -1, 7, 2.5, True])
def test_bad_k(bad):
    with pytest.raises(ConfigError, match='K'):
        full_ranking_metrics(lambda u: torch.zeros(len(u), 6),
                             torch.tensor([[0], [1]]), 1, 6, ks=[bad])


def test_recommend_topk_masks_train():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
    items, vals = recommend_topk(lambda u: scores[u], torch.tensor([0, 1]), 2,
                                 4, train=torch.tensor([[0, 1], [0, 3]]),
                                 num_users=2)
    assert items.tolist() == [[1, 2], [2, 1]]
    assert vals.tolist() == [[4.0, 3.0], [3.0, 2.0]]
