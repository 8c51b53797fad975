import pytest
import torch
import torch.nn.functional as F

from mmdiff.errors import ConfigError
from mmdiff.nn.denoisers.cnet import BDBlock, BGBlock, CNet, MLPBlock

B, I, D, C = 4, 12, 8, 3
DIMS = {'text': 5, 'image': 7, 'audio': 2}


def _inputs(seed=0, dims=DIMS):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, I, generator=g)
    t = torch.randn(B, D, generator=g)
    c = torch.randn(B, C, generator=g)
    e = {m: torch.randn(B, d, generator=g) for m, d in dims.items()}
    return x, t, c, e


def test_bd_block_equations():
    torch.manual_seed(0)
    blk = BDBlock(D, C)
    h, t, c = torch.randn(B, D), torch.randn(B, D), torch.randn(B, C)
    W1, W2, W3 = blk.lin_behaviour, blk.lin_cond, blk.lin_gate
    assert W1.weight.shape == (D, 2 * D)  # [h ; t_f] concatenation (D12)
    b = torch.tanh(torch.cat([h, t], 1) @ W1.weight.t() + W1.bias)
    cc = torch.tanh(c @ W2.weight.t() + W2.bias)
    g = torch.sigmoid(t @ W3.weight.t() + W3.bias)
    assert torch.allclose(blk(h, t, c), b * (1 - g) + cc * g, atol=1e-6)
    blk2 = BDBlock(D, C, time_concat=False)
    assert blk2.lin_behaviour.weight.shape == (D, D)
    b2 = torch.tanh(blk2.lin_behaviour(h))
    g2 = torch.sigmoid(blk2.lin_gate(t))
    assert torch.allclose(blk2(h, t, c),
                          b2 * (1 - g2) + torch.tanh(blk2.lin_cond(c)) * g2)
    assert repr(blk) == 'BDBlock(8, cond_dim=3, time_dim=8, time_concat=True)'


def test_bg_block_identity_init_and_affine():
    blk = BGBlock(5, D)
    h, e = torch.randn(B, D), torch.randn(B, 5)
    assert torch.equal(blk(h, e), h)  # DF-GAN identity start
    for p in blk.parameters():
        torch.nn.init.normal_(p)
    gamma = blk.mlp_gamma[2](torch.relu(blk.mlp_gamma[0](e)))
    beta = blk.mlp_beta[2](torch.relu(blk.mlp_beta[0](e)))
    assert torch.allclose(blk(h, e), gamma * h + beta, atol=1e-5)
    blk.reset_parameters()
    assert torch.equal(blk(h, e), h)
    assert repr(blk) == "BGBlock(5, 8, mode='channel')"


def test_bg_block_full_mode():
    blk = BGBlock(5, D, mode='full')
    assert blk.mlp_gamma[2].out_features == D * D
    h, e = torch.randn(B, D), torch.randn(B, 5)
    assert torch.allclose(blk(h, e), h, atol=1e-6)
    for p in blk.parameters():
        torch.nn.init.normal_(p)
    W = blk.mlp_gamma(e).view(B, D, D)
    ref = torch.einsum('bij,bj->bi', W, h) + blk.mlp_beta(e)
    assert torch.allclose(blk(h, e), ref, atol=1e-4)
    with pytest.raises(ConfigError):
        BGBlock(5, D, mode='diag')


def test_cnet_forward_matches_manual_composition():
    torch.manual_seed(1)
    net = CNet(I, DIMS, hidden_dim=D, svd_dim=C, num_blocks=2)
    for blocks in net.bg_blocks:  # leave the identity init
        for blk in blocks.values():
            for p in blk.parameters():
                torch.nn.init.normal_(p, std=0.3)
    x, t, c, e = _inputs()
    lrelu = lambda z: F.leaky_relu(z, 0.2)  # noqa: E731
    h = net.lin_in(x)
    for l in range(2):
        if l:
            h = lrelu(h)
        h = net.bd_blocks[l](h, t, c)
        for m in DIMS:  # modality order of the dict
            h = net.bg_blocks[l][m](lrelu(h), e[m])
    ref = net.lin_out(h)
    out = net(x, t, c, e)
    assert out.shape == (B, I)
    assert torch.allclose(out, ref, atol=1e-6)
    # a sequence of preferences in the same order works too
    assert torch.allclose(net(x, t, c, [e[m] for m in DIMS]), ref)
    # all conditions matter
    assert not torch.allclose(net(x, t, c * 2, e), out)
    assert not torch.allclose(net(x, t * 2, c, e), out)
    e2 = dict(e, audio=e['audio'] + 1)
    assert not torch.allclose(net(x, t, c, e2), out)


