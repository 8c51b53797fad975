import io

import numpy as np
import pytest
import torch

from mmdiff.data.hetero import make_interaction_data
from mmdiff.errors import ConfigError
from mmdiff.graph.adjacency import bipartite_normalized
from mmdiff.nn.denoisers.cnet import MLPBlock
from mmdiff.nn.diffusion import timestep_embedding
from mmdiff.nn.models.base import UserBatch
from mmdiff.nn.models.ld4mrec import LD4MRec, soft_reconstruct

U, I = 60, 40
SMALL = dict(hidden_dim=16, svd_dim=4, batch_size=16)


def make_data(modalities=None, seed=0, U=U, I=I):
    g = np.random.default_rng(seed)
    train, val, test = [], [], []
    for u in range(U):
        items = g.choice(I, size=7, replace=False)
        train += [(u, i) for i in items[:5]]
        val.append((u, items[5]))
        test.append((u, items[6]))
    mods = {m: g.standard_normal((I, d)).astype(np.float32)
            for m, d in (modalities or {}).items()}
    t = lambda e: np.array(e).T  # noqa: E731
    return make_interaction_data(U, I, t(train), t(val), t(test), mods)


@pytest.fixture(scope='module')
def data():
    return make_data({'image': 6, 'text': 3})


def batch_of(model, users):
    users = torch.as_tensor(users)
    return UserBatch(users, model.rows(users))


def test_soft_reconstruction():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(300, 200, generator=g) < 0.3).float()
    p, gamma = 0.1, 0.05
    torch.manual_seed(1)  # a stream independent of x's
    y = soft_reconstruct(x, p, gamma)
    changed = y != x
    frac = changed.float().mean().item()
    assert abs(frac - p) < 4 * (p * (1 - p) / x.numel()) ** 0.5
    assert torch.allclose((y - x)[changed].abs(),
                          torch.full_like(y[changed], gamma))
    assert torch.all(y[changed & (x == 1)] == 1 - gamma)
    assert torch.all(y[changed & (x == 0)] == gamma)
    # both S+ and S- are hit, and the mask is resampled per call
    assert (changed & (x == 1)).any() and (changed & (x == 0)).any()
    assert not torch.equal(soft_reconstruct(x, p, gamma), y)
    assert torch.equal(soft_reconstruct(x, 0.0, gamma), x)


def test_schedule_is_eq3(data):
    model = LD4MRec.from_data(data, **SMALL)
    one_minus = 1 - model.diffusion.alphas_cumprod
    ref = torch.tensor([5e-4, 2.875e-3, 5.25e-3, 7.625e-3, 1e-2],
                       dtype=torch.float64)
    assert torch.allclose(one_minus, ref, rtol=1e-9)


def _manual_loss(model, users, seed, weighting):
    """Algorithm 1 written out, consuming the RNG in the same order."""
    torch.manual_seed(seed)
    x_in = model.rows(users)
    x0 = soft_reconstruct(x_in, model.smooth_prob, model.smooth_gamma)
    t = torch.randint(model.diffusion.steps, (users.numel(),))
    x_t = model.diffusion.q_sample(x0, t)
    t_f = timestep_embedding(t + 1, model.hidden_dim, interleaved=True) + \
        model.input_time[users]
    x_hat = model.cnet(x_t, t_f, model.cf_signal[users],
                       model.preferences(users))
    mse = ((x0 - x_hat) ** 2).mean(1)
    d = model.diffusion
    w = {'posterior_mean': d.posterior_mean_coef1[t] ** 2,
         'snr': d.snr_weights[t],
         'none': torch.ones(t.numel(), dtype=torch.float64)}[weighting]
    return (w.float() * mse).mean()


@pytest.mark.parametrize('weighting', ['posterior_mean', 'snr', 'none'])
def test_loss_weighting(data, weighting):
    torch.manual_seed(0)
    model = LD4MRec.from_data(data, loss_weighting=weighting,
                              smooth_prob=0.2, **SMALL)
    with torch.no_grad():
        model.input_time.normal_()
    users = torch.arange(20)
    torch.manual_seed(5)
    out = model.loss(batch_of(model, users))
    ref = _manual_loss(model, users, 5, weighting)
    assert torch.allclose(out['loss'], ref, rtol=1e-5, atol=1e-7)


