r"""Pure functions on the user-item graph: normalised adjacencies, top-k
regeneration, edge dropout."""
from mmdiff.graph.adjacency import (
    bipartite_normalized,
    bipartite_to_symmetric,
    normalized_adjacency,
    normalized_edges,
    to_edge_index_obj,
    to_sparse_csr,
)
from mmdiff.graph.dropout import dropout_normalized_edges
from mmdiff.graph.regenerate import regenerate_topk_graph

__all__ = [
    'bipartite_normalized',
    'bipartite_to_symmetric',
    'normalized_adjacency',
    'normalized_edges',
    'to_edge_index_obj',
    'to_sparse_csr',
    'dropout_normalized_edges',
    'regenerate_topk_graph',
]
