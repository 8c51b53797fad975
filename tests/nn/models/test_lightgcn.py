import pytest
import torch

from mmdiff.data.hetero import edge_index_of
from mmdiff.errors import ConfigError
from mmdiff.nn.models import LightGCN
from mmdiff.nn.models.base import TripletBatch

from conftest import tiny_data


def _dense_embeddings(model: LightGCN, data) -> torch.Tensor:
    r"""e = 1/(L+1) sum_l Â^l e0 with Â = D^-1/2 A D^-1/2 built densely."""
    U, I = model.num_users, model.num_items
    u, i = edge_index_of(data)
    A = torch.zeros(U + I, U + I)
    A[u, U + i] = 1.0
    A[U + i, u] = 1.0
    d = A.sum(1)
    dis = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    A_hat = dis[:, None] * A * dis[None, :]
    x = model.gnn.embedding.weight
    out, h = x.clone(), x
    for _ in range(model.num_layers):
        h = A_hat @ h
        out = out + h
    return out / (model.num_layers + 1)


def _model(layout, data, seed=0):
    torch.manual_seed(seed)
    model = LightGCN.from_data(data, embedding_dim=8, num_layers=3)
    model._sparse_layout = layout     # a test oracle, not a hyper-parameter
    return model


@pytest.mark.parametrize('layout', ['edge_index_obj', 'csr', 'edge_index'])
def test_embeddings_match_dense_lightgcn(layout):
    data = tiny_data()
    m = _model(layout, data)
    torch.testing.assert_close(m.embeddings(), _dense_embeddings(m, data),
                               atol=1e-5, rtol=1e-5)


def test_layouts_give_same_loss_and_gradients():
    data = tiny_data(seed=3)
    batch = TripletBatch(users=torch.tensor([0, 1, 5, 7]),
                         pos=torch.tensor([2, 3, 4, 5]),
                         neg=torch.tensor([9, 8, 7, 6]))
    grads, losses = {}, {}
    for layout in ('edge_index_obj', 'csr', 'edge_index'):
        m = _model(layout, data, seed=1)
        loss = m.loss(batch)['loss']
        loss.backward()
        losses[layout] = loss.detach()
        grads[layout] = m.gnn.embedding.weight.grad.clone()
    for layout in ('csr', 'edge_index'):
        torch.testing.assert_close(losses[layout], losses['edge_index_obj'])
        torch.testing.assert_close(grads[layout], grads['edge_index_obj'],
                                   atol=1e-6, rtol=1e-5)
    assert grads['edge_index_obj'].abs().sum() > 0


def test_scores_follow_cached_embeddings_and_state_dict_has_no_graph():
    data = tiny_data()
    m = _model('edge_index_obj', data)
    m.prepare_scoring()
    s = m.score(torch.tensor([0, 3]))
    assert s.shape == (2, m.num_items)
    e = _dense_embeddings(m, data)
    torch.testing.assert_close(s, e[[0, 3]] @ e[m.num_users:].t(),
                               atol=1e-5, rtol=1e-5)
    # Parameter-free hops: the checkpoint holds only PyG's embedding table
    # and layer weights alpha, so weights saved before the EdgeIndex switch
    # still load.
    assert sorted(m.state_dict()) == ['gnn.alpha', 'gnn.embedding.weight']


def test_layout_is_not_a_hyper_parameter():
    with pytest.raises(ConfigError, match="unknown hyper-parameter"):
        LightGCN.from_data(tiny_data(), sparse_layout='csr')


def test_cli_prints_no_sparse_beta_warning(tmp_path):
    import subprocess
    import sys
    run = tmp_path / 'run'
    base = [sys.executable, '-W', 'default', '-m', 'mmdiff.cli']
    for args in (['train', '--model', 'lightgcn', '--dataset',
                  'synthetic:users=60,items=40', '--epochs', '1', '--quiet',
                  '--device', 'cpu', '--out', str(run)],
                 ['evaluate', str(run), '--device', 'cpu'],
                 ['recommend', str(run), '--users', '0', '--device', 'cpu']):
        r = subprocess.run(base + args, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        assert 'beta state' not in r.stderr, r.stderr
