r"""Pure functions on the user-item graph: normalised adjacencies, the one
converter to layer formats (:func:`to_adj`), top-k regeneration, edge
dropout.

Every function that returns a graph returns ``(edge_index, edge_weight)``
in PyG's source-to-target convention (see :mod:`mmdiff.graph.adjacency`).
"""
from mmdiff.graph.adjacency import (
    LAYOUTS,
    Graph,
    bipartite_normalized,
    bipartite_to_symmetric,
    check_edge_index,
    normalized_adjacency,
    normalized_edges,
    split_graph,
    to_adj,
    user_item_to_item_user,
)
from mmdiff.graph.dropout import dropout_normalized_edges
from mmdiff.graph.knn import (degree_sensitive_prune, knn_graph,
                               normalize_knn_graph)
from mmdiff.graph.norm import inv_sqrt_degree, sym_norm_weights
from mmdiff.graph.regenerate import regenerate_topk_graph

__all__ = [
    'Graph',
    'LAYOUTS',
    'bipartite_normalized',
    'bipartite_to_symmetric',
    'check_edge_index',
    'normalized_adjacency',
    'normalized_edges',
    'split_graph',
    'to_adj',
    'user_item_to_item_user',
    'dropout_normalized_edges',
    'inv_sqrt_degree',
    'sym_norm_weights',
    'regenerate_topk_graph',
    'knn_graph', 'normalize_knn_graph', 'degree_sensitive_prune',
]
