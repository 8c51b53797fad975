r"""The optional torch-scatter / torch-sparse extension ("fast" extra): our
layers accept its SparseTensor when it is installed (CI installs it), give the
same results as the pure-torch paths, and keep working when PyG is told the
extensions are missing (PyG's own ``disable_extensions`` test fixture)."""
import pytest
import torch
import torch_geometric.typing as pyg_typing

from mmdiff.graph import normalized_edges
from mmdiff.nn.conv import ModalityPreference, NormalizedPropagation
from mmdiff.graph import to_adj


def graph(U=9, I=7, E=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    key = torch.unique(torch.randint(U * I, (E,), generator=g))
    return torch.stack([key // I, key % I]), U, I


@pytest.fixture
def disable_extensions(monkeypatch):
    monkeypatch.setattr(pyg_typing, 'WITH_TORCH_SCATTER', False)
    monkeypatch.setattr(pyg_typing, 'WITH_TORCH_SPARSE', False)


def reference(ui, U, I):
    ei, w = normalized_edges(ui, U, I, add_self_loops=True)
    N = U + I
    A = torch.zeros(N, N)
    A[ei[0], ei[1]] = w
    return ei, w, A


@pytest.mark.skipif(not pyg_typing.WITH_TORCH_SPARSE,
                    reason='torch-sparse not installed')
def test_sparse_tensor_propagation_matches_dense():
    from torch_sparse import SparseTensor
    ui, U, I = graph()
    ei, w, A = reference(ui, U, I)
    N = U + I
    x = torch.randn(N, 5)
    adj_t = SparseTensor(row=ei[1], col=ei[0], value=w, sparse_sizes=(N, N))
    out = NormalizedPropagation()(x, adj_t)
    assert torch.allclose(out, A @ x, atol=1e-5)


@pytest.mark.skipif(not pyg_typing.WITH_TORCH_SPARSE,
                    reason='torch-sparse not installed')
def test_sparse_tensor_modality_preference_matches_dense():
    from torch_sparse import SparseTensor
    ui, U, I = graph(seed=1)
    feats = torch.randn(I, 6)
    R = torch.zeros(U, I)
    R[ui[0], ui[1]] = 1
    du, di = R.sum(1, keepdim=True), R.sum(0, keepdim=True)
    Rn = torch.where(R > 0, R / (du * di).clamp(min=1e-12).sqrt(),
                     torch.zeros_like(R))
    adj_t = SparseTensor.from_dense(Rn)
    out = ModalityPreference(normalize=False)(feats, adj_t)
    assert torch.allclose(out, Rn @ feats, atol=1e-5)


@pytest.mark.parametrize('layout', ['edge_index', 'csr', 'edge_index_obj'])
def test_layers_work_without_extensions(disable_extensions, layout):
    ui, U, I = graph(seed=2)
    ei, w, A = reference(ui, U, I)
    N = U + I
    x = torch.randn(N, 4, requires_grad=True)
    g = to_adj(ei, w, N, layout)
    conv = NormalizedPropagation()
    out = conv(x, *g) if isinstance(g, tuple) else conv(x, g)
    assert torch.allclose(out, A @ x, atol=1e-5)
    out.sum().backward()
    assert torch.allclose(x.grad, A.t() @ torch.ones(N, 4), atol=1e-5)
