r"""mmdiff.graph.knn: the chunked item-item kNN graph against a dense
brute-force reference, its orientation and normalisation, and FREEDOM's
degree-sensitive pruning."""
import math

import pytest
import torch

import mmdiff.graph.knn as knn_mod
from mmdiff.errors import ConfigError, DataError
from mmdiff.graph import (
    degree_sensitive_prune,
    knn_graph,
    normalize_knn_graph,
    sym_norm_weights,
    to_adj,
)
from mmdiff.nn.conv import NormalizedPropagation


def dense_knn(x, k, cosine=True, loop=False):
    r"""Brute force: the full N x N similarity, each row's k best by
    (similarity descending, index ascending)."""
    if cosine:
        x = torch.nn.functional.normalize(x, dim=1)
    sim = (x @ x.t()).tolist()
    src, dst, w = [], [], []
    for i, row in enumerate(sim):
        cand = [(-s, j) for j, s in enumerate(row) if loop or j != i]
        for s, j in sorted(cand)[:k]:
            src.append(j)
            dst.append(i)
            w.append(-s)
    return torch.tensor([src, dst]), torch.tensor(w, dtype=x.dtype)


@pytest.mark.parametrize('k', [1, 3, 8])
@pytest.mark.parametrize('chunk_size', [1, 4, 7, 50])
@pytest.mark.parametrize('cosine', [True, False])
@pytest.mark.parametrize('loop', [False, True])
def test_knn_equals_dense_reference(k, chunk_size, cosine, loop):
    # 13 rows: chunks of 4 and 7 leave a remainder, 50 > N is one chunk
    x = torch.randn(13, 5, generator=torch.Generator().manual_seed(k),
                    dtype=torch.float64)
    ei, w = knn_graph(x, k, cosine=cosine, loop=loop, chunk_size=chunk_size)
    ref_ei, ref_w = dense_knn(x, k, cosine, loop)
    assert ei.shape == (2, 13 * k) and w.shape == (13 * k,)
    assert torch.equal(ei, ref_ei)
    assert torch.allclose(w, ref_w, atol=1e-12)
    if not loop:
        assert not bool((ei[0] == ei[1]).any())


def test_ties_broken_towards_lower_index_for_every_chunk_size():
    # many exact ties: rows are copies of 3 distinct vectors
    base = torch.tensor([[1., 0.], [0., 1.], [1., 1.]])
    x = base[torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2])]
    ref_ei, _ = dense_knn(x, 4)
    for chunk in (1, 2, 3, 5, 11, 100):
        ei, _ = knn_graph(x, 4, chunk_size=chunk)
        assert torch.equal(ei, ref_ei), chunk
    ei0, _ = knn_graph(x, 4)
    # node 0's three exact copies (3, 6, 7) come first, lowest index first
    assert ei0[0, :3].tolist() == [3, 6, 7]


def test_never_builds_the_dense_matrix(monkeypatch):
    x = torch.randn(23, 4, generator=torch.Generator().manual_seed(0))
    shapes = []
    inner = knn_mod._topk_stable

    def spy(sim, k):
        shapes.append(tuple(sim.shape))
        return inner(sim, k)

    monkeypatch.setattr(knn_mod, '_topk_stable', spy)
    ei, w = knn_graph(x, 5, chunk_size=6)
    assert shapes == [(6, 23), (6, 23), (6, 23), (5, 23)]   # O(chunk * N)
    monkeypatch.undo()
    full = knn_graph(x, 5, chunk_size=1000)
    assert torch.equal(ei, full[0]) and torch.allclose(w, full[1])


def test_orientation_each_node_aggregates_its_neighbours():
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(1))
    ei, w = knn_graph(x, 3)
    # row 1 = the node (target), sorted; row 0 = its neighbours (sources)
    assert torch.equal(ei[1], torch.arange(9).repeat_interleave(3))
    xn = torch.nn.functional.normalize(x, dim=1)
    S = xn @ xn.t()
    S.fill_diagonal_(-math.inf)
    assert torch.equal(ei[0].view(9, 3).sort(1).values,
                       S.topk(3, dim=1).indices.sort(1).values)
    h = torch.randn(9, 4)
    G = torch.zeros(9, 9)
    G[ei[1], ei[0]] = w                     # G[target, source]
    for graph in ((ei, w), to_adj(ei, w, 9), to_adj(ei, w, 9, 'csr')):
        out = NormalizedPropagation()(h, *(graph if isinstance(graph, tuple)
                                           else (graph,)))
        assert torch.allclose(out, G @ h, atol=1e-5)
    i = 4
    nbrs = ei[0, ei[1] == i]
    assert torch.allclose((G @ h)[i], (w[ei[1] == i, None] * h[nbrs]).sum(0),
                          atol=1e-5)


def test_zero_rows_and_float32():
    x = torch.randn(6, 3)
    x[2] = 0                                # cosine: similarity 0 to all
    ei, w = knn_graph(x, 2)
    assert torch.isfinite(w).all() and w.dtype == torch.float32
    assert torch.all(w[ei[1] == 2] == 0)


