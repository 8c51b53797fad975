import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmdiff.errors import ConfigError, DataError
from mmdiff.graph import (
    bipartite_normalized,
    dropout_normalized_edges,
    normalized_adjacency,
    normalized_edges,
    regenerate_topk_graph,
)


def dense_reference(edge_index, U, I, self_loops):
    N = U + I
    A = torch.zeros(N, N, dtype=torch.float64)
    A[edge_index[0], U + edge_index[1]] = 1
    A[U + edge_index[1], edge_index[0]] = 1
    if self_loops:
        A = A + torch.eye(N, dtype=torch.float64)
    d = A.sum(1)
    inv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    return inv[:, None] * A * inv[None, :]


def random_edges(U, I, E, seed=0):
    g = torch.Generator().manual_seed(seed)
    key = torch.unique(torch.randint(U * I, (E,), generator=g))
    return torch.stack([key // I, key % I])


@pytest.mark.parametrize('self_loops', [False, True])
@pytest.mark.parametrize('layout', ['edge_index', 'csr', 'coo',
                                    'edge_index_obj'])
def test_normalized_adjacency_matches_dense(self_loops, layout):
    U, I = 7, 5
    ei = random_edges(U, I, 15)
    ref = dense_reference(ei, U, I, self_loops).float()
    out = normalized_adjacency(ei, U, I, add_self_loops=self_loops,
                               layout=layout)
    N = U + I
    if layout in ('edge_index', 'edge_index_obj'):
        idx, w = out
        dense = torch.zeros(N, N)
        dense[idx[0].as_subclass(torch.Tensor), idx[1].as_subclass(
            torch.Tensor)] = w
    else:
        dense = out.to_dense()
    assert torch.allclose(dense, ref, atol=1e-6)


def test_isolated_nodes_self_loop_weight_one():
    ei = torch.tensor([[0], [0]])
    idx, w = normalized_edges(ei, 3, 2, add_self_loops=True)
    dense = torch.zeros(5, 5)
    dense[idx[0], idx[1]] = w
    # user 2 and item 1 are isolated: only their self-loop, weight 1
    assert dense[2, 2] == 1 and dense[4, 4] == 1
    assert torch.allclose(dense, dense.t())


@settings(max_examples=30, deadline=None)
@given(U=st.integers(1, 8), I=st.integers(1, 8), E=st.integers(1, 40),
       seed=st.integers(0, 10_000), loops=st.booleans())
def test_normalization_property(U, I, E, seed, loops):
    ei = random_edges(U, I, E, seed)
    idx, w = normalized_edges(ei, U, I, add_self_loops=loops)
    N = U + I
    dense = torch.zeros(N, N, dtype=torch.float64)
    dense[idx[0], idx[1]] = w.double()
    assert torch.allclose(dense, dense.t())
    assert torch.allclose(dense, dense_reference(ei, U, I, loops), atol=1e-6)
    # spectral radius of a symmetric-normalised adjacency is at most 1
    assert torch.linalg.eigvalsh(dense).abs().max() <= 1 + 1e-6


def test_bipartite_normalized():
    U, I = 6, 4
    ei = random_edges(U, I, 12, 3)
    R = torch.zeros(U, I)
    R[ei[0], ei[1]] = 1
    du, di = R.sum(1), R.sum(0)
    ref = R / torch.sqrt(du[:, None] * di[None, :]).clamp(min=1e-12)
    assert torch.allclose(bipartite_normalized(ei, U, I).to_dense(), ref)


def test_out_of_range_edges_raise():
    with pytest.raises(DataError, match='item id 9 is out of range'):
        normalized_edges(torch.tensor([[0], [9]]), 2, 3)
    with pytest.raises(DataError, match='shape'):
        normalized_edges(torch.zeros(3, 2, dtype=torch.long), 2, 3)


def test_regenerate_topk():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    ei = regenerate_topk_graph(scores, 2, users=torch.tensor([4, 7]))
    assert ei.tolist() == [[4, 4, 7, 7], [1, 2, 0, 2]]
    ex = torch.tensor([[False, True, False], [False, False, False]])
    ei = regenerate_topk_graph(scores, 1, exclude=ex)
    assert ei.tolist() == [[0, 1], [2, 0]]
    with pytest.raises(ConfigError,
                       match=r'k \(items kept per row\) must be in '
                             r'\[1, 3\], got 4'):
        regenerate_topk_graph(scores, 4)
    with pytest.raises(ConfigError, match='integer'):
        regenerate_topk_graph(scores, 1.5)


def test_edge_dropout_expectation():
    E = 20000
    ei = torch.stack([torch.arange(E), torch.arange(E)])
    w = torch.rand(E)
    g = torch.Generator().manual_seed(0)
    idx, kept = dropout_normalized_edges(ei, w, 0.5, generator=g)
    assert 0.45 * E < kept.numel() < 0.55 * E
    # kept values are rescaled by 1/rho
    assert torch.allclose(kept, w[idx[0]] / 0.5)
    # E[dropped] == original, summed over all entries
    assert abs(kept.sum() - w.sum()) / w.sum() < 0.03
    same = dropout_normalized_edges(ei, w, 1.0)
    assert same[1] is w
    with pytest.raises(ConfigError):
        dropout_normalized_edges(ei, w, 0.0)


def test_graph_store_reads_states_written_before_the_convention():
    from mmdiff.graph.store import ORIENTATION_KEY, GraphStore
    ei = torch.tensor([[0, 1, 2], [3, 3, 0]])
    w = torch.tensor([0.5, 0.25, 1.0])
    store = GraphStore(4, 1)
    store.set([(ei, w)])
    state = store.state()
    assert ORIENTATION_KEY in state
    again = GraphStore(4, 1)
    again.load_state(state, torch.device('cpu'))
    assert torch.equal(again.train[0][0], ei)
    # an older state stored the (row, col) entries of G = (target, source)
    old = {k: v for k, v in state.items() if k != ORIENTATION_KEY}
    again.load_state(old, torch.device('cpu'))
    assert torch.equal(again.train[0][0], ei.flip(0))
    assert torch.equal(again.train[0][1], w)
