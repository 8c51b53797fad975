r"""Sparse CSR interaction rows take a path that never densifies them
(noisy rows built from the stored entries, loss terms from the entries);
it must give exactly the numbers of the dense rows."""
from __future__ import annotations

import pytest
import torch

from mmdiff.data.samplers import dense_rows, sparse_rows
from mmdiff.nn.denoisers import DiffMMDenoiser
from mmdiff.nn.diffusion import GaussianDiffusion, InteractionDiffusion


def _rows(B=7, I=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = (torch.rand(B, I, generator=g) < 0.2).float()
    dense[0] = 0                                   # an empty row
    return dense, dense.to_sparse_csr()


def test_q_sample_sparse_equals_dense():
    gd = GaussianDiffusion(0.1, 1e-4, 0.02, steps=5)
    dense, csr = _rows()
    t = torch.tensor([0, 1, 2, 3, 4, 2, 1])
    noise = torch.randn(dense.shape)
    assert torch.equal(gd.q_sample(dense, t, noise),
                       gd.q_sample(csr, t, noise))
    torch.manual_seed(1)
    a = gd.q_sample(dense, t)
    torch.manual_seed(1)
    b = gd.q_sample(csr, t)
    assert torch.equal(a, b)


def test_diffusion_loss_and_grads_sparse_equal_dense():
    dense, csr = _rows()
    I = dense.size(1)
    out = []
    for rows in (dense, csr):
        torch.manual_seed(0)
        diff = InteractionDiffusion(
            DiffMMDenoiser(I, hidden_dims=[16], dropout=0.5),
            GaussianDiffusion(0.1, 1e-4, 0.02, steps=5))
        feat, emb = torch.randn(I, 4), torch.randn(I, 4)
        torch.manual_seed(5)
        res = diff.loss(rows, feature_proj=feat, item_emb=emb,
                        msi_weight=0.1)
        res['loss'].backward()
        out.append((res['loss'].detach(),
                    [p.grad.clone() for p in diff.parameters()]))
    assert torch.equal(out[0][0], out[1][0])
    for g0, g1 in zip(out[0][1], out[1][1]):
        assert torch.equal(g0, g1)


def test_sampler_sparse_rows_match_dense_rows():
    dense, csr = _rows(B=30, I=11, seed=2)
    crow, col = csr.crow_indices(), csr.col_indices()
    users = torch.tensor([5, 0, 29, 5, 17])
    s = sparse_rows(crow, col, users, 11)
    assert s.layout == torch.sparse_csr
    assert torch.equal(s.to_dense(), dense_rows(crow, col, users, 11))
    assert torch.equal(s.to_dense(), dense[users])


def test_dropout_in_place_matches_mask_formula():
    den = DiffMMDenoiser(13, hidden_dims=[8], dropout=0.3).train()
    x = torch.randn(6, 13)
    t = torch.zeros(6, dtype=torch.long)
    torch.manual_seed(4)
    h = den.hidden_state(x, t)
    torch.manual_seed(4)
    keep = torch.rand(x.shape) >= 0.3
    xd = (x * keep).mul_(1.0 / 0.7)
    den2 = DiffMMDenoiser(13, hidden_dims=[8], dropout=0.0).train()
    den2.load_state_dict(den.state_dict())
    assert torch.equal(h, den2.hidden_state(xd, t))


def test_chunked_gather_index_add_is_the_one_shot_result():
    # LinearOutputLoss gathers rows per non-zero in chunks; every output
    # row must receive the same additions in the same order (bit for bit)
    from mmdiff.nn.diffusion._fused import gather_index_add_
    g = torch.Generator().manual_seed(0)
    n, rows_out, rows_src, d = 1000, 37, 53, 19
    index = torch.randint(rows_out, (n,), generator=g)
    src_index = torch.randint(rows_src, (n,), generator=g)
    src = torch.randn(rows_src, d, generator=g)
    scale = torch.randn(n, generator=g)
    base = torch.randn(rows_out, d, generator=g)
    for sc in (None, scale):
        part = src[src_index] if sc is None else src[src_index] * sc[:, None]
        want = base.clone().index_add_(0, index, part)
        for chunk in (1, 7, 64, n, 5 * n):
            got = gather_index_add_(base.clone(), index, src, src_index, sc,
                                    max_elements=chunk * d)
            assert torch.equal(got, want), chunk


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_gram_matrix_from_strips_is_the_plain_product(dtype):
    # LinearOutputLoss forms W^T W from the upper block triangle: the same
    # dot products as the plain product, exactly symmetric
    from mmdiff.nn.diffusion._fused import GRAM_MIN, gram_matrix
    g = torch.Generator().manual_seed(0)
    for n, k in ((700, GRAM_MIN), (301, 257), (1200, 600)):
        w = (torch.randn(n, k, generator=g) * 0.05).to(dtype)
        want = w.t() @ w
        for strips in (2, 3, 4, 7):
            got = gram_matrix(w, strips)
            assert got.dtype == dtype and got.shape == (k, k)
            assert torch.equal(got, got.t())
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 \
                else dict(rtol=1e-2, atol=1e-3)
            torch.testing.assert_close(got.float(), want.float(), **tol)
    # small matrices (and one strip) take the plain product
    w = torch.randn(50, GRAM_MIN - 1, generator=g).to(dtype)
    assert torch.equal(gram_matrix(w), w.t() @ w)
    assert torch.equal(gram_matrix(w[:, :8], strips=1), w[:, :8].t() @
                       w[:, :8])