def test_normalisation_target_degree_and_both():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    ei, s = knn_graph(x, 3, loop=True)
    # official FREEDOM: binary kNN lists, d = S 1 on both sides -> 1/k
    assert torch.allclose(normalize_knn_graph(ei, 10),
                          torch.full((30,), 1 / 3))
    # weighted, dense reference of D^-1/2 S D^-1/2 with d = S 1
    S = torch.zeros(10, 10, dtype=torch.float64)
    S[ei[1], ei[0]] = s.double().abs()
    d = S.sum(1).pow(-0.5)
    ref = (d[:, None] * S * d[None, :])[ei[1], ei[0]]
    out = normalize_knn_graph(ei, 10, s.abs())
    assert torch.allclose(out.double(), ref, atol=1e-6)
    # 'both': D_r^-1/2 S D_c^-1/2 (column degree = how often a neighbour)
    S = torch.zeros(10, 10, dtype=torch.float64)
    S[ei[1], ei[0]] = 1
    r, c = S.sum(1).pow(-0.5), S.sum(0).pow(-0.5)
    ref = (r[:, None] * S * c[None, :])[ei[1], ei[0]]
    out = normalize_knn_graph(ei, 10, degree='both')
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert torch.equal(out, sym_norm_weights(ei[1], ei[0], 10, 10))


def _star():
    # user 0 interacts with items 0..9 (hub); users 1..9 with one item each
    u = torch.tensor([0] * 10 + list(range(1, 10)))
    i = torch.tensor(list(range(10)) + list(range(1, 10)))
    return torch.stack([u, i])


def test_prune_keeps_a_subset_of_the_right_size_in_order():
    ei = _star()
    g = torch.Generator().manual_seed(0)
    kept = degree_sensitive_prune(ei, 10, 10, 0.5, generator=g)
    assert kept.shape == (2, int(19 * 0.5))
    key = (ei[0] * 10 + ei[1]).tolist()
    pos = [key.index(k) for k in (kept[0] * 10 + kept[1]).tolist()]
    assert pos == sorted(set(pos))          # distinct, original order
    assert degree_sensitive_prune(ei, 10, 10, 1.0) is ei
    again = degree_sensitive_prune(ei, 10, 10, 0.5,
                                   generator=torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)


def test_prune_samples_proportionally_to_inverse_sqrt_degrees():
    # one kept edge of 3: P(e) = p_e / sum p, p_e = 1/sqrt(d_u d_i)
    ei = torch.tensor([[0, 0, 1], [0, 1, 1]])      # d_u = (2, 1), d_i = (1, 2)
    p = torch.tensor([1 / math.sqrt(2), 1 / 2, 1 / math.sqrt(2)])
    p = p / p.sum()
    g = torch.Generator().manual_seed(0)
    n = 6000
    counts = torch.zeros(3)
    for _ in range(n):
        kept = degree_sensitive_prune(ei, 2, 2, 0.34, generator=g)
        counts[(kept[0] * 2 + kept[1]).item() - (kept[0].item())] += 1
    freq = counts / n
    assert torch.allclose(freq, p, atol=0.03), (freq, p)   # ~5 std
    # hub edges are pruned more often than edges of low-degree nodes
    hub = torch.zeros(19)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        kept = degree_sensitive_prune(_star(), 10, 10, 0.5, generator=g)
        hub[0] += int((kept[0] == 0).sum())
        hub[1] += int((kept[0] != 0).sum())
    assert hub[0] / 10 < hub[1] / 9


def test_errors():
    x = torch.randn(5, 2)
    for bad_k in (0, 5, 2.0, True):
        with pytest.raises(ConfigError, match='k must'):
            knn_graph(x, bad_k)
    assert knn_graph(x, 5, loop=True)[0].shape == (2, 25)
    with pytest.raises(ConfigError, match='chunk_size'):
        knn_graph(x, 2, chunk_size=0)
    for bad in (torch.randn(5), torch.ones(5, 2, dtype=torch.long),
                torch.empty(0, 3), [[1.0, 2.0]]):
        with pytest.raises(DataError):
            knn_graph(bad, 1)
    nan = x.clone()
    nan[1, 0] = float('nan')
    with pytest.raises(DataError, match='NaN'):
        knn_graph(nan, 2)
    ei = _star()
    for rate in (0.0, 1.5, float('nan'), '0.5'):
        with pytest.raises(ConfigError, match='keep_rate'):
            degree_sensitive_prune(ei, 10, 10, rate)
    with pytest.raises(DataError, match='item id'):
        degree_sensitive_prune(ei, 10, 5, 0.5)
    e, _ = knn_graph(x, 2)
    with pytest.raises(ConfigError, match='degree'):
        normalize_knn_graph(e, 5, degree='row')
    with pytest.raises(DataError, match='edge_weight'):
        normalize_knn_graph(e, 5, torch.ones(3))
    with pytest.raises(DataError, match='out of range'):
        normalize_knn_graph(e, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no GPU')
def test_cuda_matches_cpu():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(3))
    ei, w = knn_graph(x, 10, chunk_size=64)
    ei_c, w_c = knn_graph(x.cuda(), 10, chunk_size=64)
    assert torch.equal(ei, ei_c.cpu()) and torch.allclose(w, w_c.cpu(),
                                                          atol=1e-5)
    kept = degree_sensitive_prune(_star().cuda(), 10, 10, 0.5)
    assert kept.is_cuda and kept.shape == (2, 9)
