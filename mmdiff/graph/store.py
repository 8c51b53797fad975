r"""A store of generated graphs (DiffMM's per-modality user-item graphs):
the source-to-target ``(edge_index, edge_weight)`` pairs of the current
epoch, optionally a second set for evaluation, and the layer-format
adjacencies built from them, cached per name, device and layout and
dropped whenever the graphs change."""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from mmdiff.errors import ConfigError
from mmdiff.graph.adjacency import Graph, to_adj

Pair = Tuple[Tensor, Tensor]

#: Marks a serialised state whose edge indices are source-to-target.
ORIENTATION_KEY = 'graph.source_to_target'


class GraphStore:
    r"""Holds one graph per modality for training (``train``) and,
    optionally, different ones for evaluation (``eval``).

    Args:
        num_nodes (int): :math:`N` of every graph (:math:`U + I`).
        num_graphs (int): Graphs per set (one per modality).
    """

    def __init__(self, num_nodes: int, num_graphs: int):
        self.num_nodes = num_nodes
        self.num_graphs = num_graphs
        self.train: Optional[List[Pair]] = None
        self.eval: Optional[List[Pair]] = None
        self._adj: Dict[tuple, Graph] = {}

    def __bool__(self) -> bool:
        return self.train is not None

    def set(self, train: List[Pair], eval: Optional[List[Pair]] = None
            ) -> None:
        r"""Replaces the graphs (and drops every cached adjacency)."""
        for graphs in (train, eval):
            if graphs is not None and len(graphs) != self.num_graphs:
                raise ConfigError(f"expected {self.num_graphs} graphs, got "
                                  f"{len(graphs)}")
        self.train, self.eval = list(train), None if eval is None \
            else list(eval)
        self._adj = {}

    def clear(self) -> None:
        self.train = self.eval = None
        self._adj = {}

    def adjacencies(self, for_eval: bool, device: torch.device,
                    layout: str) -> List[Graph]:
        r"""The graphs in the layer format ``layout`` on ``device`` (the
        evaluation set if ``for_eval`` and one exists), built once."""
        use_eval = for_eval and self.eval is not None
        graphs = self.eval if use_eval else self.train
        if graphs is None:
            raise ConfigError("no generated graphs yet")
        out = []
        for k, (ei, w) in enumerate(graphs):
            key = ('eval' if use_eval else 'train', k, str(device), layout)
            if key not in self._adj:
                self._adj[key] = to_adj(ei.to(device), w.to(device),
                                        self.num_nodes, layout)
            out.append(self._adj[key])
        return out

    def apply(self, fn: Callable[[Tensor], Tensor]) -> None:
        r"""Applies a tensor function (``Module._apply``'s ``fn``) to the
        stored graphs: indices keep their integer type."""
        for attr in ('train', 'eval'):
            graphs = getattr(self, attr)
            if graphs is not None:
                setattr(self, attr, [(fn(ei) if not ei.is_floating_point()
                                      else ei, fn(w)) for ei, w in graphs])
        self._adj = {}

    # Serialisation: a flat dict of tensors (torch.load(weights_only=True)).
    def state(self) -> Dict[str, Tensor]:
        r"""``{'graph.<k>.index', 'graph.<k>.weight'}`` and, with an
        evaluation set, ``'eval_graph.<k>.*'``."""
        state: Dict[str, Tensor] = {}
        if self.train is not None:
            state[ORIENTATION_KEY] = torch.tensor(1)
        for prefix, graphs in (('graph', self.train),
                               ('eval_graph', self.eval)):
            for k, (ei, w) in enumerate(graphs or []):
                state[f'{prefix}.{k}.index'] = ei
                state[f'{prefix}.{k}.weight'] = w
        return state

    def load_state(self, state: Mapping[str, Tensor],
                   device: torch.device) -> None:
        r"""Inverse of :meth:`state`.  States written before graphs were
        stored source-to-target (no :data:`ORIENTATION_KEY`) hold the
        (row, col) entries of :math:`G`; they are flipped on load."""
        if not isinstance(state, Mapping):
            raise ConfigError("the generated-graph state must be a dict of "
                              "tensors")
        M = self.num_graphs
        flip = ORIENTATION_KEY not in state
        out = {}
        for prefix in ('graph', 'eval_graph'):
            ks = [k for k in range(M) if f'{prefix}.{k}.index' in state]
            if not ks:
                out[prefix] = None
                continue
            if ks != list(range(M)):
                raise ConfigError(f"the generated-graph state has {prefix} "
                                  f"entries for {len(ks)} of {M} modalities")
            out[prefix] = [
                (state[f'{prefix}.{k}.index'].to(device).long()
                 .flip(0) if flip else
                 state[f'{prefix}.{k}.index'].to(device).long(),
                 state[f'{prefix}.{k}.weight'].to(device).float())
                for k in range(M)]
        self.train, self.eval = out['graph'], out['eval_graph']
        self._adj = {}
