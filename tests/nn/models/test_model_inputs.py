r"""Bad input reaching the real models (DiffMM, LD4MRec, baselines): one
clear error, exit status 2 from the CLI, nothing written."""
import pytest

from mmdiff.cli import main
from mmdiff.data.datasets import get_dataset
from mmdiff.errors import ConfigError
from mmdiff.nn.models import MODELS

TINY = 'synthetic:users=40,items=30'


@pytest.mark.parametrize('model', sorted(MODELS))
def test_unknown_hparam_named(model, tmp_path, capsys):
    out = tmp_path / 'run'
    rc = main(['train', '--model', model, '--dataset', TINY, '--set',
               'not_a_param=1', '--out', str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert 'not_a_param' in err[0] and err[0].startswith('error: ')
    assert not out.exists()
    with pytest.raises(ConfigError, match='not_a_param'):
        MODELS[model].from_data(get_dataset(TINY), not_a_param=1)


@pytest.mark.parametrize('model,extra,msg', [
    ('diffmm', [], 'needs at least one item modality'),
    ('ld4mrec', [], 'use_bg=True needs at least one item modality'),
])
def test_models_without_modalities(model, extra, msg, tmp_path, capsys):
    out = tmp_path / 'run'
    rc = main(['train', '--model', model, '--dataset',
               TINY + ',modalities=none', '--out', str(out)] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and msg in err[0]
    assert not out.exists()


def test_ld4mrec_without_bg_runs_on_interactions_only(tmp_path, capsys):
    rc = main(['train', '--model', 'ld4mrec', '--dataset',
               TINY + ',modalities=none', '--epochs', '1', '--set',
               'use_bg=False', 'hidden=16', 'svd_dim=4', '--quiet'])
    assert rc == 0
    assert 'recall@20' in capsys.readouterr().out


def test_checkpoint_of_other_model_refused(tmp_path, capsys):
    run = tmp_path / 'run'
    assert main(['train', '--model', 'mf', '--dataset', TINY, '--epochs', '1',
                 '--out', str(run), '--quiet']) == 0
    capsys.readouterr()
    rc = main(['train', '--model', 'diffmm', '--resume', str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and 'mf' in err[0]
