import pytest
import torch

from mmdiff.data.hetero import edges_to_csr
from mmdiff.data.samplers import UserRowSampler
from mmdiff.errors import ConfigError
from mmdiff.nn.diffusion import GaussianDiffusion
from mmdiff.nn.diffusion._fused import fused_denoise
from mmdiff.nn.diffusion.interaction import (
    InteractionDiffusion,
    generate_topk_edges,
    regenerate_graph,
)

U, I = 12, 20


def interactions(seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.unique(torch.randint(U * I, (50,), generator=g))
    edges = torch.stack([keys // I, keys % I])
    return edges, edges_to_csr(edges, U, I)


def make(dims=(16,), dropout=0.5, **kw):
    torch.manual_seed(0)
    return InteractionDiffusion.diffmm(I, hidden_dims=list(dims),
                                       dropout=dropout, **kw)


def test_schedule_weights_are_diffmm_reference():
    diff = make()
    torch.testing.assert_close(
        diff.diffusion.snr_weights.float(),
        torch.tensor([1.0, 8326.2, 760.45, 285.32, 149.49]), rtol=2e-4,
        atol=0)
    torch.testing.assert_close(
        diff.diffusion.posterior_mean_coef1.float(),
        torch.tensor([1.0, 0.83267, 0.45447, 0.31257, 0.23823]), rtol=1e-4,
        atol=0)


def test_loss_matches_dense_formula():
    diff = make(dropout=0.0)
    diff.train()
    x0 = (torch.rand(7, I) < 0.3).float()
    feat = torch.randn(I, 5)
    emb = torch.randn(I, 5)
    torch.manual_seed(123)
    out = diff.loss(x0, feature_proj=feat, item_emb=emb, msi_weight=0.1)
    # Same random draws, written out (ALGORITHMS.md §2.6 step 2).
    torch.manual_seed(123)
    d = diff.diffusion
    t = torch.randint(d.steps, (7,))
    noise = torch.randn_like(x0)
    ab = d.alphas_cumprod[t].float()[:, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    x_hat = diff.denoiser(x_t, t)
    w = d.snr_weights[t].float()
    elbo = (w * ((x0 - x_hat) ** 2).mean(1)).mean()
    msi = ((x_hat @ feat - x0 @ emb) ** 2).mean(1).mean()
    torch.testing.assert_close(out['elbo'], elbo.detach())
    torch.testing.assert_close(out['msi'], msi.detach())
    torch.testing.assert_close(out['loss'], elbo + 0.1 * msi)


def test_loss_gradients_reach_only_the_denoiser():
    diff = make()
    x0 = (torch.rand(6, I) < 0.3).float()
    feat = torch.randn(I, 4, requires_grad=True)
    emb = torch.randn(I, 4, requires_grad=True)
    out = diff.loss(x0, feature_proj=feat, item_emb=emb, msi_weight=1.0)
    out['loss'].backward()
    assert feat.grad is None and emb.grad is None
    assert all(p.grad is not None for p in diff.denoiser.parameters())
    # Without MSI the loss is the ELBO term and msi is reported as 0.
    out = diff.loss(x0, feature_proj=feat, item_emb=emb, msi_weight=0.0)
    assert float(out['msi']) == 0.0
    torch.testing.assert_close(out['loss'].detach(), out['elbo'])


@pytest.mark.parametrize('dims', [(16,), (8, 12)])
@pytest.mark.parametrize('sampling_steps', [0, 2])
def test_fused_reverse_equals_plain_loop(dims, sampling_steps):
    diff = make(dims, sampling_steps=sampling_steps)
    diff.train()   # denoise must not use dropout anyway
    x0 = (torch.rand(9, I) < 0.25).float()
    torch.manual_seed(5)
    fused = diff.denoise(x0)
    torch.manual_seed(5)
    fused_sparse = diff.denoise(x0.to_sparse_csr())
    diff._allow_fused = False
    torch.manual_seed(5)
    plain = diff.denoise(x0)
    # Reference: GaussianDiffusion.reverse with the denoiser in eval mode.
    torch.manual_seed(5)
    diff.denoiser.eval()
    ref = diff.diffusion.reverse(diff.denoiser, x0, sampling_steps)
    diff.denoiser.train()
    torch.testing.assert_close(plain, ref)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_sparse, ref, rtol=1e-5, atol=1e-5)
    assert diff.denoiser.training


def test_fused_cache_follows_weight_updates():
    diff = make()
    x0 = (torch.rand(5, I) < 0.3).float()
    before = diff.denoise(x0)
    opt = torch.optim.Adam(diff.parameters(), lr=0.05)
    diff.loss(x0)['loss'].backward()
    opt.step()
    after = diff.denoise(x0)
    assert not torch.allclose(before, after)
    diff._allow_fused = False
    torch.testing.assert_close(after, diff.denoise(x0), rtol=1e-5,
                               atol=1e-5)


def test_generic_denoiser_runs_in_eval_mode():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(I, I)
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, x, t):
            return self.lin(self.drop(x))

    torch.manual_seed(0)
    diff = InteractionDiffusion(Tiny(), GaussianDiffusion(beta_fixed=1e-4))
    diff.train()
    x0 = (torch.rand(4, I) < 0.3).float()
    torch.testing.assert_close(diff.denoise(x0), diff.denoise(x0))
    assert diff.denoiser.training
    assert torch.isfinite(diff.loss(x0)['loss'])


def test_sampling_noise_and_bad_sampling_steps():
    diff = make(sampling_noise=True)
    x0 = (torch.rand(4, I) < 0.3).float()
    assert not torch.allclose(diff.denoise(x0), diff.denoise(x0))
    with pytest.raises(ConfigError):
        make(sampling_steps=9)


def test_bf16_autocast_is_close_to_float32():
    diff = make()
    x0 = (torch.rand(6, I) < 0.3).float()
    ref = diff.denoise(x0)
    diff.autocast_bf16 = True
    out = diff.denoise(x0)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
    loss = diff.loss(x0, feature_proj=torch.randn(I, 3),
                     item_emb=torch.randn(I, 3), msi_weight=0.1)
    assert loss['loss'].dtype == torch.float32
    loss['loss'].backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for p in diff.denoiser.parameters())


def dense_norm_adj(edges, n_users, n_items):
    n = n_users + n_items
    a = torch.zeros(n, n)
    a[edges[0], n_users + edges[1]] = 1
    a[n_users + edges[1], edges[0]] = 1
    a = a + torch.eye(n)
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None]


