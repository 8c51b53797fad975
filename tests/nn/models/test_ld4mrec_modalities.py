r"""Issue #17: an item modality without signal must not hurt.  On synthetic
data with a planted signal in two modalities, a third modality of pure
noise is screened out by the default configuration of LD4MRec and DiffMM
(``modality_screening``, docs/algorithms.md D24), so validation Recall@20
stays within :data:`TOL` of the model without it, seed for seed, and the
noise modality's relevance weight ends below the informative ones'."""
import numpy as np
import pytest
import torch

from mmdiff.data import make_synthetic
from mmdiff.data.hetero import add_modality, num_items
from mmdiff.nn.models.ld4mrec import LD4MRec
from mmdiff.train.config import preset
from mmdiff.train.run import train_run

#: Largest mean change of validation Recall@20 over the seeds that the noise
#: modality may cause.
TOL = 0.005
SEEDS = (0, 1, 2)
#: short budgets of the synthetic presets
EPOCHS = {'ld4mrec': 12, 'diffmm': 4}


def planted(noise_dim=None, seed=0):
    data = make_synthetic(num_users=300, num_items=240,
                          modalities={'image': 32, 'text': 16},
                          informativeness={'image': 0.8, 'text': 0.4},
                          seed=3)
    if noise_dim:
        g = np.random.default_rng([seed, noise_dim])
        add_modality(data, 'noise', g.standard_normal(
            (num_items(data), noise_dim)).astype(np.float32))
    return data


def fit(model, data, seed, **overrides):
    cfg = preset(model, 'synthetic') | {'epochs': EPOCHS[model],
                                        'patience': 0} | overrides
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result, net, _ = train_run(model, 'synthetic', seed=seed,
                                   device='cpu', cfg=cfg, data=data)
    finally:
        torch.set_num_threads(n)
    return result.metrics_dict()['val/recall@20'], net


@pytest.mark.parametrize('model', ['ld4mrec', 'diffmm'])
def test_noise_modality_costs_nothing_by_default(model):
    assert preset(model, 'synthetic')['modality_screening'] is True
    deltas = []
    for seed in SEEDS:
        full, _ = fit(model, planted(), seed)
        noisy, net = fit(model, planted(noise_dim=128, seed=seed), seed)
        deltas.append(noisy - full)
        rel = net.modality_relevance
        assert list(rel) == ['image', 'text', 'noise']
        # the relevance weight of the noise modality ends below both
        # informative ones, which are kept; the noise modality is not
        assert rel['noise'].score < min(rel['image'].score,
                                        rel['text'].score)
        assert rel['image'].keep and rel['text'].keep
        assert not rel['noise'].keep
        assert net.dropped_modalities == ['noise']
    assert abs(float(np.mean(deltas))) <= TOL
    assert max(abs(d) for d in deltas) <= TOL


def test_screening_builds_the_model_without_the_noise_modality():
    # with every informative modality kept, screening changes nothing: the
    # model with the noise modality is bit for bit the model without it
    torch.manual_seed(0)
    a = LD4MRec.from_data(planted(noise_dim=64), hidden_dim=16, svd_dim=4,
                          modality_screening=True)
    torch.manual_seed(0)
    b = LD4MRec.from_data(planted(), hidden_dim=16, svd_dim=4)
    assert a.modality_names == b.modality_names == ['image', 'text']
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    users = torch.arange(20)
    assert torch.equal(a.score(users), b.score(users))


def test_paper_behaviour_keeps_every_modality():
    data = planted(noise_dim=64)
    net = LD4MRec.from_data(data, hidden_dim=16, svd_dim=4)
    assert net.modality_names == ['image', 'text', 'noise']
    assert net.modality_relevance == {} and net.dropped_modalities == []
    _, dm = fit('diffmm', data, 0, epochs=1, modality_screening=False)
    assert dm.modalities == ['image', 'text', 'noise']


def test_no_relevant_modality_means_without_bg():
    data = make_synthetic(num_users=200, num_items=150, modalities={},
                          seed=2)
    g = np.random.default_rng(0)
    add_modality(data, 'noise', g.standard_normal(
        (num_items(data), 16)).astype(np.float32))
    with pytest.warns(UserWarning, match="no modality passed"):
        net = LD4MRec.from_data(data, hidden_dim=16, svd_dim=4,
                                modality_screening=True)
    assert not net.use_bg and net.modality_names == []
    _, dm = fit('diffmm', data, 0, epochs=1)
    assert dm.modalities == ['noise']  # DiffMM keeps its best modality
