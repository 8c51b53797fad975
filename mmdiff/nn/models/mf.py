r"""Matrix factorisation trained with BPR (MF-BPR)."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from mmdiff.data.hetero import num_items, num_users
from mmdiff.nn.models.base import Recommender, TrainingPhase, TripletBatch


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    r""":math:`-\frac{1}{B}\sum \log \sigma(\hat{y}_{ui} - \hat{y}_{uj})`."""
    return -torch.nn.functional.logsigmoid(pos_scores - neg_scores).mean()


class MF(Recommender):
    r"""Matrix factorisation :math:`\hat{y}_{ui} = \mathbf{e}_u^\top
    \mathbf{e}_i` trained with the BPR loss and L2 regularisation of the
    batch embeddings,

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_{(u,i,j)} \log\sigma(\hat{y}_{ui} -
        \hat{y}_{uj}) + \frac{\lambda}{2B} \sum_{(u,i,j)}
        \big(\|\mathbf{e}_u\|^2 + \|\mathbf{e}_i\|^2 + \|\mathbf{e}_j\|^2\big).

    Args:
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        embedding_dim (int): Embedding size.  (default: ``64``)
        reg (float): :math:`\lambda`.  (default: ``1e-4``)
        lr (float): Adam learning rate.  (default: ``1e-3``)
    """
    name = 'mf'

    def __init__(self, num_users: int, num_items: int,
                 embedding_dim: int = 64, reg: float = 1e-4,
                 lr: float = 1e-3):
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.embedding_dim, self.reg, self.lr = embedding_dim, reg, lr
        self.user_emb = torch.nn.Embedding(num_users, embedding_dim)
        self.item_emb = torch.nn.Embedding(num_items, embedding_dim)
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.xavier_uniform_(self.user_emb.weight)
        torch.nn.init.xavier_uniform_(self.item_emb.weight)

    @classmethod
    def from_data(cls, data: HeteroData, **hparams) -> 'MF':
        hparams = cls.validated_hparams(hparams)
        return cls(num_users(data), num_items(data), **hparams)

    def loss(self, batch: TripletBatch):
        u = self.user_emb(batch.users)
        i, j = self.item_emb(batch.pos), self.item_emb(batch.neg)
        bpr = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        reg = self.reg * 0.5 * (u.pow(2).sum() + i.pow(2).sum() +
                                j.pow(2).sum()) / u.size(0)
        return {'loss': bpr + reg, 'bpr': bpr, 'reg': reg}

    def phases(self) -> List[TrainingPhase]:
        return [TrainingPhase('bpr', 'triplets', self.loss,
                              list(self.parameters()), lr=self.lr)]

    def score(self, users: Tensor) -> Tensor:
        return self.user_emb(users) @ self.item_emb.weight.t()

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, embedding_dim={self.embedding_dim})')
