r"""``benchmarks/modalities.py`` end to end on tiny synthetic data (records
and report in a temporary folder, no checkpoints), and its bookkeeping."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / 'benchmarks'
sys.path.insert(0, str(BENCH))

import modalities  # noqa: E402

TINY = 'synthetic:users=120,items=90,modalities=image:8+text:4'


def test_end_to_end_records_report_and_pending(tmp_path, capsys):
    args = ['--models', 'ld4mrec', 'diffmm', '--dataset', TINY,
            '--seeds', '0', '1', '--epochs', '1', '--threads', '1',
            '--noise-dims', '16', '--results', str(tmp_path), '--work', '',
            '--root', '/nowhere/data']
    assert modalities.main(args) == 0
    runs = sorted(p.name for p in (tmp_path / 'modality_runs').glob('*'))
    tag = modalities.dataset_tag(TINY)
    for seed in (0, 1):
        for v in ('full', 'minus-image', 'minus-text', 'none',
                  'plus-noise16'):
            assert f'ld4mrec-{tag}-{v}-seed{seed}.json' in runs
        assert f'diffmm-{tag}-none-seed{seed}.json' not in runs
    assert len(runs) == 2 * 5 + 2 * 4
    rec = json.loads((tmp_path / 'modality_runs' /
                      f'diffmm-{tag}-plus-noise16-seed1.json').read_text())
    assert rec['modalities'] == ['image', 'text', 'noise16']
    assert set(rec['modality_weights']) <= set(rec['modalities'])
    assert set(rec['modality_relevance']) == {'image', 'text', 'noise16'}
    # the data root is never written into a record
    assert '/nowhere' not in rec['command']
    assert '--root DATA_ROOT' in rec['command']
    md = (tmp_path / 'modalities.md').read_text()
    assert f'## ld4mrec on {tag}' in md and f'## diffmm on {tag}' in md
    row = next(ln for ln in md.splitlines() if ln.startswith('| +noise16'))
    assert '(n=2)' in row
    # nothing is pending any more, and a rerun trains nothing
    capsys.readouterr()
    assert modalities.main(args + ['--pending']) == 0
    assert capsys.readouterr().out.strip().endswith('0 run(s) pending')
    before = {p: p.stat().st_mtime_ns
              for p in (tmp_path / 'modality_runs').glob('*')}
    modalities.main(args)
    assert before == {p: p.stat().st_mtime_ns
                      for p in (tmp_path / 'modality_runs').glob('*')}


def test_pending_lists_missing_runs_as_commands(tmp_path, capsys):
    assert modalities.main(['--models', 'ld4mrec', '--dataset', TINY,
                            '--seeds', '3', '--variants=full,+noise16',
                            '--results', str(tmp_path), '--pending',
                            '--label', 'x', '--set', 'dropout=0.1']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == '2 run(s) pending'
    assert out[0].endswith('--seeds 3 --variants=full --threads 1 '
                           '--label x --set dropout=0.1')
    assert not (tmp_path / 'modality_runs').exists()


def test_set_needs_label(tmp_path):
    with pytest.raises(SystemExit):
        modalities.main(['--set', 'dropout=0.1', '--report-only',
                         '--results', str(tmp_path)])


def test_noise_features_are_seeded_gaussians():
    a = modalities.noise_features(500, 64, seed=2)
    assert a.shape == (500, 64) and a.dtype == np.float32
    assert np.array_equal(a, modalities.noise_features(500, 64, seed=2))
    assert not np.array_equal(a, modalities.noise_features(500, 64, seed=3))
    assert abs(a.mean()) < 0.02 and abs(a.std() - 1) < 0.02


def _rec(variant, seed, r20, n20=0.05):
    return {'variant': variant, 'seed': seed, 'model': 'ld4mrec',
            'label': '', 'dataset': 'tiktok', 'modalities': ['image'],
            'metrics': {'test/recall@20': r20, 'test/ndcg@20': n20},
            'wall_seconds': 10.0, 'config': {}, 'command': 'c',
            'machine': 'm', 'date': '2026-01-01T00:00:00'}


def test_paired_delta_and_verdicts():
    base = [_rec('full', s, r) for s, r in [(0, 0.10), (1, 0.12), (2, 0.11)]]
    var = [_rec('-image', s, r) for s, r in [(0, 0.08), (1, 0.11),
                                             (2, 0.09), (5, 0.5)]]
    mean, se, seeds = modalities.paired_delta(base, var, 'test/recall@20')
    d = [-0.02, -0.01, -0.02]
    assert seeds == [0, 1, 2]                    # seed 5 has no full run
    assert mean == pytest.approx(np.mean(d))
    assert se == pytest.approx(np.std(d, ddof=1) / math.sqrt(3))
    assert modalities.verdict('-image', mean, se) == 'image pays for itself'
    assert modalities.verdict('+noise128', -0.001, 0.002) == \
        'harmless (not lower by 1 SE)'
    assert modalities.verdict('+noise128', -0.003, 0.002) == 'costs > 1 SE'
    assert modalities.verdict('-text', 0.004, 0.002) == 'better without text'
    assert modalities.verdict('none', 0.0, float('nan')) == 'one seed: no SE'
    md = modalities.render(base + var)
    row = next(ln for ln in md.splitlines() if ln.startswith('| -image'))
    assert '-0.0167 ± 0.0033 (n=3)' in row and '| -5.0 |' in row


def test_variants_and_record_names():
    assert modalities.variants_of('ld4mrec', ['image', 'audio']) == [
        'full', '-image', '-audio', 'none', '+noise128', '+noise1024']
    assert 'none' not in modalities.variants_of('diffmm', ['image'])
    assert modalities.record_name('ld4mrec', 'paper', 'some/dir/mydata/',
                                  '-image', 2) == \
        'ld4mrec-paper-mydata-minus-image-seed2.json'
    assert modalities.command_line(['--root', '/x/y', '--seeds', '0']) == \
        'benchmarks/modalities.py --root DATA_ROOT --seeds 0'


def test_results_file_is_what_the_records_give():
    runs = modalities.RESULTS / 'modality_runs'
    recs = modalities.load_records(runs)
    if not recs:
        pytest.skip('no modality runs on record')
    assert (modalities.RESULTS / 'modalities.md').read_text() == \
        modalities.render(recs), ('run python benchmarks/modalities.py '
                                  '--report-only')


SMALL = 'synthetic'   # big enough for the screening to drop a noise modality


def test_twin_runs_equal_trained_runs(tmp_path):
    r"""A ``+noise`` run whose screening drops the noise (and a papers'
    ``full`` run whose screening would keep everything) is not trained
    again; its record's metrics equal those of training it
    (``--no-twins``)."""
    args = ['--models', 'ld4mrec', 'diffmm', '--dataset', SMALL, '--seeds',
            '1', '--epochs', '1', '--threads', '1', '--noise-dims', '16',
            '--work', '', '--variants=full,+noise16']
    paper = ['--variants=full', '--label', 'paper', '--set',
             'modality_screening=false']
    for sub, extra in (('twin', []), ('trained', ['--no-twins'])):
        assert modalities.main(args + extra +
                               ['--results', str(tmp_path / sub)]) == 0
        assert modalities.main(args[:-1] + paper + extra +
                               ['--results', str(tmp_path / sub)]) == 0
    tag = modalities.dataset_tag(SMALL)
    for model in ('ld4mrec', 'diffmm'):
        for name in (f'{model}-{tag}-plus-noise16-seed1.json',
                     f'{model}-paper-{tag}-full-seed1.json'):
            twin = json.loads((tmp_path / 'twin' / 'modality_runs' /
                               name).read_text())
            trained = json.loads((tmp_path / 'trained' / 'modality_runs' /
                                  name).read_text())
            assert twin['twin_of'] == f'{model}-{tag}-full-seed1.json'
            assert 'twin_of' not in trained
            assert modalities.outcome(twin['metrics']) == \
                modalities.outcome(trained['metrics'])
            assert twin['twin_check']['random_states_equal']
            assert twin['twin_check']['tensors_compared'] > 0
        noise = json.loads((tmp_path / 'twin' / 'modality_runs' /
                            f'{model}-{tag}-plus-noise16-seed1.json'
                            ).read_text())
        assert noise['twin_check']['dropped_by_screening'] == ['noise16']
        assert noise['modality_relevance']['noise16']['keep'] is False
        assert noise['modalities'] == ['image', 'text', 'noise16']
        p = json.loads((tmp_path / 'twin' / 'modality_runs' /
                        f'{model}-paper-{tag}-full-seed1.json').read_text())
        assert p['twin_check']['config_differs_in'] == ['modality_screening']
        assert p['twin_check']['dropped_by_screening'] == []
    md = (tmp_path / 'twin' / 'modalities.md').read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith('| +noise16'))
    assert '(twin of full, not retrained)' in row
    assert 'Not trained again (twins' in md
    assert 'the screening dropped noise16' in md
    md = (tmp_path / 'trained' / 'modalities.md').read_text()
    assert 'Not trained again' not in md


def test_twin_check_refuses_other_computations():
    from mmdiff.train.config import preset
    from mmdiff.train.run import load_data
    data = load_data(SMALL)
    cfg = preset('diffmm', 'synthetic')
    cfg['modality_screening'] = True
    assert modalities.twin_check('diffmm', dict(cfg), data, dict(cfg), data,
                                 seed=0) is not None
    # a setting that acts during training
    assert modalities.twin_check('diffmm', {**cfg, 'lr': 0.5}, data,
                                 dict(cfg), data, seed=0) is None
    # a modality left out is another model
    less = modalities.select_modalities(data, ['image'])
    assert modalities.twin_check('diffmm', dict(cfg), less, dict(cfg), data,
                                 seed=0) is None
    # screening off keeps a noise modality: another model
    noisy, _, _ = modalities.variant_data(data, '+noise16', 0)
    off = {**cfg, 'modality_screening': False}
    assert modalities.twin_check('diffmm', off, noisy, dict(cfg), data,
                                 seed=0) is None
