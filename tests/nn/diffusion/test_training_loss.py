r"""The one diffusion training loss (:meth:`GaussianDiffusion.training_loss`):
checked against the formula written out here, and shown to be the code path
of DiffRec, DiffMM and LD4MRec."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_data
from mmdiff.nn.diffusion import GaussianDiffusion, ImportanceStepSampler
from mmdiff.nn.models import DiffMM, DiffRec, LD4MRec, UserBatch


@pytest.mark.parametrize('weighting', ['snr', 'posterior_mean', 'none'])
@pytest.mark.parametrize('soft_start', [False, True])
def test_matches_formula(weighting, soft_start):
    gd = GaussianDiffusion(0.1, 1e-4, 0.02, steps=4, beta_fixed=1e-4)
    B, I = 6, 9
    x0 = (torch.rand(B, I) < 0.4).float()
    x_start = torch.rand(B, I) if soft_start else None
    W = torch.randn(I, I)
    predict = lambda x, t: x @ W + t[:, None].float()        # noqa: E731
    torch.manual_seed(3)
    out = gd.training_loss(x0, predict, x_start=x_start, weighting=weighting)
    # the formula, literally (same random draws: steps, then the noise)
    torch.manual_seed(3)
    t = torch.randint(4, (B,))
    eps = torch.randn(B, I)
    ab = gd.alphas_cumprod[t][:, None]
    src = x0 if x_start is None else x_start
    x_t = (ab.sqrt() * src + (1 - ab).sqrt() * eps).float()
    mse = ((x0 - predict(x_t, t)) ** 2).mean(1)
    if weighting == 'snr':
        snr = gd.alphas_cumprod / (1 - gd.alphas_cumprod)
        w = torch.cat([torch.ones(1, dtype=torch.float64),
                       snr[:-1] - snr[1:]])[t].float()
    elif weighting == 'posterior_mean':
        abp = gd.alphas_cumprod_prev
        w = (gd.betas * abp.sqrt() / (1 - gd.alphas_cumprod))[t] \
            .pow(2).float()
    else:
        w = torch.ones(B)
    assert torch.equal(out['t'], t)
    torch.testing.assert_close(out['x_t'], x_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out['mse'], mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out['loss'], (w * mse).mean(), rtol=1e-5,
                               atol=1e-7)


def test_importance_sampling_reweights_and_records():
    gd = GaussianDiffusion(0.1, 1e-4, 0.02, steps=3)
    sampler = ImportanceStepSampler(3, history=2)
    x0 = (torch.rand(64, 5) < 0.5).float()
    predict = lambda x, t: torch.zeros_like(x)                # noqa: E731
    while not sampler.warm:
        gd.training_loss(x0, predict, step_sampler=sampler)
    p = sampler.probabilities()
    torch.manual_seed(0)
    out = gd.training_loss(x0, predict, step_sampler=sampler)
    t = out['t']
    w = gd.snr_weights[t].float()
    mse = (x0 ** 2).mean(1)
    expected = (w * mse / (p[t].float() * 3)).mean()
    torch.testing.assert_close(out['loss'], expected, rtol=1e-5, atol=0)
    # the newest history entries are the reweighted losses before 1/(p T)
    last = sampler.loss_history[:, -1]
    for s in t.unique():
        rows = (t == s).nonzero().flatten()
        torch.testing.assert_close(
            last[s].float(), (w[rows[-1]] * mse[rows[-1]]).float())


def test_every_diffusion_model_uses_it(monkeypatch):
    calls = []
    original = GaussianDiffusion.training_loss

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get('weighting', 'snr'))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GaussianDiffusion, 'training_loss', spy)
    data = tiny_data(num_users=20, num_items=15,
                     modalities={'image': 4, 'text': 3})
    users = torch.arange(8)
    rows = torch.zeros(8, 15)
    ei = data['user', 'interacts', 'item'].edge_index
    keep = ei[0] < 8
    rows[ei[0, keep], ei[1, keep]] = 1
    batch = UserBatch(users, rows)

    DiffRec.from_data(data, hidden_dims=[8]).loss(batch)
    assert calls == ['snr']
    DiffMM.from_data(data, embedding_dim=4, hidden_dims=[8]) \
        .diffusion_loss(batch)
    assert calls == ['snr'] * 3                     # one per modality
    LD4MRec.from_data(data, hidden_dim=8, svd_dim=2).loss(batch)
    assert calls == ['snr'] * 3 + ['posterior_mean']
