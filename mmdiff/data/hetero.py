r"""The canonical data object of :mod:`mmdiff`: a bipartite
:class:`~torch_geometric.data.HeteroData` graph.

Layout (everything is a tensor, so ``data.to(device)`` moves it all):

* ``data['user'].num_nodes = U`` and ``data['item'].num_nodes = I``.
* ``data['user', 'interacts', 'item'].edge_index``: the **training**
  interactions, a ``[2, E_train]`` long tensor (row 0 = user id, row 1 = item
  id), deduplicated and sorted by (user, item).
* ``data['user', 'interacts', 'item'].val_edge_index`` and ``.test_edge_index``:
  the held-out interactions, same format (possibly empty ``[2, 0]``).  They
  live beside the training edges as attributes rather than as edge types so
  that :meth:`HeteroData.to_homogeneous` and message passing never see them.
* Every item modality is one attribute of the item store,
  ``data['item'][name]``, a float tensor of shape ``[I, dim_name]``.  Any
  floating-point 2-D tensor attribute of ``data['item']`` whose first dimension
  is ``I`` is a modality; modalities are enumerated in insertion order by
  :func:`modality_names`.  Adding a modality is adding one attribute
  (or calling :func:`add_modality`, which validates it).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from mmdiff.errors import ConfigError, DataError

EDGE_TYPE = ('user', 'interacts', 'item')
SPLITS = ('train', 'val', 'test')
_SPLIT_ATTR = {'train': 'edge_index', 'val': 'val_edge_index',
               'test': 'test_edge_index'}

ArrayLike = Union[Tensor, np.ndarray]


def _as_edge_index(edges: Optional[ArrayLike], name: str) -> Tensor:
    if edges is None:
        return torch.empty(2, 0, dtype=torch.long)
    if isinstance(edges, np.ndarray):
        edges = torch.from_numpy(np.ascontiguousarray(edges))
    if not isinstance(edges, Tensor):
        raise DataError(f"{name}: expected a tensor or array of shape [2, E], "
                        f"got {type(edges).__name__}")
    if edges.dim() != 2 or edges.size(0) != 2:
        raise DataError(f"{name}: expected shape [2, E] (user ids; item ids), "
                        f"got {tuple(edges.shape)}")
    if edges.is_floating_point():
        if edges.numel() and not torch.all(edges == edges.round()):
            raise DataError(f"{name}: ids must be integers, got non-integer "
                            f"floating-point values")
        edges = edges.long()
    elif edges.dtype == torch.bool or edges.is_complex():
        raise DataError(f"{name}: ids must be integers, got {edges.dtype}")
    return edges.long().cpu()


def _check_range(edges: Tensor, num_users: int, num_items: int,
                 name: str) -> None:
    if edges.numel() == 0:
        return
    for row, kind, n in ((0, 'user', num_users), (1, 'item', num_items)):
        lo, hi = int(edges[row].min()), int(edges[row].max())
        if lo < 0:
            raise DataError(f"{name}: negative {kind} id {lo}")
        if hi >= n:
            raise DataError(f"{name}: {kind} id {hi} is out of range for "
                            f"{n} {kind}s (ids must be in [0, {n - 1}])")


def _dedup_sort(edges: Tensor, num_items: int, name: str,
                warn: bool = True) -> Tensor:
    if edges.size(1) == 0:
        return edges
    key = edges[0] * num_items + edges[1]
    uniq = torch.unique(key)  # sorted
    if warn and uniq.numel() < key.numel():
        warnings.warn(f"{name}: removed {key.numel() - uniq.numel()} duplicate "
                      f"interactions", UserWarning, stacklevel=3)
    return torch.stack([uniq // num_items, uniq % num_items])


def _count_common(a: Tensor, b: Tensor) -> int:
    r"""Number of entries of ``a`` found in the sorted unique keys ``b``."""
    if a.numel() == 0 or b.numel() == 0:
        return 0
    pos = torch.searchsorted(b, a).clamp_(max=b.numel() - 1)
    return int((b[pos] == a).sum())


def validate_features(features: ArrayLike, num_items: int,
                      name: str) -> Tensor:
    r"""Checks one modality's item features and returns them as a contiguous
    ``float32`` tensor of shape ``[num_items, dim]``.

    Raises :class:`~mmdiff.errors.DataError` naming the modality when the
    array is not 2-D, not floating point, has a row count different from
    ``num_items``, has zero columns, or contains NaN/Inf.
    """
    if isinstance(features, np.ndarray):
        if features.dtype == object:
            raise DataError(f"modality '{name}': object arrays are not "
                            f"features (dtype=object)")
        if not np.issubdtype(features.dtype, np.floating):
            raise DataError(f"modality '{name}': features must be floating "
                            f"point, got dtype {features.dtype}")
        features = torch.from_numpy(np.ascontiguousarray(features))
    if not isinstance(features, Tensor):
        raise DataError(f"modality '{name}': expected a tensor or array, got "
                        f"{type(features).__name__}")
    if not features.is_floating_point():
        raise DataError(f"modality '{name}': features must be floating point, "
                        f"got dtype {features.dtype}")
    if features.dim() != 2:
        raise DataError(f"modality '{name}': features must be 2-D "
                        f"[num_items, dim], got {features.dim()}-D shape "
                        f"{tuple(features.shape)}")
    if features.size(0) != num_items:
        raise DataError(f"modality '{name}': {features.size(0)} feature rows "
                        f"but {num_items} items")
    if features.size(1) == 0:
        raise DataError(f"modality '{name}': features have 0 columns")
    features = features.float()
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise DataError(f"modality '{name}': {bad} item rows contain NaN or "
                        f"Inf values")
    return features.contiguous()


def make_interaction_data(
    num_users: int,
    num_items: int,
    train: ArrayLike,
    val: Optional[ArrayLike] = None,
    test: Optional[ArrayLike] = None,
    modalities: Optional[Mapping[str, ArrayLike]] = None,
    *,
    allow_overlap: bool = False,
) -> HeteroData:
    r"""Builds the canonical :class:`HeteroData` from edge lists.

    Args:
        num_users (int): Number of users :math:`U`.
        num_items (int): Number of items :math:`I`.
        train (Tensor or ndarray): Training interactions ``[2, E]`` with
            user ids in row 0 and item ids in row 1.
        val (Tensor or ndarray, optional): Validation interactions.
        test (Tensor or ndarray, optional): Test interactions.
        modalities (dict, optional): ``{name: [I, dim] features}``.
        allow_overlap (bool, optional): If :obj:`False`, a (user, item) pair
            that appears in two splits raises.  (default: :obj:`False`)

    Duplicate interactions inside a split are removed with a warning.  Ids
    out of range, non-integer ids, an empty training split and overlapping
    splits raise :class:`~mmdiff.errors.DataError`.  Users without training
    interactions are kept (they exist in TikTok); they are evaluated like any
    other user that has held-out items.
    """
    for n, what in ((num_users, 'num_users'), (num_items, 'num_items')):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise DataError(f"{what} must be an integer, got {n!r}")
        if n <= 0:
            raise DataError(f"{what} must be positive, got {n}")
    num_users, num_items = int(num_users), int(num_items)

    splits = {}
    for split, edges in (('train', train), ('val', val), ('test', test)):
        e = _as_edge_index(edges, f"{split} interactions")
        _check_range(e, num_users, num_items, f"{split} interactions")
        splits[split] = _dedup_sort(e, num_items, f"{split} interactions")
    if splits['train'].size(1) == 0:
        raise DataError("the training split is empty: at least one training "
                        "interaction is needed")
    if not allow_overlap:
        keys = {s: e[0] * num_items + e[1] for s, e in splits.items()}
        for a, b in (('train', 'val'), ('train', 'test'), ('val', 'test')):
            n = _count_common(keys[a], keys[b])
            if n:
                raise DataError(f"{n} (user, item) pairs appear in both the "
                                f"{a} and the {b} split")

    data = HeteroData()
    data['user'].num_nodes = num_users
    data['item'].num_nodes = num_items
    store = data[EDGE_TYPE]
    store.edge_index = splits['train']
    store.val_edge_index = splits['val']
    store.test_edge_index = splits['test']
    for name, feats in (modalities or {}).items():
        add_modality(data, name, feats)
    return data


def add_modality(data: HeteroData, name: str, features: ArrayLike, *,
                 replace: bool = False) -> None:
    r"""Validates ``features`` (``[I, dim]``) and stores them as the item
    modality ``name``.

    An existing modality (or other item attribute) of that name is replaced
    only with ``replace=True``; otherwise :class:`~mmdiff.errors.ConfigError`
    names the modality and both widths."""
    if not isinstance(name, str) or not name.isidentifier():
        raise DataError(f"modality name must be a Python identifier, got "
                        f"{name!r}")
    if name in ('num_nodes', 'x_label'):
        raise DataError(f"'{name}' is reserved and cannot name a modality")
    x = validate_features(features, num_items(data), name)
    if not replace and name in data['item']:
        old = data['item'][name]
        if name in modality_names(data):
            raise ConfigError(
                f"modality '{name}' already exists with width "
                f"{old.size(1)}; the new features have width {x.size(1)}. "
                f"Pass replace=True to replace it")
        what = (f"tensor of shape {tuple(old.shape)}"
                if isinstance(old, Tensor) else type(old).__name__)
        raise ConfigError(
            f"the item store already holds an attribute '{name}' ({what}), "
            f"not a modality; the new features have width {x.size(1)}. "
            f"Pass replace=True to replace it")
    data['item'][name] = x


def num_users(data: HeteroData) -> int:
    return int(data['user'].num_nodes)


def num_items(data: HeteroData) -> int:
    return int(data['item'].num_nodes)


def modality_names(data: HeteroData) -> List[str]:
    r"""Names of the item modalities of ``data`` in insertion order."""
    n = num_items(data)
    out = []
    for key, value in data['item'].items():
        if (isinstance(value, Tensor) and value.is_floating_point()
                and value.dim() == 2 and value.size(0) == n):
            out.append(key)
    return out


def get_modalities(data: HeteroData,
                   names: Optional[List[str]] = None) -> Dict[str, Tensor]:
    r"""Returns ``{name: [I, dim] tensor}``; ``names`` selects (and orders) a
    subset and raises on an unknown name."""
    available = modality_names(data)
    if names is None:
        names = available
    unknown = [m for m in names if m not in available]
    if unknown:
        raise DataError(f"unknown modality {unknown[0]!r}; this dataset has "
                        f"{available if available else 'no modalities'}")
    return {m: data['item'][m] for m in names}


def edge_index_of(data: HeteroData, split: str = 'train') -> Tensor:
    r"""The ``[2, E]`` (user, item) edges of ``split`` in
    ``{'train', 'val', 'test'}``."""
    if split not in _SPLIT_ATTR:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    store = data[EDGE_TYPE]
    edges = getattr(store, _SPLIT_ATTR[split], None)
    if edges is None:
        return torch.empty(2, 0, dtype=torch.long,
                           device=store.edge_index.device)
    return edges


def interaction_csr(data: HeteroData, split: str = 'train',
                    dtype: torch.dtype = torch.float32) -> Tensor:
    r"""The ``[U, I]`` interaction matrix of ``split`` as a sparse CSR tensor
    with unit values (never densified)."""
    return edges_to_csr(edge_index_of(data, split), num_users(data),
                        num_items(data), dtype=dtype)


def edges_to_csr(edge_index: Tensor, num_rows: int, num_cols: int,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Unit-valued ``[num_rows, num_cols]`` CSR tensor from sorted-or-not
    ``[2, E]`` edges (duplicates must already be removed)."""
    row, col = edge_index
    if row.numel() > 1 and not bool((row[1:] >= row[:-1]).all()):
        perm = torch.argsort(row * num_cols + col)
        row, col = row[perm], col[perm]
    counts = torch.bincount(row, minlength=num_rows)
    crow = torch.zeros(num_rows + 1, dtype=torch.long, device=row.device)
    crow[1:] = torch.cumsum(counts, 0)
    values = torch.ones(col.numel(), dtype=dtype, device=row.device)
    return torch.sparse_csr_tensor(crow, col, values,
                                   size=(num_rows, num_cols))