@pytest.mark.parametrize('k', [1, 3])
def test_regenerate_graph_topk_and_normalisation(k):
    diff = make()
    edges, csr = interactions()
    gen = generate_topk_edges(diff, csr, U, I, k, batch_size=5)
    assert gen.shape == (2, U * k)
    assert torch.equal(torch.bincount(gen[0], minlength=U),
                       torch.full((U,), k))
    # Reference: top-k of the denoised dense rows.
    rows = csr.to_dense()
    ref_items = diff.denoise(rows).topk(k, dim=1).indices
    assert torch.equal(gen[1].view(U, k).sort(1).values,
                       ref_items.sort(1).values)
    ei, w = regenerate_graph(diff, csr, U, I, k, batch_size=5,
                             keep_rate=1.0)
    assert ei.size(1) == 2 * U * k + U + I
    dense = torch.zeros(U + I, U + I)
    dense[ei[0], ei[1]] = w
    torch.testing.assert_close(dense, dense_norm_adj(gen, U, I))


def test_regenerate_graph_sources_and_exclusion():
    diff = make()
    edges, csr = interactions()
    a = generate_topk_edges(diff, csr, U, I, 2, batch_size=4)
    b = generate_topk_edges(diff, UserRowSampler(csr, 7), U, I, 2,
                            batch_size=4)
    assert torch.equal(a, b)
    ex = generate_topk_edges(diff, csr, U, I, 2, batch_size=4,
                             exclude_observed=True)
    keys = edges[0] * I + edges[1]
    assert not torch.isin(ex[0] * I + ex[1], keys).any()
    with pytest.raises(ConfigError):
        generate_topk_edges(diff, csr, U, I, 0)


def test_regenerate_graph_dropout_expectation():
    diff = make()
    _, csr = interactions()
    full_ei, full_w = regenerate_graph(diff, csr, U, I, 2, keep_rate=1.0)
    n = full_w.numel()
    kept, total = 0, torch.zeros(U + I, U + I)
    runs = 60
    g = torch.Generator().manual_seed(0)
    for _ in range(runs):
        ei, w = regenerate_graph(diff, csr, U, I, 2, keep_rate=0.5,
                                 generator=g)
        kept += w.numel()
        # kept values are the normalised ones rescaled by 1/rho
        lookup = torch.zeros(U + I, U + I)
        lookup[full_ei[0], full_ei[1]] = full_w
        torch.testing.assert_close(w, lookup[ei[0], ei[1]] / 0.5)
        total[ei[0], ei[1]] += w
    assert abs(kept / (runs * n) - 0.5) < 0.03     # sd ~0.007
    full = torch.zeros(U + I, U + I)
    full[full_ei[0], full_ei[1]] = full_w
    # E[dropped] = original (Monte-Carlo over 60 runs; sd ~1.2 %)
    assert abs(float((total / runs).sum() / full.sum()) - 1) < 0.05


@pytest.mark.parametrize('dims', [(16,), (8, 12)])
def test_fused_loss_equals_materialised_loss(dims):
    diff = make(dims)
    x0 = (torch.rand(9, I) < 0.2).float()
    feat, emb = torch.randn(I, 5), torch.randn(I, 5)
    results = []
    for fused in (True, False):
        diff._allow_fused = fused
        diff.zero_grad()
        torch.manual_seed(11)
        out = diff.loss(x0, feature_proj=feat, item_emb=emb, msi_weight=0.3)
        out['loss'].backward()
        results.append((out, [p.grad.clone() for p in diff.parameters()]))
    (a, ga), (b, gb) = results
    for k in ('loss', 'elbo', 'msi'):
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
    for x, y in zip(ga, gb):
        assert float((x - y).norm() / y.norm()) < 1e-5


