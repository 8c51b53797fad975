import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmdiff.errors import ConfigError
from mmdiff.graph.adjacency import bipartite_normalized
from mmdiff.nn.svd import svd_user_factors, truncated_svd


def _data(U, I, density=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(U, I, generator=g) < density).float()
    d[0] = 0  # user without interactions
    d[1, :3] = 1
    return d, d.nonzero().t().contiguous()


@pytest.mark.parametrize('shape', [(60, 40), (40, 60)])
@pytest.mark.parametrize('method', ['lowrank', 'arpack'])
def test_matches_dense_svd(shape, method):
    U, I = shape
    dense, ui = _data(U, I)
    Rt = bipartite_normalized(ui, U, I, dtype=torch.float64).to_dense()
    uu, ss, _ = torch.linalg.svd(Rt)
    k = 8
    u, s, v = truncated_svd(ui, k, U, I, method=method, niter=8)
    tol = 1e-8 if method == 'arpack' else 1e-3
    assert torch.allclose(s, ss[:k], atol=tol)
    assert abs(float(ss[0]) - 1.0) < 1e-8  # top singular value of R~ is 1
    # The factors span the same subspace: compare c c^T (sign/rotation free).
    c = svd_user_factors(ui, U, I, rank=k, method=method, niter=8).double()
    ref = uu[:, :k] * ss[:k]
    assert torch.allclose(c @ c.t(), ref @ ref.t(), atol=10 * tol)
    assert torch.all(c[0] == 0)
    # orthonormal singular vectors, u^T R~ v = diag(s)
    assert torch.allclose(u.t() @ u, torch.eye(k, dtype=u.dtype), atol=1e-6)
    assert torch.allclose(u.t() @ Rt @ v, torch.diag(s), atol=10 * tol)


def test_raw_matrix_and_scalings():
    U, I = 30, 20
    dense, ui = _data(U, I, seed=1)
    uu, ss, _ = torch.linalg.svd(dense.double())
    u, s, _ = truncated_svd(ui, 5, U, I, normalized=False, method='arpack')
    assert torch.allclose(s, ss[:5], atol=1e-8)
    c1 = svd_user_factors(ui, U, I, 5, normalized=False, method='arpack')
    c2 = svd_user_factors(ui, U, I, 5, normalized=False, method='arpack',
                          scaling='sqrt_sigma')
    c3 = svd_user_factors(ui, U, I, 5, normalized=False, method='arpack',
                          scaling='none')
    assert torch.allclose(c1, (u * s).float(), atol=1e-6)
    assert torch.allclose(c2, (u * s.sqrt()).float(), atol=1e-6)
    assert torch.allclose(c3, u.float(), atol=1e-6)
    assert c1.dtype == torch.float32 and c1.shape == (U, 5)


def test_input_formats_agree():
    U, I = 25, 18
    dense, ui = _data(U, I, seed=2)
    ref = svd_user_factors(ui, U, I, rank=4, seed=3)
    coo = torch.sparse_coo_tensor(ui, torch.ones(ui.size(1)), (U, I))
    scipy_m = sp.coo_matrix((np.ones(ui.size(1)), ui.numpy()), shape=(U, I))
    for m in (coo, coo.to_sparse_csr(), scipy_m, scipy_m.tocsr()):
        assert torch.allclose(svd_user_factors(m, rank=4, seed=3), ref,
                              atol=1e-6)


def test_deterministic_for_a_seed():
    U, I = 50, 45
    _, ui = _data(U, I, seed=4)
    torch.manual_seed(1)
    a = svd_user_factors(ui, U, I, rank=6, seed=7)
    torch.manual_seed(2)  # the global RNG must not matter
    b = svd_user_factors(ui, U, I, rank=6, seed=7)
    assert torch.equal(a, b)


def test_rank_above_matrix_size_pads_zeros():
    U, I = 12, 5
    _, ui = _data(U, I, density=0.5, seed=5)
    c = svd_user_factors(ui, U, I, rank=8)
    assert c.shape == (U, 8)
    assert torch.all(c[:, 5:] == 0)
    ca = svd_user_factors(ui, U, I, rank=8, method='arpack')
    assert torch.all(ca[:, 4:] == 0)


def test_bad_arguments():
    _, ui = _data(10, 8)
    with pytest.raises(ConfigError):
        svd_user_factors(ui, 10, 8, rank=0)
    with pytest.raises(ConfigError):
        svd_user_factors(ui, 10, 8, scaling='cube')
    with pytest.raises(ConfigError):
        svd_user_factors(ui, 10, 8, method='qr')
    with pytest.raises(ValueError):
        svd_user_factors(ui, 5, 8)


def test_many_components_warn():
    # 10 disjoint user-item pairs: R~ = identity block, all singular values 1
    ui = torch.stack([torch.arange(10), torch.arange(10)])
    with pytest.warns(UserWarning, match='connected components'):
        u, s, _ = truncated_svd(ui, 8, 12, 10, method='arpack')
    assert torch.allclose(s, torch.ones(8, dtype=s.dtype))
    dense, ui = _data(30, 20, density=0.4, seed=6)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        truncated_svd(ui, 8, 30, 20)
