r"""The denoiser contract: any module ``(x_t, t) -> x0_hat`` works in
:class:`InteractionDiffusion`, DiffMM and DiffRec (training, graph
regeneration, scoring); fused kernels are opt-in capabilities, detected and
never applied to a subclass that overrides ``forward``; a denoiser swapped
after the trainer was built stops training loudly."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_data
from mmdiff.errors import TrainingError
from mmdiff.nn.denoisers import (
    Denoiser,
    DiffMMDenoiser,
    denoiser_capabilities,
)
from mmdiff.nn.diffusion import GaussianDiffusion, InteractionDiffusion
from mmdiff.nn.models import DiffMM, DiffRec
from mmdiff.train import Trainer


class CountingMLP(torch.nn.Module):
    r"""A plain two-layer MLP, unrelated to mmdiff's classes, that counts
    its calls by mode."""

    def __init__(self, num_items: int, hidden: int = 16):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(num_items + 1, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, num_items))
        self.calls = {'train': 0, 'eval': 0}

    def forward(self, x_t, t):
        self.calls['train' if self.training else 'eval'] += 1
        return self.net(torch.cat([x_t, t[:, None].float()], dim=1))


class MyDiffMMDenoiser(DiffMMDenoiser):
    r"""A subclass that changes ``forward``: it must be called as written,
    not bypassed by the fused kernels of its parent."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def forward(self, x_t, t):
        self.calls += 1
        return super().forward(x_t, t) * 0.5


def small_data():
    return tiny_data(num_users=30, num_items=20, per_user=6,
                     modalities={'image': 6, 'text': 5})


def test_protocol_and_capabilities():
    assert isinstance(CountingMLP(5), Denoiser)
    assert denoiser_capabilities(CountingMLP(5)) == frozenset()
    assert denoiser_capabilities(DiffMMDenoiser(5, [4])) == \
        {'linear_output', 'linear_input'}
    # the row normalisation is not linear in x: no fused reverse process
    assert denoiser_capabilities(DiffMMDenoiser(5, [4], norm=True)) == \
        {'linear_output'}
    # overriding forward withdraws every capability ...
    assert denoiser_capabilities(MyDiffMMDenoiser(5, [4])) == frozenset()

    # ... unless the subclass declares them again itself
    class Declared(MyDiffMMDenoiser):
        denoiser_capabilities = frozenset({'linear_output'})

        def forward(self, x_t, t):
            return DiffMMDenoiser.forward(self, x_t, t)

    assert denoiser_capabilities(Declared(5, [4])) == {'linear_output'}

    class Overrides(DiffMMDenoiser):
        def hidden(self, pre):
            return super().hidden(pre) * 2

    assert denoiser_capabilities(Overrides(5, [4])) == frozenset()


def test_plain_mlp_trains_and_regenerates_in_diffmm():
    data = small_data()
    made = []

    def factory(num_items, modality):
        made.append(modality)
        return CountingMLP(num_items)

    torch.manual_seed(0)
    model = DiffMM.from_data(data, embedding_dim=8, batch_size=16,
                             denoiser_factory=factory)
    assert made == ['image', 'text']
    dens = [d.denoiser for d in model.denoisers]
    before = [p.detach().clone() for d in dens for p in d.parameters()]
    trainer = Trainer(model, data, epochs=1, batch_size=16, patience=0,
                      ks=(5,), monitor='recall@5')
    trainer.fit()
    steps = model.diffusion.steps
    batches = -(-30 // 16)
    for d in dens:
        # training: one call per user batch; regeneration: T reverse steps
        # per user batch, in evaluation mode, at least once per epoch
        assert d.calls['train'] == batches
        assert d.calls['eval'] >= batches * steps
        assert d.calls['eval'] % (batches * steps) == 0
    after = [p.detach() for d in dens for p in d.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert model.graphs.train is not None


def test_subclass_with_own_forward_is_used_not_bypassed():
    data = small_data()
    torch.manual_seed(0)
    model = DiffMM.from_data(
        data, embedding_dim=8, batch_size=16,
        denoiser_factory=lambda n, m: MyDiffMMDenoiser(n, [8], 4))
    out = model.diffusion_loss(_user_batch(model, range(10)))
    out['loss'].backward()
    assert all(d.denoiser.calls == 1 for d in model.denoisers)
    model.regenerate_graphs()
    steps = model.diffusion.steps
    assert all(d.denoiser.calls == 1 + 2 * steps for d in model.denoisers)
    # the same rows through the subclass in eval mode give the generated
    # graph (top-1 item per user) that the plain reverse loop gives
    diff = model.denoisers[0]
    rows = model.interaction_matrix().to_dense()[:4]
    diff.denoiser.eval()
    ref = diff.diffusion.reverse(diff.denoiser, rows)
    torch.testing.assert_close(diff.denoise(rows), ref)


def _user_batch(model, users):
    from mmdiff.nn.models import UserBatch
    users = torch.tensor(list(users))
    return UserBatch(users, model.interaction_matrix().to_dense()[users])


def test_interaction_diffusion_and_diffrec_take_any_denoiser():
    I = 20
    den = CountingMLP(I)
    diff = InteractionDiffusion(den, GaussianDiffusion(beta_fixed=1e-4))
    x0 = (torch.rand(5, I) < 0.3).float()
    diff.loss(x0)['loss'].backward()
    assert den.calls == {'train': 1, 'eval': 0}
    assert den.net[0].weight.grad is not None
    out = diff.denoise(x0)
    assert out.shape == (5, I) and den.calls['eval'] == 5
    assert den.training                       # mode restored

    data = small_data()
    model = DiffRec.from_data(data, denoiser_factory=lambda n, m:
                              CountingMLP(n))
    model.score(torch.arange(4))
    assert model.diffusion.denoiser.calls['eval'] == 5
    with pytest.raises(Exception, match='torch.nn.Module'):
        InteractionDiffusion(lambda x, t: x, GaussianDiffusion())


def test_denoiser_swapped_after_trainer_is_built_is_loud():
    data = small_data()
    torch.manual_seed(0)
    model = DiffMM.from_data(data, embedding_dim=8, hidden_dims=[8],
                             batch_size=16)
    trainer = Trainer(model, data, epochs=1, batch_size=16, patience=0,
                      ks=(5,), monitor='recall@5')
    model.denoisers[0].denoiser = CountingMLP(20)
    with pytest.raises(TrainingError, match="phase\\(s\\) diffusion "
                                            "changed after the Trainer"):
        trainer.fit()


def test_parameters_outside_every_phase_warn():
    class Partial(DiffRec):
        def phases(self):
            phases = super().phases()
            phases[0].parameters = list(self.diffusion.parameters())
            return phases

    model = Partial.from_data(small_data(), hidden_dims=[8])
    model.extra = torch.nn.Linear(2, 2)       # in no phase's optimiser
    with pytest.warns(UserWarning, match='belong to no training phase'):
        Trainer(model, small_data(), epochs=1)
