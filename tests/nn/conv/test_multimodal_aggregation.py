import pytest
import torch
import torch.nn.functional as F
from torch_geometric import EdgeIndex

from mmdiff.graph import (
    LAYOUTS,
    dropout_normalized_edges,
    normalized_edges,
    to_adj,
)
from mmdiff.nn.conv.multimodal_aggregation import (
    MultiModalAggregation,
    NormalizedPropagation,
)

U, I, D = 9, 7, 4
N = U + I


def random_edges(seed, n=20):
    g = torch.Generator().manual_seed(seed)
    keys = torch.unique(torch.randint(U * I, (n,), generator=g))
    return torch.stack([keys // I, keys % I])


def graph_entries(seed, keep_rate=1.0):
    """(source, target) edges and weights of a normalised (optionally
    dropped, hence asymmetric) propagation graph, plus its dense matrix G
    (out = G @ x, G[target, source] = w)."""
    ei, w = normalized_edges(random_edges(seed), U, I, add_self_loops=True)
    ei, w = dropout_normalized_edges(ei, w, keep_rate,
                                     torch.Generator().manual_seed(seed))
    dense = torch.zeros(N, N)
    dense[ei[1], ei[0]] = w
    return ei, w, dense


def as_args(graph):
    return graph if isinstance(graph, tuple) else (graph,)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_normalized_propagation_equals_dense_product(layout):
    ei, w, dense = graph_entries(1, keep_rate=0.6)
    assert not torch.allclose(dense, dense.t())      # direction matters
    conv = NormalizedPropagation()
    x = torch.randn(N, 3, requires_grad=True)
    out = conv(x, *as_args(to_adj(ei, w, N, layout)))
    torch.testing.assert_close(out, dense @ x)
    g = torch.randn(N, 3)
    (grad,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(grad, dense.t() @ g)


def test_edge_index_obj_layout_is_fused_and_cached():
    ei, w, _ = graph_entries(2, keep_rate=0.7)
    adj, weight = to_adj(ei, w, N, 'edge_index_obj')
    assert isinstance(adj, EdgeIndex) and adj.is_sorted_by_col
    assert NormalizedPropagation.SUPPORTS_FUSED_EDGE_INDEX
    with pytest.raises(ValueError):
        to_adj(ei, w, N, 'dense')


def reference(eu, ei, feats, g, gms, w, L, ris, ris_adj):
    """The official forward_MM / forward_cl_MM, one modality at a time,
    with dense matrices (docs/algorithms.md §2.4)."""
    zs, views = [], []
    for m, f in enumerate(feats):
        h = g @ torch.cat([eu, f])
        h2 = g @ torch.cat([h[:U], ei])
        z = h + h2
        if gms is not None:
            z = z + ris_adj * (gms[m] @ torch.cat([eu, ei]))
        zs.append(w[m] * z)
        seed = (gms[m] if gms is not None else g) @ torch.cat([eu, f])
        lst = [seed]
        for _ in range(L):
            lst.append(g @ lst[-1])
        views.append(sum(lst))
    z = sum(zs)
    lst = [z]
    for _ in range(L):
        lst.append(g @ lst[-1])
    e = sum(lst) + ris * F.normalize(z, dim=1)
    return e, views


def inputs(M, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    eu = torch.randn(U, D, generator=g).requires_grad_(requires_grad)
    ei = torch.randn(I, D, generator=g).requires_grad_(requires_grad)
    feats = [F.normalize(torch.randn(I, D, generator=g), dim=1)
             .requires_grad_(requires_grad) for _ in range(M)]
    w = torch.softmax(torch.randn(M, generator=g), 0) \
        .requires_grad_(requires_grad)
    return eu, ei, feats, w


@pytest.mark.parametrize('M', [1, 2, 3])
@pytest.mark.parametrize('L', [0, 1, 2])
@pytest.mark.parametrize('with_graphs', [True, False])
def test_forward_matches_official_formula(M, L, with_graphs):
    eu, ei, feats, w = inputs(M)
    main_ei, main_w, main = graph_entries(10)
    gm = [graph_entries(20 + m, keep_rate=0.5) for m in range(M)]
    ref_e, ref_views = reference(eu, ei, feats, main,
                                 [d for *_, d in gm] if with_graphs
                                 else None, w, L, 0.5, 0.2)
    layer = MultiModalAggregation(U, num_layers=L, ris_lambda=0.5,
                                  ris_adj_lambda=0.2)
    for layout in LAYOUTS:
        graph = to_adj(main_ei, main_w, N, layout)
        mgraphs = [to_adj(a, b, N, layout) for a, b, _ in gm] \
            if with_graphs else None
        out_u, out_i = layer(eu, ei, feats, graph, mgraphs, w)
        torch.testing.assert_close(torch.cat([out_u, out_i]), ref_e)
        out_u, out_i, views = layer(eu, ei, feats, graph, mgraphs, w,
                                    return_views=True)
        torch.testing.assert_close(torch.cat([out_u, out_i]), ref_e)
        assert len(views) == M
        for (vu, vi), ref in zip(views, ref_views):
            torch.testing.assert_close(torch.cat([vu, vi]), ref)
        alone = layer.views(eu, feats, graph, mgraphs)
        for (vu, vi), ref in zip(alone, ref_views):
            torch.testing.assert_close(torch.cat([vu, vi]), ref)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_gradients_match_official_formula(layout):
    M, L = 3, 1
    main_ei, main_w, main = graph_entries(3)
    gm = [graph_entries(30 + m, keep_rate=0.5) for m in range(M)]
    tgt = torch.randn(N, D)
    vt = [torch.randn(N, D) for _ in range(M)]

    def objective(e, views):
        return (e * tgt).sum() + sum((v * t).sum() for v, t in zip(views,
                                                                    vt))

    eu, ei, feats, w = inputs(M, requires_grad=True)
    e, views = reference(eu, ei, feats, main, [d for *_, d in gm], w, L,
                         0.5, 0.2)
    ref = torch.autograd.grad(objective(e, views), [eu, ei, *feats, w])

    eu, ei, feats, w = inputs(M, requires_grad=True)
    layer = MultiModalAggregation(U, num_layers=L)
    out_u, out_i, vs = layer(
        eu, ei, feats, to_adj(main_ei, main_w, N, layout),
        [to_adj(a, b, N, layout) for a, b, _ in gm], w,
        return_views=True)
    got = torch.autograd.grad(
        objective(torch.cat([out_u, out_i]),
                  [torch.cat(v) for v in vs]), [eu, ei, *feats, w])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_dict_inputs_and_default_weights():
    eu, ei, feats, _ = inputs(2)
    main_ei, main_w, main = graph_entries(4)
    gm = [graph_entries(40 + m) for m in range(2)]
    layer = MultiModalAggregation(U)
    graph = to_adj(main_ei, main_w, N, 'csr')
    mg = [to_adj(a, b, N, 'csr') for a, b, _ in gm]
    a = layer(eu, ei, {'image': feats[0], 'text': feats[1]}, graph,
              {'image': mg[0], 'text': mg[1]})
    b = layer(eu, ei, feats, graph, mg, torch.tensor([0.5, 0.5]))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError):
        layer(eu, ei, feats, graph, mg[:1])


def test_repr():
    layer = MultiModalAggregation(5, num_layers=2, ris_lambda=0.1,
                                  ris_adj_lambda=0.3)
    assert repr(layer) == ('MultiModalAggregation(num_users=5, num_layers=2,'
                           ' ris_lambda=0.1, ris_adj_lambda=0.3)')
    assert repr(NormalizedPropagation()) == 'NormalizedPropagation()'
