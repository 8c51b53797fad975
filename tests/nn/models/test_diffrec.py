import numpy as np
import pytest
import torch

from mmdiff.errors import ConfigError
from mmdiff.nn.models import DiffRec, get_model_class
from mmdiff.train import Trainer
from mmdiff.train.config import preset

from conftest import tiny_data


@pytest.fixture
def data():
    return tiny_data(num_users=60, num_items=40, per_user=8)


def test_registry_and_preset():
    assert get_model_class('diffrec') is DiffRec
    cfg = preset('diffrec', 'baby')
    # the official amazon-book_clean command line
    assert (cfg['lr'], cfg['hidden_dims'], cfg['steps'], cfg['noise_scale'],
            cfg['noise_min'], cfg['noise_max']) == (5e-5, [1000], 5, 1e-4,
                                                    5e-4, 5e-3)


def test_schedule_and_scoring_from_clean_rows(data):
    torch.manual_seed(0)
    model = DiffRec.from_data(data, hidden_dims=[16], time_dim=4)
    d = model.diffusion.diffusion
    assert float(d.betas[0]) == pytest.approx(1e-5)
    # betas from the linear variances, then beta_0 fixed to 1e-5 (DiffRec)
    var = 1e-4 * np.linspace(5e-4, 5e-3, 5)
    betas = np.concatenate([[1e-5], 1 - (1 - var[1:]) / (1 - var[:-1])])
    np.testing.assert_allclose(d.alphas_cumprod.numpy(),
                               np.cumprod(1 - betas), rtol=1e-9)
    model.eval()
    users = torch.tensor([0, 3, 7])
    scores = model.score(users)
    assert scores.shape == (3, 40)
    # the reverse process from the clean training rows, no randomness
    torch.testing.assert_close(scores, model.diffusion.denoise(
        model.rows(users)))
    torch.testing.assert_close(scores, model.score(users))
    assert model.rows(users).sum(1).tolist() == [6.0, 6.0, 6.0]


def test_bad_hparams(data):
    with pytest.raises(ConfigError, match='unknown hyper-parameter'):
        DiffRec.from_data(data, hidden=3)
    with pytest.raises(ConfigError, match='dropout'):
        DiffRec.from_data(data, dropout=1.0)
    with pytest.raises(ConfigError, match='dims'):
        DiffRec.from_data(data, dims=[])


def test_fit_learns_and_round_trips(data, tmp_path):
    torch.manual_seed(0)
    model = DiffRec.from_data(data, hidden_dims=[32], time_dim=4, lr=3e-3)
    res = Trainer(model, data, epochs=12, batch_size=20, patience=0,
                  seed=0).fit()
    elbo = [r['diffusion/elbo'] for r in res.history]
    assert elbo[-1] < 0.5 * elbo[0]
    assert model.diffusion.step_sampler.warm
    assert all(np.isfinite(v) for v in res.test_metrics.values())
    path = tmp_path / 'm.pt'
    torch.save(model.state_dict(), path)
    other = DiffRec.from_data(data, hidden_dims=[32], time_dim=4)
    other.load_state_dict(torch.load(path, weights_only=True))
    model.eval(), other.eval()
    users = torch.arange(10)
    torch.testing.assert_close(other.score(users), model.score(users))
    torch.testing.assert_close(other.diffusion.step_sampler.loss_history,
                               model.diffusion.step_sampler.loss_history)
