r"""LightGCN baseline built on :class:`torch_geometric.nn.models.LightGCN`."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from mmdiff.data.hetero import edge_index_of, num_items, num_users
from mmdiff.graph import normalized_adjacency
from mmdiff.graph import Graph, split_graph, to_adj
from mmdiff.nn.conv.multimodal_aggregation import NormalizedPropagation
from mmdiff.nn.models.base import Recommender, TrainingPhase, TripletBatch
from mmdiff.nn.models.mf import bpr_loss


class LightGCN(Recommender):
    r"""LightGCN (He et al., SIGIR 2020) on the user-item graph.

    Wraps PyG's :class:`~torch_geometric.nn.models.LightGCN` (its embedding
    table and layer averaging
    :math:`\mathbf{e} = \sum_{l=0}^{L} \alpha_l \hat{A}^l \mathbf{e}^{(0)}`
    with :math:`\alpha_l = 1/(L+1)`).  The normalised adjacency
    :math:`\hat{A} = D^{-1/2} A D^{-1/2}` (no self-loops) is computed once.
    PyG's ``LGConv`` has no fused path for an
    :class:`~torch_geometric.EdgeIndex` with edge weights, so its layers are
    replaced by the equivalent parameter-free
    :class:`~mmdiff.nn.conv.NormalizedPropagation` hops, which multiply with
    the cached CSC (forward) / CSR (backward) pair of an ``EdgeIndex``
    (speeds in ``benchmarks/results/propagation.md``; results agree with
    the other formats to float rounding).

    Loss: BPR with :math:`\frac{\lambda}{2B}`-scaled L2 on the layer-0
    embeddings of the batch (PyG's ``recommendation_loss``).

    Args:
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        edge_index (Tensor): ``[2, E]`` training (user, item) edges.
        embedding_dim (int): (default: ``64``)
        num_layers (int): :math:`L`.  (default: ``3``)
        reg (float): :math:`\lambda`.  (default: ``1e-4``)
        lr (float): Adam learning rate.  (default: ``1e-3``)
    """
    name = 'lightgcn'

    def __init__(self, num_users: int, num_items: int, edge_index: Tensor,
                 embedding_dim: int = 64, num_layers: int = 3,
                 reg: float = 1e-4, lr: float = 1e-3):
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.embedding_dim, self.num_layers = embedding_dim, num_layers
        self.reg, self.lr = reg, lr
        # Propagation format (every layout of mmdiff.graph.to_adj gives the
        # same result, tested); the default is the fastest measured.
        self._sparse_layout = 'edge_index_obj'
        self.gnn = PyGLightGCN(num_users + num_items, embedding_dim,
                               num_layers, normalize=False)
        # Same hop as LGConv(normalize=False), plus the fused EdgeIndex path.
        self.gnn.convs = torch.nn.ModuleList(
            [NormalizedPropagation() for _ in range(num_layers)])
        ei, w = normalized_adjacency(edge_index, num_users, num_items,
                                     add_self_loops=False,
                                     layout='edge_index')
        self.register_buffer('adj_index', ei, persistent=False)
        self.register_buffer('adj_weight', w, persistent=False)
        self._adj: Optional[Graph] = None
        self._adj_device: Optional[torch.device] = None
        self._cache: Optional[Tensor] = None

    def reset_parameters(self):
        self.gnn.reset_parameters()
        self._cache = None

    @classmethod
    def from_data(cls, data: HeteroData, **hparams) -> 'LightGCN':
        hparams = cls.validated_hparams(hparams)
        return cls(num_users(data), num_items(data), edge_index_of(data),
                   **hparams)

    def adjacency(self) -> Graph:
        r""":math:`\hat{A}` in the layer format, built once per device."""
        device = self.adj_index.device
        key = (device, self._sparse_layout)
        if self._adj is None or self._adj_device != key:
            self._adj = to_adj(self.adj_index, self.adj_weight,
                               self.num_users + self.num_items,
                               self._sparse_layout)
            self._adj_device = key
        return self._adj

    def embeddings(self) -> Tensor:
        return self.gnn.get_embedding(*split_graph(self.adjacency()))

    def loss(self, batch: TripletBatch):
        self._cache = None
        emb = self.embeddings()
        U = self.num_users
        u, i, j = emb[batch.users], emb[U + batch.pos], emb[U + batch.neg]
        bpr = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        e0 = self.gnn.embedding.weight
        reg = self.reg * 0.5 * (e0[batch.users].pow(2).sum() +
                                e0[U + batch.pos].pow(2).sum() +
                                e0[U + batch.neg].pow(2).sum()) / u.size(0)
        return {'loss': bpr + reg, 'bpr': bpr, 'reg': reg}

    def phases(self) -> List[TrainingPhase]:
        return [TrainingPhase('bpr', 'triplets', self.loss,
                              list(self.parameters()), lr=self.lr)]

    def prepare_scoring(self) -> None:
        self._cache = self.embeddings()

    def score(self, users: Tensor) -> Tensor:
        emb = self._cache if self._cache is not None else self.embeddings()
        return emb[users] @ emb[self.num_users:].t()

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, embedding_dim={self.embedding_dim}, '
                f'num_layers={self.num_layers})')