def csr_entries(csr: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""``(row [nnz], col [nnz], value [nnz])`` of a sparse CSR matrix, in
    storage order (row-major, the order of ``dense.nonzero()`` when the
    columns of every row are sorted) — the inverse of :func:`edges_to_csr`
    without densifying."""
    crow = csr.crow_indices()
    counts = crow[1:] - crow[:-1]
    row = torch.repeat_interleave(
        torch.arange(counts.numel(), device=crow.device), counts)
    return row, csr.col_indices(), csr.values()


def summary(data: HeteroData) -> Dict[str, object]:
    r"""Users, items, interactions per split, density, modalities and dims."""
    U, I = num_users(data), num_items(data)
    out: Dict[str, object] = {'users': U, 'items': I}
    for split in SPLITS:
        out[f'{split}_interactions'] = int(edge_index_of(data, split).size(1))
    train = edge_index_of(data, 'train')
    out['density'] = out['train_interactions'] / float(U * I)
    out['sparsity'] = 1.0 - out['density']
    out['users_without_train'] = int(U - torch.unique(train[0]).numel())
    out['items_without_train'] = int(I - torch.unique(train[1]).numel())
    out['modalities'] = {m: int(x.size(1))
                         for m, x in get_modalities(data).items()}
    return out


def describe(data: HeteroData) -> str:
    r"""A human-readable multi-line version of :func:`summary`."""
    s = summary(data)
    lines = [
        f"users: {s['users']:,}   items: {s['items']:,}",
        f"interactions  train: {s['train_interactions']:,}   "
        f"val: {s['val_interactions']:,}   test: {s['test_interactions']:,}",
        f"sparsity (train): {100 * s['sparsity']:.4f} %",
        f"users without training interactions: {s['users_without_train']:,}; "
        f"items without: {s['items_without_train']:,}",
    ]
    mods = s['modalities']
    if mods:
        lines.append("modalities: " + ", ".join(f"{m} ({d}-d)"
                                                for m, d in mods.items()))
    else:
        lines.append("modalities: none")
    return "\n".join(lines)
