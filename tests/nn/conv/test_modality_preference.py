import pytest
import torch
from torch_geometric import EdgeIndex

from mmdiff.errors import DataError
from mmdiff.graph import (
    bipartite_normalized,
    sym_norm_weights,
    user_item_to_item_user,
)
from mmdiff.nn.conv import ModalityPreference

U, I, F = 7, 5, 3


def _graph(seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = (torch.rand(U, I, generator=g) < 0.4).float()
    dense[3] = 0  # a user without interactions
    dense[0, 4] = 1
    ui = dense.nonzero().t().contiguous()  # (user, item), sorted by user
    x = torch.randn(I, F, generator=g)
    return dense, ui, x


def _dense_loop(dense, x):
    """Eq. 14 literally: e_u = sum_{i in N_u} x_i / sqrt(|N_u| |N_i|)."""
    out = torch.zeros(U, x.size(1))
    nu, ni = dense.sum(1), dense.sum(0)
    for u in range(U):
        for i in range(I):
            if dense[u, i]:
                out[u] += x[i] / torch.sqrt(nu[u] * ni[i])
    return out


def test_eq14_against_dense_loop():
    dense, ui, x = _graph()
    ref = _dense_loop(dense, x)
    conv = ModalityPreference()
    out = conv(x, user_item_to_item_user(ui), size=(I, U))
    assert out.shape == (U, F)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.all(out[3] == 0)
    assert torch.allclose(conv.forward_user_item(x, ui, U), ref, atol=1e-6)


def test_adjacency_formats_agree():
    dense, ui, x = _graph(1)
    ref = _dense_loop(dense, x)
    iu = user_item_to_item_user(ui)
    conv = ModalityPreference()
    # raw adjacency as torch sparse adj_t [U, I] in three layouts
    coo = torch.sparse_coo_tensor(ui, torch.ones(ui.size(1)), (U, I))
    for adj_t in (coo, coo.to_sparse_csr(), coo.coalesce().to_sparse_csc()):
        assert torch.allclose(conv(x, adj_t), ref, atol=1e-6)
    # pre-normalised R~ (CSR) without re-normalisation
    rt = bipartite_normalized(ui, U, I)
    assert torch.allclose(ModalityPreference(normalize=False)(x, rt), ref,
                          atol=1e-6)
    # normalised edge weights, normalize=False
    w = sym_norm_weights(iu[0], iu[1], I, U)
    out = ModalityPreference(normalize=False)(x, iu, size=(I, U),
                                              edge_weight=w)
    assert torch.allclose(out, ref, atol=1e-6)
    # EdgeIndex, fused (sorted by col) and unfused (sorted by row)
    ei = EdgeIndex(iu, sparse_size=(I, U)).sort_by('col')[0]
    assert torch.allclose(conv(x, ei), ref, atol=1e-6)
    ei_row = EdgeIndex(iu, sparse_size=(I, U)).sort_by('row')[0]
    assert torch.allclose(conv(x, ei_row), ref, atol=1e-6)


def test_fused_path_is_taken_for_sparse_and_sorted_edge_index():
    dense, ui, x = _graph(6)
    iu = user_item_to_item_user(ui)
    conv = ModalityPreference()
    calls = []
    conv.register_message_and_aggregate_forward_hook(
        lambda *args: calls.append(1))
    conv(x, iu, size=(I, U))
    assert calls == []  # plain edge_index: gather + scatter
    conv(x, EdgeIndex(iu, sparse_size=(I, U)).sort_by('col')[0])
    conv(x, bipartite_normalized(ui, U, I))
    assert calls == [1, 1]


def test_edge_weights_use_weighted_degrees():
    dense, ui, x = _graph(2)
    w = torch.rand(ui.size(1)) + 0.5
    A = torch.zeros(U, I)
    A[ui[0], ui[1]] = w
    du, di = A.sum(1), A.sum(0)
    norm = A / torch.sqrt(du[:, None] * di[None]).clamp(min=1e-30)
    ref = norm @ x
    conv = ModalityPreference()
    out = conv(x, user_item_to_item_user(ui), size=(I, U), edge_weight=w)
    assert torch.allclose(out, ref, atol=1e-6)
    adj_t = torch.sparse_coo_tensor(ui, w, (U, I)).to_sparse_csr()
    assert torch.allclose(conv(x, adj_t), ref, atol=1e-6)


def test_cached_and_reset():
    dense, ui, x = _graph(3)
    conv = ModalityPreference(cached=True)
    iu = user_item_to_item_user(ui)
    first = conv(x, iu, size=(I, U))
    assert conv._cached_edge_index is not None
    # the cache is reused even when another graph is passed
    other = iu[:, :1]
    assert torch.allclose(conv(x, other, size=(I, U)), first)
    conv.reset_parameters()
    assert conv._cached_edge_index is None
    assert not torch.allclose(conv(x, other, size=(I, U)), first)


def test_gradients_flow_to_features_and_repr():
    dense, ui, x = _graph(4)
    x = x.clone().requires_grad_()
    rt = bipartite_normalized(ui, U, I)
    ModalityPreference(normalize=False)(x, rt).sum().backward()
    # d/dx sum(R~ x) = column sums of R~
    colsum = rt.to_dense().sum(0)
    assert torch.allclose(x.grad, colsum[:, None].expand(-1, F), atol=1e-6)
    assert repr(ModalityPreference()) == \
        'ModalityPreference(normalize=True, cached=False)'


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_dtype_follows_features(dtype):
    dense, ui, x = _graph(5)
    out = ModalityPreference().forward_user_item(x.to(dtype), ui, U)
    assert out.dtype == dtype


def test_orientation_is_checked_or_right():
    r"""The data's own (user, item) edges either give the right answer
    (through forward_user_item) or a clear error naming the orientation,
    never a bare IndexError or a silently transposed product."""
    dense, ui, x = _graph(3)
    ref = _dense_loop(dense, x)
    conv = ModalityPreference()
    # no size: the orientation of a plain edge_index is not declared
    with pytest.raises(DataError, match=r'\(item, user\)'):
        conv(x, ui)
    # (user, item) edges declared as (item, user) with U != I: ids out of
    # range on the item side, named as such
    with pytest.raises(DataError, match='row 0 = item ids'):
        conv(x, ui, size=(I, U))
    # a sparse matrix of the wrong shape
    R = torch.sparse_coo_tensor(ui, torch.ones(ui.size(1)), (U, I))
    with pytest.raises(DataError, match=r'\[num_users, num_items\]'):
        conv(x, R.t().coalesce())
    # an EdgeIndex whose source side is not the items
    with pytest.raises(DataError, match='sparse_size'):
        conv(x, EdgeIndex(ui, sparse_size=(U, I)))
    # the supported ways agree with the dense formula
    assert torch.allclose(conv.forward_user_item(x, ui, U), ref, atol=1e-6)
    assert torch.allclose(conv(x, user_item_to_item_user(ui), size=(I, U)),
                          ref, atol=1e-6)
    assert torch.allclose(conv(x, R), ref, atol=1e-6)
