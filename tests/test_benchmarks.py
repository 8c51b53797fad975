"""The benchmark scripts' bookkeeping: tables built from stored runs, the
noisy-training shares, synthetic features for scale runs."""
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / 'benchmarks'
sys.path.insert(0, str(BENCH))

import noisy  # noqa: E402
import quality  # noqa: E402
import speed  # noqa: E402


def _run(model, dataset, seed, noise, r20, n20=0.01):
    metrics = {f'test/{k}@{K}': 0.0 for k in
               ('recall', 'ndcg', 'precision') for K in (10, 20)}
    metrics.update({'test/recall@20': r20, 'test/ndcg@20': n20,
                    'best_test_epoch/recall@20': r20 + 0.001,
                    'best_test_epoch/ndcg@20': n20,
                    'epochs_run': 10, 'best_epoch': 4,
                    'seconds_per_epoch': 1.5})
    return {'model': model, 'dataset': dataset, 'seed': seed,
            'noise': noise, 'metrics': metrics, 'machine': 'test box',
            'date': '2026-01-01T00:00:00', 'command': 'x', 'config': {}}


@pytest.fixture
def results(tmp_path, monkeypatch):
    runs = tmp_path / 'quality_runs'
    runs.mkdir()
    monkeypatch.setattr(quality, 'RESULTS', tmp_path)
    monkeypatch.setattr(quality, 'RUNS', runs)

    def put(rec):
        name = quality.tag_of(rec['model'], rec['dataset'], rec['seed'],
                              rec['noise'])
        (runs / f'{name}.json').write_text(json.dumps(rec))
    return tmp_path, put


def test_quality_report_mean_std_and_references(results):
    out, put = results
    put(_run('diffmm', 'tiktok', 0, 0.0, 0.10))
    put(_run('diffmm', 'tiktok', 1, 0.0, 0.12))
    put(_run('lightgcn', 'sports', 0, 0.0, 0.08))
    quality.report()
    md = (out / 'quality.md').read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith('| diffmm |'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[3] == '2'                       # seeds
    assert cells[7] == '0.1100 ± 0.0100'         # R@20 mean ± pstdev
    assert cells[10] == '0.1110 / 0.0100'        # best-test-epoch
    assert cells[11] == '0.1070 / 0.0450'        # official code here
    assert 'DiffMM T1' in cells[12]              # paper
    lgn = next(ln for ln in md.splitlines() if ln.startswith('| lightgcn'))
    assert '0.0782 / 0.0369' in lgn
    csv_text = (out / 'quality.csv').read_text().splitlines()
    assert csv_text[0].startswith('model,dataset,noise,seeds')
    assert len(csv_text) == 3


def test_noisy_report_share_kept_and_seed_filter(results):
    out, put = results
    put(_run('lightgcn', 'tiktok', 0, 0.0, 0.080))
    put(_run('lightgcn', 'tiktok', 0, 0.1, 0.060))
    put(_run('lightgcn', 'tiktok', 0, 0.2, 0.040))
    put(_run('ld4mrec', 'tiktok', 0, 0.0, 0.070))
    put(_run('ld4mrec', 'tiktok', 1, 0.0, 0.010))  # other seed: ignored
    put(_run('ld4mrec', 'tiktok', 0, 0.2, 0.063))
    put(_run('lightgcn', 'baby', 0, 0.1, 0.5))     # other dataset: ignored
    noisy.report(['lightgcn', 'ld4mrec'], 'tiktok', [0, 0.1, 0.2], [0])
    md = (out / 'noisy.md').read_text()
    lgn = next(ln for ln in md.splitlines() if ln.startswith('| lightgcn'))
    assert [c.strip() for c in lgn.strip('|').split('|')] == \
        ['lightgcn', '0.0800', '0.0600', '0.0400', '75.0 %', '50.0 %']
    ld4 = next(ln for ln in md.splitlines() if ln.startswith('| ld4mrec'))
    assert [c.strip() for c in ld4.strip('|').split('|')] == \
        ['ld4mrec', '0.0700', '', '0.0630', '', '90.0 %']
    rows = [r.split(',') for r in
            (out / 'noisy.csv').read_text().splitlines()[1:]]
    kept = {(m, float(n)): float(k) for m, n, _, k in rows}
    assert kept[('ld4mrec', 0.2)] == pytest.approx(0.9)
    assert kept[('lightgcn', 0.0)] == 1.0
    assert ('ld4mrec', 0.1) not in kept


def test_attach_features_seeded_and_enumerated():
    from mmdiff.data import make_synthetic
    from mmdiff.data.hetero import get_modalities
    data = make_synthetic(num_users=30, num_items=20, modalities={})
    a = speed.attach_features(data, {'image': 16, 'text': 4}, seed=3)
    mods = get_modalities(a)
    assert {k: tuple(v.shape) for k, v in mods.items()} == \
        {'image': (20, 16), 'text': (20, 4)}
    b = speed.attach_features(make_synthetic(num_users=30, num_items=20,
                                             modalities={}),
                              {'image': 16, 'text': 4}, seed=3)
    assert torch.equal(get_modalities(b)['image'], mods['image'])


def test_ablation_table_pairs_variants_with_the_same_seed(results):
    out, put = results
    put(_run('diffmm-bf16', 'tiktok', 0, 0.0, 0.100))
    put(_run('diffmm-bf16-no-msi', 'tiktok', 0, 0.0, 0.090))
    put(_run('diffmm-bf16-no-contrastive', 'tiktok', 1, 0.0, 0.05))
    quality.report()
    md = (out / 'ablation.md').read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith('| tiktok')]
    assert len(rows) == 2       # the seed-1 variant has no full-model run
    assert 'diffmm-bf16 (full)' in rows[0]
    assert 'no-msi' in rows[1] and rows[1].rstrip().endswith('-10.0 % |')


