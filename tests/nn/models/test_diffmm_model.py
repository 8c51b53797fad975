import io
import math

import pytest
import torch
import torch.nn.functional as F

from mmdiff.data.hetero import make_interaction_data
from mmdiff.errors import ConfigError
from mmdiff.nn.models.base import TripletBatch, UserBatch
from mmdiff.nn.models.diffmm import DiffMM

U, I = 24, 18
DIMS = {'image': 12, 'text': 20, 'audio': 6}
SMALL = dict(embedding_dim=8, hidden_dims=[16], batch_size=16)


def synthetic(modalities=('image', 'text', 'audio'), seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.unique(torch.randint(U * I, (160,), generator=g))
    keys = keys[torch.randperm(keys.numel(), generator=g)]
    n = keys.numel()
    split = [keys[:int(0.7 * n)], keys[int(0.7 * n):int(0.85 * n)],
             keys[int(0.85 * n):]]
    e = [torch.stack([k // I, k % I]) for k in split]
    feats = {m: torch.randn(I, DIMS[m], generator=g) for m in modalities}
    return make_interaction_data(U, I, *e, modalities=feats)


def triplets(data, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = data['user', 'interacts', 'item'].edge_index
    idx = torch.randint(ei.size(1), (n,), generator=g)
    return TripletBatch(ei[0, idx], ei[1, idx],
                        torch.randint(I, (n,), generator=g))


def user_batch(model, users=None):
    users = torch.arange(U) if users is None else users
    rows = model.interaction_matrix().to_dense()[users]
    return UserBatch(users, rows)


def dense(entries):
    """The matrix G (out = G @ x) of a source-to-target graph."""
    ei, w = entries
    out = torch.zeros(U + I, U + I)
    out[ei[1], ei[0]] = w
    return out


def official_contrast(p, q, nodes, temp):
    p, q = F.normalize(p), F.normalize(q)
    a = p[nodes]
    nume = torch.exp((a * q[nodes]).sum(-1) / temp)
    deno = torch.exp(a @ q.T / temp).sum(-1)
    return -torch.log(nume / deno).mean()


def official_bpr_loss(model, batch):
    """The official Main.py / Model.py computation with dense matrices."""
    g = dense((model.main_index, model.main_weight))
    gms = [dense(x) for x in model.graphs.train]
    eu, ei = model.user_emb, model.item_emb
    w = torch.softmax(model.modal_weight, 0)
    feats = [F.normalize(f) for f in model.transformed_features()]
    zs, views = 0, []
    for m, f in enumerate(feats):
        h = g @ torch.cat([eu, f])
        h = h + g @ torch.cat([h[:U], ei])
        h = h + model.ris_adj_lambda * (gms[m] @ torch.cat([eu, ei]))
        zs = zs + w[m] * h
        v = gms[m] @ torch.cat([eu, f])
        lst = [v]
        for _ in range(model.num_layers):
            lst.append(g @ lst[-1])
        views.append(sum(lst))
    lst = [zs]
    for _ in range(model.num_layers):
        lst.append(g @ lst[-1])
    e = sum(lst) + model.ris_lambda * F.normalize(zs)
    usr, itm = e[:U], e[U:]
    anc, pos, neg = usr[batch.users], itm[batch.pos], itm[batch.neg]
    diff = (anc * pos).sum(-1) - (anc * neg).sum(-1)
    bpr = -diff.sigmoid().log().sum() / model.batch_size
    reg = model.reg * (eu.norm(2).square() + ei.norm(2).square())
    t, r = model.temperature, model.ssl_reg
    cl = torch.zeros(())
    if model.cl_method == 0:
        for a in range(len(views)):
            for b in range(a + 1, len(views)):
                cl = cl + r * (official_contrast(views[a][:U], views[b][:U],
                                                 batch.users, t) +
                               official_contrast(views[a][U:], views[b][U:],
                                                 batch.pos, t))
    else:
        for v in views:
            cl = cl + r * (official_contrast(usr, v[:U], batch.users, t) +
                           official_contrast(itm, v[U:], batch.pos, t))
    return bpr, reg, cl


@pytest.mark.parametrize('mods', [('image',), ('image', 'text'),
                                  ('image', 'text', 'audio')])
@pytest.mark.parametrize('cl_method', [0, 1])
def test_bpr_loss_matches_official_computation(mods, cl_method):
    data = synthetic(mods)
    torch.manual_seed(0)
    model = DiffMM.from_data(data, cl_method=cl_method, trans=[1, 0, 1][
        :len(mods)], reg=1e-3, ssl_reg=0.1, **SMALL)
    model.regenerate_graphs()
    batch = triplets(data)
    out = model.bpr_loss(batch)
    bpr, reg, cl = official_bpr_loss(model, batch)
    torch.testing.assert_close(out['bpr'], bpr.detach())
    torch.testing.assert_close(out['reg'], reg.detach())
    torch.testing.assert_close(out['cl'], cl.detach())
    torch.testing.assert_close(out['loss'], bpr + reg + cl)
    if len(mods) == 1 and cl_method == 0:
        assert float(out['cl']) == 0.0


def test_hparams_and_modalities():
    data = synthetic()
    with pytest.raises(ConfigError, match='bogus'):
        DiffMM.from_data(data, bogus=1, **SMALL)
    no_mod = synthetic(())
    with pytest.raises(ConfigError):
        DiffMM.from_data(no_mod, **SMALL)
    with pytest.raises(ConfigError):
        DiffMM.from_data(data, modalities=[], **SMALL)
    with pytest.raises(ConfigError):
        DiffMM.from_data(data, cl_method=2, **SMALL)
    with pytest.raises(ConfigError):
        DiffMM.from_data(data, keep_rate=0.0, **SMALL)
    with pytest.raises(ConfigError):
        DiffMM.from_data(data, trans=[0, 1], **SMALL)
    m = DiffMM.from_data(data, modalities=['text', 'image'], **SMALL)
    assert m.modalities == ['text', 'image']
    assert m.feature_0.shape == (I, DIMS['text'])
    assert DiffMM.from_data(data, trans=2, **SMALL).trans == \
        ['proj', 'linear', 'linear']
    assert DiffMM.from_data(data, trans={'audio': 'linear'},
                            **SMALL).trans == ['proj', 'proj', 'linear']
    assert DiffMM.from_data(data, hidden_dims='[16]').hidden_dims == [16]
    assert DiffMM.name == 'diffmm' and DiffMM.requires_modalities
    assert repr(m).startswith('DiffMM(24, 18, modalities=[text:20, '
                              'image:12]')


def test_initialisation():
    torch.manual_seed(0)
    m = DiffMM.from_data(synthetic(), **SMALL)
    bound = math.sqrt(6 / (U + 8))
    assert float(m.user_emb.detach().abs().max()) <= bound
    torch.testing.assert_close(m.modal_weight, torch.full((3,), 1 / 3))
    assert m.transforms[0].kind == 'proj'
    assert not hasattr(m.transforms[0], 'linear')


def test_phases():
    m = DiffMM.from_data(synthetic(), **SMALL)
    phases = m.phases()
    assert [(p.name, p.batches, p.batch_size) for p in phases] == \
        [('diffusion', 'users', 16), ('bpr', 'triplets', 16)]
    diff_p, main_p = (set(map(id, p.parameters)) for p in phases)
    assert not diff_p & main_p
    assert diff_p | main_p == set(map(id, m.parameters()))
    again = m.phases()
    assert [list(map(id, p.parameters)) for p in again] == \
        [list(map(id, p.parameters)) for p in phases]
    assert phases[0].after is not None
    assert phases[0].after_name == 'regenerate'


def test_diffusion_loss_trains_only_denoisers():
    torch.manual_seed(0)
    m = DiffMM.from_data(synthetic(), **SMALL)
    out = m.diffusion_loss(user_batch(m))
    assert set(out) == {'loss', 'elbo', 'msi'}
    assert float(out['msi']) > 0
    out['loss'].backward()
    assert all(p.grad is None for p in m.main_parameters())
    assert all(p.grad is not None for p in m.denoiser_parameters())


def test_regeneration_edge_counts_and_dropout():
    torch.manual_seed(0)
    m = DiffMM.from_data(synthetic(), rebuild_k=2, keep_rate=1.0, **SMALL)
    stats = m.regenerate_graphs()
    assert 0.0 <= stats['regen_observed'] <= 1.0
    for ei, w in m.graphs.train:
        assert ei.size(1) == 2 * U * 2 + U + I
        assert torch.equal(torch.bincount(ei[0][ei[1] >= U],
                                          minlength=U + I)[:U],
                           torch.full((U,), 2))
    m = DiffMM.from_data(synthetic(), keep_rate=0.5, **SMALL)
    m.regenerate_graphs()
    for ei, w in m.graphs.train:
        assert ei.size(1) < 2 * U + U + I
    m = DiffMM.from_data(synthetic(), keep_rate=0.5,
                         eval_uses_dropped_graph=False, **SMALL)
    m.regenerate_graphs()
    assert all(e.size(1) == 2 * U + U + I for e, _ in m.graphs.eval)


def test_ablation_switches_change_behaviour():
    data = synthetic()
    batch = triplets(data)

    def build(**kw):
        torch.manual_seed(0)
        model = DiffMM.from_data(data, cl_method=1, **SMALL, **kw)
        return model

    full = build()
    torch.manual_seed(1)
    base = full.bpr_loss(batch)
    assert float(base['cl']) > 0

    no_cl = build(use_contrastive=False)
    torch.manual_seed(1)
    out = no_cl.bpr_loss(batch)
    assert float(out['cl']) == 0.0
    torch.testing.assert_close(out['bpr'], base['bpr'])

    no_graph = build(use_modal_graphs=False)
    assert [p.name for p in no_graph.phases()] == ['bpr']
    assert no_graph.modal_graphs() is None
    assert len(list(no_graph.denoisers.parameters())) == 0
    out = no_graph.bpr_loss(batch)
    assert not torch.allclose(out['bpr'], base['bpr'])

    no_msi = build(use_msi=False)
    out = no_msi.diffusion_loss(user_batch(no_msi))
    assert float(out['msi']) == 0.0
    torch.testing.assert_close(out['loss'].detach(), out['elbo'])


def test_checkpoint_round_trip_weights_only():
    data = synthetic()
    torch.manual_seed(0)
    m = DiffMM.from_data(data, eval_uses_dropped_graph=False, **SMALL)
    m.regenerate_graphs()
    m.eval()
    m.prepare_scoring()
    users = torch.arange(U)
    scores = m.score(users)
    assert scores.shape == (U, I)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(v, torch.Tensor)
               for v in state['_extra_state'].values())
    torch.manual_seed(1)
    m2 = DiffMM.from_data(data, eval_uses_dropped_graph=False, **SMALL)
    m2.load_state_dict(state)
    for (a, b), (c, d) in zip(m.graphs.train, m2.graphs.train):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert m2.graphs.eval is not None
    m2.eval()
    m2.prepare_scoring()
    torch.testing.assert_close(m2.score(users), scores)
    # A model before any regeneration has an empty extra state.
    assert DiffMM.from_data(data, **SMALL).get_extra_state() == {}


def test_scores_before_training_and_bf16_options():
    data = synthetic()
    torch.manual_seed(0)
    m = DiffMM.from_data(data, precision='bf16', cl_method=1, **SMALL)
    s = m.score(torch.tensor([0, 3]))          # regenerates lazily
    assert s.shape == (2, I) and torch.isfinite(s).all()
    out = m.diffusion_loss(user_batch(m))
    out['loss'].backward()
    out = m.bpr_loss(triplets(data))
    out['loss'].backward()
    assert torch.isfinite(out['loss'])
    assert m.user_emb.grad.dtype == torch.float32


@pytest.mark.parametrize('layout', ['csr', 'edge_index'])
def test_sparse_layouts_agree(layout):
    data = synthetic()
    batch = triplets(data)
    torch.manual_seed(0)
    a = DiffMM.from_data(data, cl_method=1, **SMALL)
    torch.manual_seed(0)
    b = DiffMM.from_data(data, cl_method=1, **SMALL)
    b._sparse_layout = layout
    a.regenerate_graphs()
    b.set_extra_state(a.get_extra_state())
    torch.testing.assert_close(a.bpr_loss(batch)['loss'],
                               b.bpr_loss(batch)['loss'])


def test_training_epochs_reduce_loss():
    from mmdiff.train import Trainer
    data = synthetic()
    torch.manual_seed(0)
    m = DiffMM.from_data(data, cl_method=1, embedding_dim=16,
                         hidden_dims=[32], batch_size=32, lr=1e-2)
    res = Trainer(m, data, epochs=4, batch_size=32, patience=0, seed=0,
                  ks=(5, 10), monitor='recall@10').fit()
    hist = res.history
    assert hist[-1]['bpr/loss'] < hist[0]['bpr/loss']
    assert hist[-1]['diffusion/loss'] < hist[0]['diffusion/loss']
    # the regeneration (the diffusion phase's after-hook) is timed apart
    assert {'diffusion', 'regenerate', 'bpr'} <= set(res.phase_seconds)
    assert all(r['time/regenerate'] > 0 for r in hist)
    for k in ('recall@10', 'ndcg@10'):
        assert math.isfinite(res.test_metrics[k])
        assert 0.0 <= res.test_metrics[k] <= 1.0
