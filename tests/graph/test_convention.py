r"""One graph convention: every function that returns a graph returns
source-to-target ``(edge_index, edge_weight)``, and such a graph passed
straight into every layer (or through :func:`to_adj` in any layout)
computes the dense product :math:`G x` with :math:`G_{ij} = w_{ji}`, also
when the graph is asymmetric (edge-dropped)."""
from __future__ import annotations

import pytest
import torch

from mmdiff.graph import (
    LAYOUTS,
    dropout_normalized_edges,
    normalized_adjacency,
    normalized_edges,
    to_adj,
)
from mmdiff.nn.conv import (
    ModalityPreference,
    MultiModalAggregation,
    NormalizedPropagation,
)
from mmdiff.nn.diffusion import InteractionDiffusion, regenerate_graph

U, I = 3, 4
N = U + I


def dense_of(ei, w, n=N, m=None):
    G = torch.zeros(n, m or n)
    G.index_put_((ei[1], ei[0]), w, accumulate=True)
    return G


def interactions():
    return torch.tensor([[0, 0, 1, 2, 2], [0, 3, 1, 2, 3]])


def producers():
    edges = interactions()
    g = torch.Generator().manual_seed(4)
    ei, w = normalized_edges(edges, U, I, add_self_loops=True)
    out = {'normalized_edges': (ei, w),
           'dropout_normalized_edges': dropout_normalized_edges(
               ei, w, 0.5, g),
           'normalized_adjacency': normalized_adjacency(
               edges, U, I, layout='edge_index')}
    torch.manual_seed(0)
    diff = InteractionDiffusion.diffmm(I, hidden_dims=[8])
    csr = torch.sparse_coo_tensor(edges, torch.ones(5), (U, I)) \
        .to_sparse_csr()
    out['regenerate_graph'] = regenerate_graph(
        diff, csr, U, I, k=2, keep_rate=0.5,
        generator=torch.Generator().manual_seed(1))
    return out


@pytest.mark.parametrize('name', ['normalized_edges',
                                  'dropout_normalized_edges',
                                  'normalized_adjacency', 'regenerate_graph'])
def test_graph_functions_feed_layers_straight(name):
    ei, w = producers()[name]
    G = dense_of(ei, w)
    if name in ('dropout_normalized_edges', 'regenerate_graph'):
        assert not torch.allclose(G, G.t())          # the case that matters
    x = torch.randn(N, 5)
    torch.testing.assert_close(NormalizedPropagation()(x, ei, w), G @ x)
    agg = MultiModalAggregation(U, num_layers=1)
    torch.testing.assert_close(agg.hop(x, (ei, w)), G @ x)
    for layout in LAYOUTS:
        torch.testing.assert_close(
            agg.hop(x, to_adj(ei, w, N, layout)), G @ x)
    # the whole aggregation: raw pairs and every layout agree
    eu, e_i = torch.randn(U, 4), torch.randn(I, 4)
    feats = [torch.randn(I, 4)]
    ref = agg(eu, e_i, feats, (ei, w), [(ei, w)], return_views=True)
    for layout in LAYOUTS:
        g = to_adj(ei, w, N, layout)
        out = agg(eu, e_i, feats, g, [g], return_views=True)
        torch.testing.assert_close(out[0], ref[0])
        torch.testing.assert_close(out[2][0][1], ref[2][0][1])


def test_bipartite_item_to_user_graph_with_weights():
    ui = interactions()
    iu = ui.flip(0)                                  # (item, user)
    w = torch.tensor([0.5, 2.0, 1.0, 0.25, 3.0])
    W = torch.zeros(U, I)
    W[ui[0], ui[1]] = w
    x = torch.randn(I, 3)
    conv = ModalityPreference(normalize=False)
    torch.testing.assert_close(conv(x, iu, size=(I, U), edge_weight=w),
                               W @ x)
    torch.testing.assert_close(
        conv.forward_user_item(x, ui, U, edge_weight=w), W @ x)


def test_every_layout_of_a_dropped_graph_agrees():
    # the 3 x 4 case of the issue: an edge-dropped graph through the
    # EdgeIndex and the CSR layouts used to give G^T x and G x
    ei, w = producers()['dropout_normalized_edges']
    G = dense_of(ei, w)
    x = torch.randn(N, 2)
    conv = NormalizedPropagation()
    for layout in LAYOUTS:
        g = to_adj(ei, w, N, layout)
        out = conv(x, *g) if isinstance(g, tuple) else conv(x, g)
        torch.testing.assert_close(out, G @ x)
