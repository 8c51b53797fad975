import math

import pytest
import torch

from mmdiff.errors import ConfigError
from mmdiff.nn.denoisers import DiffMMDenoiser
from mmdiff.nn.diffusion import timestep_embedding


def reference_forward(den, x, t):
    """ALGORITHMS.md §2.5 written out with the layers' weights."""
    freqs = torch.exp(-math.log(10000) * torch.arange(den.time_dim // 2)
                      / (den.time_dim // 2))
    arg = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)
    if den.time_dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    emb = emb @ den.emb_layer.weight.t() + den.emb_layer.bias
    if den.norm:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    h = torch.cat([x, emb], dim=-1)
    for layer in den.in_layers:
        h = torch.tanh(h @ layer.weight.t() + layer.bias)
    for k, layer in enumerate(den.out_layers):
        h = h @ layer.weight.t() + layer.bias
        if k != len(den.out_layers) - 1:
            h = torch.tanh(h)
    return h


@pytest.mark.parametrize('dims', [[16], [8, 12]])
def test_layer_sizes(dims):
    den = DiffMMDenoiser(30, hidden_dims=dims, time_dim=10)
    out_dims = dims + [30]
    in_dims = out_dims[::-1]
    sizes_in = [(layer.in_features, layer.out_features)
                for layer in den.in_layers]
    sizes_out = [(layer.in_features, layer.out_features)
                 for layer in den.out_layers]
    assert sizes_in == list(zip([in_dims[0] + 10] + in_dims[1:-1],
                                in_dims[1:]))
    assert sizes_out == list(zip(out_dims[:-1], out_dims[1:]))
    assert (den.emb_layer.in_features, den.emb_layer.out_features) == (10, 10)


@pytest.mark.parametrize('dims,time_dim,norm', [([16], 10, False),
                                                 ([8, 12], 7, True)])
def test_forward_matches_reference(dims, time_dim, norm):
    torch.manual_seed(0)
    den = DiffMMDenoiser(25, hidden_dims=dims, time_dim=time_dim, norm=norm)
    x = torch.randn(6, 25)
    t = torch.tensor([0, 1, 2, 3, 4, 2])
    den.eval()
    out = den(x, t)
    assert out.shape == (6, 25)
    torch.testing.assert_close(out, reference_forward(den, x, t))
    # Training mode with dropout 0 is the same function.
    den.dropout = 0.0
    den.train()
    torch.testing.assert_close(den(x, t), out)


def test_last_layer_is_linear_and_unbounded():
    torch.manual_seed(0)
    den = DiffMMDenoiser(10, hidden_dims=[8]).eval()
    with torch.no_grad():
        den.output_layer.bias.fill_(5.0)
    out = den(torch.zeros(3, 10), torch.zeros(3, dtype=torch.long))
    assert out.min() > 1.0   # a tanh output could not exceed 1


def test_pieces_compose_to_forward():
    torch.manual_seed(0)
    den = DiffMMDenoiser(20, hidden_dims=[16]).eval()
    x = (torch.rand(5, 20) < 0.3).float()
    t = torch.tensor([4, 3, 2, 1, 0])
    pre = den.input_projection(x) + den.step_term(t)
    torch.testing.assert_close(den.output(den.hidden(pre)), den(x, t))
    # The sparse input path gives the same projection.
    torch.testing.assert_close(den.input_projection(x.to_sparse_csr()),
                               den.input_projection(x))
    # The step term uses the cos|sin embedding of §1.6.
    emb = den.emb_layer(timestep_embedding(t, 10, interleaved=False))
    w = den.first_layer.weight[:, 20:]
    torch.testing.assert_close(den.step_term(t),
                               emb @ w.t() + den.first_layer.bias)


def test_dropout_only_in_training_calls():
    torch.manual_seed(0)
    den = DiffMMDenoiser(40, hidden_dims=[16], dropout=0.5)
    x = torch.rand(4, 40)
    t = torch.zeros(4, dtype=torch.long)
    den.eval()
    torch.testing.assert_close(den(x, t), den(x, t))
    den.train()
    a, b = den(x, t), den(x, t)
    assert not torch.allclose(a, b)


def test_dropout_keeps_half_and_rescales():
    torch.manual_seed(0)
    den = DiffMMDenoiser(2000, hidden_dims=[4], time_dim=2, dropout=0.5)
    x = torch.rand(8, 2000)
    t = torch.zeros(8, dtype=torch.long)
    den.train()
    torch.manual_seed(1)
    out = den(x, t)
    # The same draw, written out: keep w.p. 1 - p, scale by 1 / (1 - p).
    torch.manual_seed(1)
    keep = torch.rand(x.shape) >= 0.5
    dropped = x * keep * 2.0
    den.eval()
    torch.testing.assert_close(out, den(dropped, t))
    frac = float(keep.float().mean())
    assert abs(frac - 0.5) < 0.02          # 16,000 draws: sd 0.004


@torch.no_grad()
def test_init_statistics():
    torch.manual_seed(0)
    den = DiffMMDenoiser(600, hidden_dims=[400], time_dim=10)
    first = den.first_layer
    std = math.sqrt(2.0 / (first.in_features + first.out_features))
    assert abs(float(first.weight.std()) / std - 1) < 0.02
    assert abs(float(first.weight.mean())) < 1e-3
    assert abs(float(den.output_layer.bias.std()) / 1e-3 - 1) < 0.15
    old = first.weight.clone()
    den.reset_parameters()
    assert not torch.equal(old, first.weight)


def test_norm_makes_output_scale_invariant():
    torch.manual_seed(0)
    den = DiffMMDenoiser(12, hidden_dims=[8], norm=True).eval()
    x = torch.rand(3, 12)
    t = torch.ones(3, dtype=torch.long)
    torch.testing.assert_close(den(x, t), den(7.0 * x, t))


def test_repr_and_errors():
    den = DiffMMDenoiser(30, hidden_dims=[16], time_dim=10)
    assert repr(den) == ('DiffMMDenoiser(30, hidden_dims=[16], time_dim=10, '
                         'dropout=0.5, norm=False)')
    with pytest.raises(ConfigError):
        DiffMMDenoiser(30, hidden_dims=[])
    with pytest.raises(ConfigError):
        DiffMMDenoiser(30, dropout=1.0)
    with pytest.raises(ConfigError):
        DiffMMDenoiser(30, time_dim=0)
    with pytest.raises(ValueError):
        den(torch.zeros(2, 29), torch.zeros(2, dtype=torch.long))


def test_first_layer_function_gradients():
    from mmdiff.nn.diffusion._fused import FirstLayer
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float64)
    e = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FirstLayer.apply, (x, e, w, b))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(FirstLayer.apply, (x, e, w, b))


def test_training_gradients_match_plain_linear_layers():
    torch.manual_seed(0)
    den = DiffMMDenoiser(33, hidden_dims=[16], dropout=0.0).train()
    x = torch.rand(6, 33)
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    (den(x, t) ** 2).sum().backward()
    got = [p.grad.clone() for p in den.parameters()]
    den.zero_grad()
    (reference_forward(den, x, t) ** 2).sum().backward()
    for a, p in zip(got, den.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_mm_aligned():
    from mmdiff.nn.diffusion._fused import mm_aligned
    torch.manual_seed(0)
    a, b, bias = torch.randn(600, 40), torch.randn(40, 1750), torch.randn(1750)
    out = mm_aligned(a, b, bias)
    assert out.shape == (600, 1750) and out.stride(0) % 16 == 0
    torch.testing.assert_close(out, a @ b + bias)
    torch.testing.assert_close(mm_aligned(a, b), a @ b)
    small = mm_aligned(a[:3], b)
    torch.testing.assert_close(small, a[:3] @ b)