def test_ablation_without_bg():
    net = CNet(I, DIMS, hidden_dim=D, svd_dim=C, use_bg=False)
    assert net.bg_blocks is None and net.modality_dims == {}
    x, t, c, _ = _inputs()
    h = net.lin_in(x)
    h = net.bd_blocks[0](h, t, c)
    h = net.bd_blocks[1](F.leaky_relu(h, 0.2), t, c)
    assert torch.allclose(net(x, t, c), net.lin_out(h), atol=1e-6)
    assert not any('bg' in n for n, _ in net.named_parameters())
    # no modalities at all is fine without BG, and an error with BG
    CNet(I, {}, hidden_dim=D, svd_dim=C, use_bg=False)
    with pytest.raises(ConfigError, match='use_bg'):
        CNet(I, {}, hidden_dim=D, svd_dim=C)


def test_ablation_without_bd():
    net = CNet(I, DIMS, hidden_dim=D, svd_dim=C, use_bd=False)
    assert all(isinstance(b, MLPBlock) for b in net.bd_blocks)
    assert net.lin_in.in_features == I + D  # DiffRec-style [x_t ; z_t]
    x, t, c, e = _inputs()
    out = net(x, t, None, e)
    assert torch.allclose(net(x, t, c, e), out)  # c_u is not used
    lrelu = lambda z: F.leaky_relu(z, 0.2)  # noqa: E731
    h = net.lin_in(torch.cat([x, t], 1))
    for l in range(2):
        if l:
            h = lrelu(h)
        h = torch.tanh(net.bd_blocks[l].lin(h))
        for m in DIMS:
            h = net.bg_blocks[l][m](lrelu(h), e[m])
    assert torch.allclose(out, net.lin_out(h), atol=1e-6)
    assert not any('lin_cond' in n or 'lin_gate' in n
                   for n, _ in net.named_parameters())


@pytest.mark.parametrize('dims', [{'a': 1}, {'a': 3, 'b': 9},
                                  {'a': 2, 'b': 4, 'c': 6, 'd': 8}])
def test_any_number_of_modalities(dims):
    net = CNet(I, dims, hidden_dim=D, svd_dim=C, num_blocks=3)
    x, t, c, e = _inputs(dims=dims)
    out = net(x, t, c, e)
    out.sum().backward()
    assert out.shape == (B, I)
    assert all(p.grad is not None for p in net.parameters())
    assert len(net.bg_blocks) == 3 and list(net.bg_blocks[0]) == list(dims)
    with pytest.raises(ValueError, match='missing'):
        net(x, t, c, {})


def test_shared_time_broadcast_dropout_and_repr():
    net = CNet(I, {'a': 2}, hidden_dim=D, svd_dim=C, dropout=0.5)
    x, t, c, e = _inputs(dims={'a': 2})
    net.eval()
    a = net(x, t[:1], c, e)
    b = net(x, t[:1].expand(B, -1), c, e)
    assert torch.allclose(a, b)
    assert torch.equal(net(x, t, c, e), net(x, t, c, e))  # eval: no dropout
    assert repr(net) == ('CNet(12, modalities={a: 2}, hidden_dim=8, svd_dim=3, '
                         'num_blocks=2, use_bd=True, use_bg=True)')
    with pytest.raises(ConfigError):
        CNet(I, {'a': 2}, hidden_dim=0)
    with pytest.raises(ConfigError):
        CNet(I, {'a': 2}, bg_mode='x')


def test_initialisation():
    torch.manual_seed(0)
    net = CNet(400, {'a': 2}, hidden_dim=300, svd_dim=C)
    w = net.lin_in.weight.detach()
    std = (2.0 / (400 + 300)) ** 0.5  # Xavier-normal
    assert abs(float(w.std()) - std) / std < 0.05
    assert float(net.lin_in.bias.detach().std()) < 0.003  # N(0, 0.001)