def test_importance_sampling_switches_on_after_warm_up(data):
    torch.manual_seed(0)
    model = LD4MRec.from_data(data, steps=3, **SMALL)
    sampler = model.step_sampler
    seen = {}
    orig_sample, orig_update = sampler.sample, sampler.update

    def sample(*a, **kw):
        seen['t'], seen['w'] = orig_sample(*a, **kw)
        return seen['t'], seen['w']

    def update(t, losses):
        seen['losses'] = losses.detach().clone()
        orig_update(t, losses)

    sampler.sample, sampler.update = sample, update
    assert not sampler.warm
    out = model.loss(batch_of(model, torch.arange(60)))  # 60 >= 3 x 10
    assert torch.all(seen['w'] == 1)  # uniform during warm-up
    assert torch.allclose(out['loss'], seen['losses'].float().mean())
    assert sampler.warm
    p = sampler.probabilities()
    assert not torch.allclose(p, torch.full_like(p, 1 / 3))
    out = model.loss(batch_of(model, torch.arange(30)))
    t = seen['t']
    assert torch.allclose(seen['w'], (1 / (p[t] * 3)).float())
    assert torch.allclose(out['loss'],
                          (seen['losses'].float() * seen['w']).mean())
    # importance_sampling=False: uniform steps, weight 1, no history
    m2 = LD4MRec.from_data(data, steps=3, importance_sampling=False, **SMALL)
    m2.loss(batch_of(m2, torch.arange(60)))
    assert int(m2.step_sampler.count.sum()) == 0


def test_one_step_inference_is_deterministic(data):
    torch.manual_seed(0)
    model = LD4MRec.from_data(data, dropout=0.3, **SMALL)
    with torch.no_grad():
        model.input_time.normal_()
    model.eval()
    users = torch.tensor([3, 0, 17])
    state = torch.get_rng_state()
    a = model.score(users)
    assert torch.equal(torch.get_rng_state(), state)  # no noise drawn
    assert torch.equal(a, model.score(users))
    ref = model.cnet(model.rows(users), model.input_time[users],
                     model.cf_signal[users], model.preferences(users))
    assert torch.allclose(a, ref)
    assert a.shape == (3, I)


def test_first_step_inference_time(data):
    torch.manual_seed(0)
    model = LD4MRec.from_data(data, inference_time='first_step', **SMALL)
    with torch.no_grad():
        model.input_time.normal_()
    model.eval()
    users = torch.tensor([4, 2])
    z1 = timestep_embedding(torch.ones(2, dtype=torch.long), 16,
                            interleaved=True)
    ref = model.cnet(model.rows(users), z1 + model.input_time[users],
                     model.cf_signal[users], model.preferences(users))
    assert torch.allclose(model.score(users), ref)
    with pytest.raises(ConfigError, match='inference_time'):
        LD4MRec.from_data(data, inference_time='last', **SMALL)


def test_preferences_are_eq14(data):
    model = LD4MRec.from_data(data, **SMALL)
    lazy = LD4MRec.from_data(data, precompute_preferences=False, **SMALL)
    assert model.precompute_preferences and not lazy.precompute_preferences
    rt = bipartite_normalized(data['user', 'interacts', 'item'].edge_index,
                              U, I).to_dense()
    users = torch.tensor([5, 1, 59, 1])
    for m in ('image', 'text'):
        ref = rt[users] @ data['item'][m]
        assert torch.allclose(model.preferences(users)[m], ref, atol=1e-6)
        assert torch.allclose(lazy.preferences(users)[m], ref, atol=1e-6)
    normed = LD4MRec.from_data(data, preference_norm=True, **SMALL)
    e = normed.preferences(users)['image']
    assert torch.allclose(e.mean(1), torch.zeros(4), atol=1e-5)


def test_modalities_any_number_and_order():
    d = make_data({'a': 3, 'b': 7, 'c': 16, 'd': 1})
    torch.manual_seed(0)
    model = LD4MRec.from_data(d, **SMALL)
    assert model.modality_names == ['a', 'b', 'c', 'd']
    assert list(model.cnet.bg_blocks[0]) == ['a', 'b', 'c', 'd']
    out = model.loss(batch_of(model, torch.arange(10)))
    out['loss'].backward()
    assert torch.isfinite(model.score(torch.arange(5))).all()
    sub = LD4MRec.from_data(d, modalities=['c', 'a'], **SMALL)
    assert sub.modality_names == ['c', 'a']
    assert sub.cnet.modality_dims == {'c': 16, 'a': 3}


