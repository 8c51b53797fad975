r"""One name per concept: the alias table of docs/hyperparameters.md is the
code's; official names and the former switches keep working through every
entry point (Python API, --set, --config files, old run folders)."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from conftest import tiny_data
from mmdiff.cli import main
from mmdiff.errors import CheckpointError, ConfigError
from mmdiff.nn.models import MODELS, DiffMM, LD4MRec
from mmdiff.train.config import preset, split_config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / 'docs' / 'hyperparameters.md'


def test_alias_table_is_the_codes():
    text = DOC.read_text()
    block = text.split('<!-- aliases:start -->')[1] \
        .split('<!-- aliases:end -->')[0]
    rows = set(re.findall(r'\| (\w+) \| `(\w+)` \| `(\w+)` \|', block))
    code = {(name, alias, target) for name, cls in MODELS.items()
            for alias, target in cls.hparam_aliases.items()}
    assert rows == code
    for name, alias, target in code:
        assert target in MODELS[name].hparam_names(), (name, target)


def test_presets_use_the_names():
    for name, cls in MODELS.items():
        for section in (None, 'tiktok', 'baby', 'sports', 'synthetic'):
            cfg = preset(name, section)
            assert not set(cfg) & set(cls.hparam_aliases), (name, section)


def test_official_names_build_the_same_model():
    data = tiny_data(modalities={'image': 4, 'text': 3})
    torch.manual_seed(0)
    a = DiffMM.from_data(data, latdim=8, gnn_layer=2, dims=[16],
                         d_emb_size=6, batch=16, e_loss=0.3, temp=0.2,
                         denoiser_dropout=0.1, autocast_bf16=True)
    torch.manual_seed(0)
    b = DiffMM.from_data(data, embedding_dim=8, num_layers=2,
                         hidden_dims=[16], time_dim=6, batch_size=16,
                         msi_weight=0.3, temperature=0.2, dropout=0.1,
                         precision='bf16-denoiser')
    assert repr(a) == repr(b)
    for k in ('embedding_dim', 'num_layers', 'hidden_dims', 'time_dim',
              'batch_size', 'msi_weight', 'temperature', 'dropout',
              'precision'):
        assert getattr(a, k) == getattr(b, k), k
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa
               if isinstance(sa[k], torch.Tensor))
    assert DiffMM.from_data(data, embedding_dim=8, autocast_bf16=True,
                            cl_bf16=True).precision == 'bf16'
    assert LD4MRec.from_data(data, hidden=8, svd_dim=2).hidden_dim == 8


def test_conflicts_and_removed_switches_are_errors():
    data = tiny_data(modalities={'image': 4})
    with pytest.raises(ConfigError, match="'latdim' is another name of "
                                          "'embedding_dim'"):
        DiffMM.from_data(data, latdim=8, embedding_dim=16)
    with pytest.raises(ConfigError, match='cl_bf16 without autocast_bf16'):
        DiffMM.from_data(data, cl_bf16=True)
    for switch in ('fused_reverse', 'fused_loss', 'sparse_layout'):
        with pytest.raises(ConfigError, match='unknown hyper-parameter'):
            DiffMM.from_data(data, **{switch: True})
    # merged configurations: the user's alias overrides the preset's name
    cfg = preset('diffmm', 'synthetic') | {'batch': 64, 'latdim': 12}
    trainer, model = split_config(cfg, DiffMM)
    assert model['batch_size'] == 64 == trainer['batch_size']
    assert model['embedding_dim'] == 12 and 'latdim' not in model


def _cli(*argv):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        return main([str(a) for a in argv])


def _metrics(run):
    m = json.loads((run / 'metrics.json').read_text())
    return {k: v for k, v in m.items() if 'seconds' not in k}


@pytest.mark.usefixtures('one_thread')
def test_old_set_keys_and_config_files_give_the_same_run(tmp_path):
    base = ['train', '--model', 'diffmm', '--dataset',
            'synthetic:users=60,items=40', '--epochs', '2', '--seed', '3',
            '--device', 'cpu', '--quiet']
    assert _cli(*base, '--out', tmp_path / 'new', '--set', 'embedding_dim=8',
                'hidden_dims=[16]', 'batch_size=32', 'msi_weight=0.2') == 0
    assert _cli(*base, '--out', tmp_path / 'old', '--set', 'latdim=8',
                'dims=[16]', 'batch=32', 'e_loss=0.2') == 0
    cfg = tmp_path / 'old.toml'
    cfg.write_text('[default]\nlatdim = 8\ndims = [16]\nbatch = 32\n'
                   'e_loss = 0.2\n')
    assert _cli(*base, '--out', tmp_path / 'file', '--config', cfg) == 0
    new = _metrics(tmp_path / 'new')
    assert _metrics(tmp_path / 'old') == new == _metrics(tmp_path / 'file')


@pytest.mark.usefixtures('one_thread')
def test_old_run_folders_load_or_fail_clearly(tmp_path, capsys):
    run = tmp_path / 'run'
    assert _cli('train', '--model', 'diffmm', '--dataset',
                'synthetic:users=60,items=40', '--epochs', '1',
                '--device', 'cpu', '--quiet', '--set', 'embedding_dim=8',
                'hidden_dims=[16]', '--out', run) == 0
    capsys.readouterr()
    assert _cli('evaluate', run, '--device', 'cpu') == 0
    want = capsys.readouterr().out
    # rewrite the stored configuration as an older mmdiff wrote it
    for name in ('checkpoint.pt', 'best_model.pt'):
        ckpt = torch.load(run / name, weights_only=True)
        hp = ckpt['config']['hparams']
        for old, new in (('latdim', 'embedding_dim'), ('dims', 'hidden_dims'),
                         ('d_emb_size', 'time_dim'), ('e_loss', 'msi_weight'),
                         ('temp', 'temperature'), ('gnn_layer',
                                                   'num_layers')):
            hp[old] = hp.pop(new)
        hp['batch'] = hp['batch_size']
        hp.pop('precision', None)
        hp['autocast_bf16'] = hp['cl_bf16'] = False
        torch.save(ckpt, run / name)
    assert _cli('evaluate', run, '--device', 'cpu') == 0
    assert capsys.readouterr().out == want
    # a configuration naming a removed switch: a clear CheckpointError
    for name in ('checkpoint.pt', 'best_model.pt'):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt['config']['hparams']['sparse_layout'] = 'csr'
        torch.save(ckpt, run / name)
    assert _cli('evaluate', run, '--device', 'cpu') == 2
    err = capsys.readouterr().err
    assert 'no longer builds' in err and 'sparse_layout' in err
    with pytest.raises(CheckpointError):
        from mmdiff.cli import _rebuild
        _rebuild(str(run), None, 'cpu', False)
