import math

import pytest
import torch
import torch.nn.functional as F

from mmdiff.nn.contrastive import info_nce


def official(p, q, nodes, temp):
    """``contrastLoss`` of the official DiffMM code (Utils/Utils.py)."""
    p = F.normalize(p, p=2)
    q = F.normalize(q, p=2)
    a, b = p[nodes], q[nodes]
    nume = torch.exp(torch.sum(a * b, dim=-1) / temp)
    deno = torch.exp(a @ q.T / temp).sum(-1)
    return -torch.log(nume / deno).mean()


def test_hand_computation():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    q = torch.tensor([[1.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    nodes = torch.tensor([0, 2, 0])
    tau = 0.5
    pn = [[1, 0], [0, 1], [0.6, 0.8]]
    s = 1 / math.sqrt(2)
    qn = [[s, s], [0, -1], [1, 0]]

    def ell(n):
        dots = [pn[n][0] * q_[0] + pn[n][1] * q_[1] for q_ in qn]
        return -(dots[n] / tau) + math.log(sum(math.exp(d / tau)
                                               for d in dots))
    expected = (ell(0) + ell(2) + ell(0)) / 3      # duplicates kept
    assert float(info_nce(p, q, nodes, tau)) == pytest.approx(expected,
                                                              rel=1e-6)


@pytest.mark.parametrize('temp', [0.5, 0.1, 0.01])
def test_matches_official_loss_and_gradients(temp):
    torch.manual_seed(0)
    p = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    q = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    nodes = torch.randint(40, (64,))                # many repeats
    ours = info_nce(p, q, nodes, temp)
    ref = official(p, q, nodes, temp)
    torch.testing.assert_close(ours, ref)
    g_ours = torch.autograd.grad(ours, [p, q])
    g_ref = torch.autograd.grad(ref, [p, q])
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)


def test_one_direction_only():
    torch.manual_seed(1)
    p, q = torch.randn(10, 4), torch.randn(10, 4)
    nodes = torch.arange(10)
    assert not torch.allclose(info_nce(p, q, nodes, 0.5),
                              info_nce(q, p, nodes, 0.5))


def test_list_of_candidates_is_the_sum_and_chunking_is_exact():
    torch.manual_seed(2)
    p = torch.randn(30, 5, requires_grad=True)
    qs = [torch.randn(30, 5, requires_grad=True) for _ in range(3)]
    nodes = torch.randint(30, (50,))
    total = info_nce(p, qs, nodes, 0.2)
    parts = sum(official(p, q, nodes, 0.2) for q in qs)
    torch.testing.assert_close(total, parts)
    chunked = info_nce(p, qs, nodes, 0.2, chunk_elements=100)
    torch.testing.assert_close(chunked, total)
    g1 = torch.autograd.grad(total, [p, *qs])
    g2 = torch.autograd.grad(info_nce(p, qs, nodes, 0.2,
                                      chunk_elements=100), [p, *qs])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    assert float(info_nce(p, [], nodes, 0.2)) == 0.0


def test_bf16_is_close():
    torch.manual_seed(3)
    p = torch.randn(200, 16, requires_grad=True)
    q = torch.randn(200, 16, requires_grad=True)
    nodes = torch.randint(200, (128,))
    ref = info_nce(p, q, nodes, 0.5)
    out = info_nce(p, q, nodes, 0.5, bf16=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)
    g_ref = torch.autograd.grad(ref, [p, q])
    g_out = torch.autograd.grad(out, [p, q])
    for a, b in zip(g_out, g_ref):
        assert a.dtype == torch.float32
        assert float((a - b).norm() / b.norm()) < 2e-2


def test_errors():
    p = torch.randn(5, 3)
    with pytest.raises(ValueError):
        info_nce(p, torch.randn(5, 4), torch.arange(5), 0.5)
    with pytest.raises(ValueError):
        info_nce(p, p, torch.arange(5), 0.0)


def test_block_sums_of_bf16_are_float32_sums():
    # a bfloat16 similarity block is summed in float32 a few columns at a
    # time (no float32 copy of the whole block): the same sums to float32
    # rounding, for block widths that are and are not multiples of the
    # column step
    from mmdiff.nn.contrastive import SUM_COLUMNS, _block_sums
    g = torch.Generator().manual_seed(0)
    for N in (SUM_COLUMNS - 3, 2 * SUM_COLUMNS, 3 * SUM_COLUMNS + 7):
        e = torch.rand(5, 3 * N, generator=g).bfloat16()
        got = _block_sums(e, 3)
        want = e.float().view(5, 3, N).double().sum(2).float()
        assert got.dtype == torch.float32 and got.shape == (5, 3)
        assert torch.allclose(got, want, rtol=1e-6, atol=0)
    e32 = torch.rand(4, 2 * 700, generator=g)
    assert torch.equal(_block_sums(e32, 2), e32.view(4, 2, 700).sum(2))