def test_denoise_topk_float32_equals_denoise_then_topk():
    diff = make()
    x0 = (torch.rand(6, I) < 0.3).float()
    vals, items = diff.denoise_topk(x0, 3)
    ref = diff.denoise(x0).topk(3, dim=1)
    assert torch.equal(items, ref.indices)
    assert torch.allclose(vals, ref.values)
    ex = x0 > 0
    _, items = diff.denoise_topk(x0, 4, exclude=ex)
    assert not ex.gather(1, items).any()
    with pytest.raises(ConfigError, match='k must be'):
        diff.denoise_topk(x0, I + 1)


def test_denoise_topk_bf16_rescores_candidates_in_float32():
    # A wide output layer whose rows differ by less than bf16 rounding:
    # plain bf16 rows tie and topk picks by index; the refined path
    # recovers the float32 order of the bf16 hidden state.
    torch.manual_seed(0)
    n_items = 64
    diff = InteractionDiffusion.diffmm(n_items, hidden_dims=[8],
                                       dropout=0.0)
    last = diff.denoiser.output_layer
    with torch.no_grad():
        base = torch.randn(1, last.weight.size(1))
        last.weight.copy_(base + 1e-4 * torch.randn_like(last.weight))
        last.bias.zero_()
    x0 = (torch.rand(5, n_items) < 0.3).float()
    diff.autocast_bf16 = True
    vals, items = diff.denoise_topk(x0, 2, refine=n_items)
    # exact float32 output layer on the bf16 hidden state
    with torch.autocast('cpu', dtype=torch.bfloat16):
        h = fused_denoise(diff, x0, return_hidden=True)
    c1 = float(diff.diffusion.posterior_mean_coef1[0])
    exact = (h.float() @ last.weight.t() + last.bias) * c1
    ref = exact.topk(2, dim=1)
    assert torch.equal(items, ref.indices)
    assert torch.allclose(vals, ref.values, atol=1e-6)
    plain = diff.denoise(x0)
    assert (plain == plain.max(1, keepdim=True).values).sum() > 5  # ties
    # generate_topk_edges uses the refined selection
    edges = generate_topk_edges(diff, x0.to_sparse_csr(), 5, n_items, 2,
                                batch_size=2)
    assert torch.equal(edges[1].view(5, 2), items)


@pytest.mark.parametrize('fused', [True, False])
def test_importance_sampling_weights_and_history(fused):
    diff = make((16,), dropout=0.0, importance_sampling=True)
    diff._allow_fused = fused
    sampler = diff.step_sampler
    d = diff.diffusion
    x0 = (torch.rand(64, I) < 0.3).float()
    # Warm-up: uniform steps, the loss equals the plain SNR-weighted one,
    # and each row's weighted error enters the history of its step.
    torch.manual_seed(5)
    out = diff.loss(x0)
    torch.manual_seed(5)
    t = torch.randint(d.steps, (64,))
    noise = torch.randn_like(x0)
    ab = d.alphas_cumprod[t].float()[:, None]
    x_hat = diff.denoiser(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t)
    per_row = d.snr_weights[t].float() * ((x0 - x_hat) ** 2).mean(1)
    torch.testing.assert_close(out['elbo'], per_row.mean().detach(),
                               rtol=1e-4, atol=1e-6)
    for s in range(d.steps):
        n = int(sampler.count[s])   # the newest values sit at the end
        got = sampler.loss_history[s, sampler.history - n:].float()
        want = per_row[t == s][-sampler.history:].detach()  # FIFO
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    while not sampler.warm:
        diff.loss(x0)
    # Warm: steps follow the history and every row is divided by p_t T.
    p = sampler.probabilities()
    history = sampler.loss_history.clone()
    torch.manual_seed(9)
    out = diff.loss(x0)
    assert not torch.equal(sampler.loss_history, history)
    sampler.loss_history.copy_(history)   # replay the same draws
    torch.manual_seed(9)
    t, w = sampler.sample(64)
    assert not torch.allclose(w, torch.ones_like(w))
    noise = torch.randn_like(x0)
    ab = d.alphas_cumprod[t].float()[:, None]
    x_hat = diff.denoiser(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t)
    mse = ((x0 - x_hat) ** 2).mean(1)
    want = (d.snr_weights[t].float() * mse / (p[t].float() * d.steps)).mean()
    torch.testing.assert_close(out['elbo'], want.detach(), rtol=1e-4,
                               atol=1e-6)


def test_uniform_sampling_has_no_sampler():
    assert make().step_sampler is None