def test_ablations(data):
    full = LD4MRec.from_data(data, **SMALL)
    names = {n for n, _ in full.named_parameters()}
    assert any('bg_blocks' in n for n in names)
    assert any('lin_cond' in n for n in names)
    # w/o BG: no BG parameters, preferences unused; works without features
    no_bg = LD4MRec.from_data(data, use_bg=False, **SMALL)
    assert no_bg.cnet.bg_blocks is None and no_bg.modality_names == []
    bare = make_data()
    m = LD4MRec.from_data(bare, use_bg=False, **SMALL)
    assert torch.isfinite(m.loss(batch_of(m, torch.arange(8)))['loss'])
    with pytest.raises(ConfigError, match='use_bg=False'):
        LD4MRec.from_data(bare, **SMALL)
    # w/o BD: DiffRec-style MLP blocks on [x_t ; t_f]
    no_bd = LD4MRec.from_data(data, use_bd=False, **SMALL)
    assert all(isinstance(b, MLPBlock) for b in no_bd.cnet.bd_blocks)
    assert no_bd.cnet.lin_in.in_features == I + 16
    # shared input time, time concatenation
    shared = LD4MRec.from_data(data, shared_input_time=True, **SMALL)
    assert shared.input_time.shape == (1, 16)
    assert full.input_time.shape == (U, 16)
    assert torch.all(full.input_time == 0)
    no_cat = LD4MRec.from_data(data, time_concat=False, **SMALL)
    assert no_cat.cnet.bd_blocks[0].lin_behaviour.in_features == 16
    assert LD4MRec.from_data(data, bg_mode='full', **SMALL) \
        .cnet.bg_blocks[0]['image'].mlp_gamma[2].out_features == 16 * 16


def test_without_sr_targets_the_raw_rows(data):
    users = torch.arange(12)
    torch.manual_seed(0)
    ref = LD4MRec.from_data(data, smooth_prob=0.0, **SMALL)
    state = ref.state_dict()
    losses = {}
    for key, kw in (('ref', dict(smooth_prob=0.0)),
                    ('no_sr', dict(use_sr=False, smooth_prob=1.0,
                                   smooth_gamma=0.5)),
                    ('sr', dict(smooth_prob=1.0, smooth_gamma=0.5))):
        m = LD4MRec.from_data(data, importance_sampling=False, **kw, **SMALL)
        m.load_state_dict(state)
        torch.manual_seed(3)
        losses[key] = m.loss(batch_of(m, users))['loss']
    assert torch.equal(losses['no_sr'], losses['ref'])
    assert not torch.allclose(losses['sr'], losses['ref'])


def test_state_dict_round_trip_weights_only(data):
    torch.manual_seed(0)
    model = LD4MRec.from_data(data, **SMALL)
    model.loss(batch_of(model, torch.arange(60)))['loss'].backward()
    with torch.no_grad():
        model.input_time.normal_()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert {'crow', 'col', 'cf_signal', 'step_sampler.loss_history',
            'step_sampler.count'} <= set(state)
    torch.manual_seed(1)
    other = LD4MRec.from_data(data, **SMALL)
    other.load_state_dict(state)
    model.eval(), other.eval()
    users = torch.arange(U)
    assert torch.equal(model.score(users), other.score(users))
    assert int(other.step_sampler.count.sum()) > 0
    assert torch.equal(other.step_sampler.loss_history,
                       model.step_sampler.loss_history)


def test_unknown_and_bad_hparams(data):
    with pytest.raises(ConfigError, match='hiden'):
        LD4MRec.from_data(data, hiden=3)
    with pytest.raises(ConfigError, match='loss_weighting'):
        LD4MRec.from_data(data, loss_weighting='l1', **SMALL)
    with pytest.raises(ConfigError, match='bg_mode'):
        LD4MRec.from_data(data, bg_mode='diag', **SMALL)
    with pytest.raises(ConfigError):
        LD4MRec.from_data(data, smooth_prob=1.5, **SMALL)
    with pytest.raises(ValueError):
        LD4MRec.from_data(data, modalities=['audio'], **SMALL)


def test_phase_and_repr(data):
    model = LD4MRec.from_data(data, lr=5e-4, weight_decay=1e-5, **SMALL)
    (phase,) = model.phases()
    assert (phase.name, phase.batches, phase.lr, phase.weight_decay,
            phase.batch_size) == ('diffusion', 'users', 5e-4, 1e-5, 16)
    assert len(phase.parameters) == len(list(model.parameters()))
    assert repr(model).startswith('LD4MRec(60, 40, modalities=[image, text]')


def test_fit_reduces_loss_and_gives_finite_metrics(data):
    from mmdiff.train import Trainer
    torch.manual_seed(0)
    model = LD4MRec.from_data(data, hidden_dim=32, svd_dim=8, lr=3e-3,
                              batch_size=20)
    res = Trainer(model, data, epochs=8, batch_size=20, patience=0,
                  seed=0).fit()
    mse = [r['diffusion/mse'] for r in res.history]
    loss = [r['diffusion/loss'] for r in res.history]
    assert mse[-1] < 0.75 * mse[0] and loss[-1] < 0.75 * loss[0]
    assert all(np.isfinite(v) for v in res.test_metrics.values())
    assert 0.0 <= res.test_metrics['recall@20'] <= 1.0
