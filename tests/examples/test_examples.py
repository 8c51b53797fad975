r"""Every script in examples/ runs on its tiny default data (in process, with
small arguments) and prints what it promises."""
import importlib.util
from pathlib import Path

from conftest import requires_shared


EXAMPLES = Path(__file__).resolve().parents[2] / 'examples'


def _main(name):
    spec = importlib.util.spec_from_file_location(f'example_{name}',
                                                  EXAMPLES / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_examples_exist():
    # (examples/freedom.py has its own test)
    tested = {'new_modality', 'text_features', 'swap_part',
              'benchmark_own_data'}
    assert tested <= {p.stem for p in EXAMPLES.glob('*.py')}


def test_new_modality(capsys):
    data = _main('new_modality')(['--name', 'price_text', '--epochs', '1'])
    out = capsys.readouterr().out
    assert "after: ['image', 'text', 'audio', 'price_text']" in out
    assert "DiffMM uses 4 modalities" in out
    assert "LD4MRec uses 4 modalities" in out
    # one denoiser and one regenerated graph per modality, ours included
    assert out.count('regenerated graph') == 4
    assert 'price_text: denoiser' in out.replace('  ', ' ').replace(
        '  ', ' ')
    assert 'price_text: user preference' in out.replace('  ', ' ')
    assert data['item'].price_text.shape[1] == 24


def test_swap_part(capsys):
    model, diff, top, held = _main('swap_part')(['--epochs', '1'])
    out = capsys.readouterr().out
    assert "['GatedDenoiser', 'GatedDenoiser']" in out
    assert type(diff.denoiser).__name__ == 'GatedDenoiser'
    assert 'denoised row, top-5 unseen items' in out and len(top) == 5


def test_benchmark_own_data(capsys):
    records, text = _main('benchmark_own_data')(
        ['--models', 'lightgcn', 'diffmm', '--seeds', '0', '1',
         '--epochs', '1'])
    assert len(records) == 4
    assert text.splitlines()[0].startswith('| model | seeds | recall@20')
    rows = {ln.split('|')[1].strip(): ln for ln in text.splitlines()[2:]}
    assert set(rows) == {'lightgcn', 'diffmm'}
    assert all('| 2 |' in ln and '±' in ln for ln in rows.values())


# 120 titles: the MicroLens file beside the repository (the built-in
# fallback holds 48)
@requires_shared('microlens')
def test_text_features_cold_start(tmp_path, capsys):
    x, data, cold_users = _main('text_features')(
        ['--encoder', 'hash', '--limit', '120', '--cold', '20', '--users',
         '60', '--epochs', '5', '--cache-dir', str(tmp_path)])
    out = capsys.readouterr().out
    assert x.shape == (120, 384)
    assert 'again from the cache' in out and 'nearest titles' in out
    assert '120 titles' in out and '-> 120 items' in out   # none dropped
    # (users shown any cold item, users shown a cold item of their taste):
    # without features a cold item is only scored by its untrained random
    # embedding, with them it is found
    lgn, content = cold_users['LightGCN'], cold_users['content']
    assert content[1] >= 30 and content[1] >= 5 * max(lgn[1], 1)
    assert lgn[0] < content[0]
    assert list(tmp_path.glob('text-features/*.npy'))