def test_ablation_summary_pairs_seeds_with_the_same_budget(results):
    out, put = results
    for seed, full, var in [(0, 0.100, 0.090), (1, 0.120, 0.126),
                            (2, 0.110, 0.099)]:
        put(_run('diffmm-bf16', 'tiktok', seed, 0.0, full))
        put(_run('diffmm-bf16-no-msi', 'tiktok', seed, 0.0, var))
    capped = _run('diffmm-bf16-no-contrastive', 'tiktok', 0, 0.0, 0.05)
    capped['config'] = {'epochs': 3}            # other budget: not paired
    put(capped)
    put(_run('diffmm-bf16-no-contrastive', 'tiktok', 1, 0.0, 0.06))
    # patience differs, but neither run stopped early: paired
    full2 = _run('diffmm-bf16', 'tiktok', 2, 0.0, 0.110)
    full2['config'] = {'epochs': 10, 'patience': 20}
    put(full2)
    var2 = _run('diffmm-bf16-no-msi', 'tiktok', 2, 0.0, 0.099)
    var2['config'] = {'epochs': 10, 'patience': 0}
    put(var2)
    quality.report()
    md = (out / 'ablation.md').read_text()
    assert md.index('## Over seeds') < md.index('## Seed by seed')
    row = next(ln for ln in md.splitlines()
               if ln.startswith('| diffmm-bf16-no-msi'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1] == '0, 1, 2'
    assert cells[2] == '0.1050 ± 0.0153'        # variant R@20
    assert cells[6] == '0.1100 ± 0.0082'        # full model, same seeds
    assert cells[7] == '-5.0 %'                 # mean of -10, +5, -10 %
    assert cells[8] == '2 of 3'
    nocl = next(ln for ln in md.splitlines()
                if ln.startswith('| diffmm-bf16-no-contrastive'))
    assert '| 1 |' in nocl and '1 of 1' in nocl


def test_ablation_summary_needs_two_seeds(results):
    out, put = results
    put(_run('diffmm-bf16', 'tiktok', 0, 0.0, 0.100))
    put(_run('diffmm-bf16-no-msi', 'tiktok', 0, 0.0, 0.090))
    quality.report()
    assert '## Over seeds' not in (out / 'ablation.md').read_text()


def test_ablation_compares_capped_variants_within_the_same_budget(results):
    out, put = results
    full = _run('diffmm-bf16', 'tiktok', 0, 0.0, 0.100)
    full['metrics']['epochs_run'] = 6
    full['history'] = [{'epoch': e, 'val/recall@20': v, 'test/recall@20': t,
                        'test/ndcg@20': 0.04}
                       for e, v, t in [(0, .05, .06), (1, .09, .08),
                                       (2, .07, .07), (3, .10, .10)]]
    put(full)
    var = _run('diffmm-bf16-no-msi', 'tiktok', 0, 0.0, 0.072)
    var['config'] = {'epochs': 3}
    put(var)
    quality.report()
    md = (out / 'ablation.md').read_text()
    note = next(ln for ln in md.splitlines() if ln.startswith('- tiktok'))
    assert 'first 3 epochs the full model selects epoch 1' in note
    assert 'test R@20 0.0800' in note and '-10.0 %' in note


def test_seed_table_lists_each_seed_and_the_mean(results):
    out, put = results
    put(_run('diffmm', 'tiktok', 0, 0.0, 0.10))
    put(_run('diffmm', 'tiktok', 1, 0.0, 0.12))
    put(_run('diffmm-bf16', 'tiktok', 0, 0.0, 0.11))
    put(_run('diffmm', 'tiktok', 0, 0.1, 0.05))       # noisy: not listed
    quality.report()
    md = (out / 'quality.md').read_text()
    part = md[md.index('seed by seed'):]
    rows = [ln for ln in part.splitlines() if ln.startswith('| diffmm')]
    assert [r.split('|')[1:3] for r in rows] == [
        [' diffmm ', ' 0 '], [' diffmm ', ' 1 '], [' diffmm-bf16 ', ' 0 ']]
    assert '0.1000 / 0.0100 (4) | 0.1010 / 0.0100 (?)' in rows[0]
    # mean best-test R@20 of the two float32 seeds: (0.101 + 0.121) / 2
    assert 'diffmm: mean best-test-epoch R@20 0.1110 over 2 seeds' in part
    assert 'diffmm-bf16: mean' not in part            # one seed: no mean


def test_seed_table_keeps_the_three_seed_mean_beside_extra_seeds(results):
    out, put = results
    for seed, r20 in enumerate([0.10, 0.12, 0.11, 0.20, 0.30]):
        put(_run('diffmm', 'tiktok', seed, 0.0, r20))
    quality.report()
    part = (out / 'quality.md').read_text()
    part = part[part.index('seed by seed'):]
    # all five: mean(0.101, 0.121, 0.111, 0.201, 0.301) = 0.167
    assert 'mean best-test-epoch R@20 0.1670 over 5 seeds' in part
    # seeds 0-2 only: mean(0.101, 0.121, 0.111) = 0.111
    assert 'first 3 seeds (the 3-seed target): 0.1110.' in part
    # the official run (0.1070) against the five seeds (sample std 0.0847)
    assert ('single run here (0.1070) lies -0.7 sample std from this '
            'mean; 4 of 5 seeds reach it.') in part


def test_seed_table_pairs_variants_with_the_reference_by_seed(results):
    out, put = results
    for seed, ref, var in [(0, 0.100, 0.098), (1, 0.110, 0.112),
                           (2, 0.120, 0.116)]:
        put(_run('diffmm', 'tiktok', seed, 0.0, ref))
        put(_run('diffmm-bf16', 'tiktok', seed, 0.0, var))
    other = _run('diffmm-bf16', 'tiktok', 3, 0.0, 0.5)   # no float32 seed 3
    put(other)
    capped = _run('diffmm-bf16-plaintopk', 'tiktok', 0, 0.0, 0.09)
    capped['config'] = {'epochs': 3}                     # other budget
    put(capped)
    put(_run('diffmm-bf16-plaintopk', 'tiktok', 1, 0.0, 0.10))
    quality.report()
    part = (out / 'quality.md').read_text()
    part = part[part.index('seed by seed'):]
    bf = next(ln for ln in part.splitlines()
              if ln.startswith('diffmm-bf16: mean'))
    # per-seed changes -0.002, +0.002, -0.004: mean -0.0013, sample std
    # 0.0031, standard error 0.0018; both protocols move alike here
    assert ('Paired with diffmm on seeds 0, 1, 2 (same seed, same epoch '
            'budget)') in bf
    assert ('best-test-epoch R@20 -0.0013 (standard error 0.0018; lower '
            'on 2 of 3 seeds)') in bf
    assert 'validation-selected R@20 -0.0013' in bf
    # plaintopk: only seed 1 shares the budget, so no paired sentence
    pt = next(ln for ln in part.splitlines()
              if ln.startswith('diffmm-bf16-plaintopk: mean'))
    assert 'Paired' not in pt
    ref = next(ln for ln in part.splitlines()
               if ln.startswith('diffmm: mean'))
    assert 'Paired' not in ref


def test_distributed_report_speedup_and_bytes_per_step():
    import distributed

    def rec(world, rank, secs, rss, allreduce=()):
        return {'model': 'lightgcn', 'dataset': 'sports', 'rank': rank,
                'world': world, 'threads': 1, 'num_users': 10,
                'num_items': 5, 'train_seconds': secs,
                'phase_seconds': {'bpr': secs, 'train': secs, 'eval': 1.0,
                                  'epoch': secs + 1},
                'peak_rss_mb': rss, 'phases': ['bpr'], 'steps': [4],
                'param_bytes': [4 * 2 ** 20], 'allreduce_bytes':
                list(allreduce)}
    runs = {'lightgcn': {1: [rec(1, 0, 8.0, 100)],
                         2: [rec(2, 0, 5.0, 90, [16 * 2 ** 20]),
                             rec(2, 1, 4.0, 91, [16 * 2 ** 20])]}}
    md = distributed.report(runs, [], 'cmd')
    rows = [ln for ln in md.splitlines() if ln.startswith('| lightgcn')]
    assert '| 1 x 1 | 8.0 | 1.00x |' in rows[0]
    # the slowest rank sets the epoch time; bytes per step = total / steps
    assert '| 2 x 1 | 5.0 | 1.60x |' in rows[1]
    assert 'bpr: 4.00 MiB' in rows[1] and '90 / 91' in rows[1]
