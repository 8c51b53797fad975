"""benchmarks/scaling.py: the exponent fit recovers known power laws, the
flags, the axis plans, one tiny in-process measurement, the report."""
import math
import statistics
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / 'benchmarks'
sys.path.insert(0, str(BENCH))

import scaling  # noqa: E402


def test_fit_recovers_exponent_of_exact_power_law():
    x = [100, 200, 400, 800, 1600]
    fit = scaling.fit_exponent(x, [3.0 * v ** 1.7 for v in x])
    assert fit['slope'] == pytest.approx(1.7, abs=1e-9)
    assert fit['tail'] == pytest.approx(1.7, abs=1e-9)
    assert fit['se'] == pytest.approx(0.0, abs=1e-9)
    assert math.exp(fit['intercept']) == pytest.approx(3.0, rel=1e-9)


def test_fit_with_noise_has_standard_error_covering_exponent():
    x = [10, 25, 63, 160]
    noise = [1.05, 0.96, 1.03, 0.98]           # fixed, +-5 %
    fit = scaling.fit_exponent(x, [2 * v ** 0.5 * e
                                   for v, e in zip(x, noise)])
    assert fit['n'] == 4
    assert 0 < fit['se'] < 0.05
    assert abs(fit['slope'] - 0.5) < 3 * fit['se']
    # two points: a slope, no standard error; non-positive values skipped
    two = scaling.fit_exponent([1, 4, 8], [2.0, 8.0, 0.0])
    assert two['slope'] == pytest.approx(1.0) and math.isnan(two['se'])


def test_flags_growth_faster_than_expected():
    x = [1000, 2000, 4000, 8000, 16000]
    pts = [{'num_users': u, 'num_items': 2000, 'train_edges': 64000,
            'epoch_s': 1e-7 * u ** 2, 'memory_mb': 30 + u / 1000}
           for u in x]
    a = scaling.analyse('mf', 'users', pts)
    assert a['time']['flag'] == 'slope' and a['time']['expected'] == 1
    assert not a['memory']['flag']
    assert len(a['flags']) == 1 and 'mf time vs users' in a['flags'][0]
    # a fast term that only shows between the two largest sizes
    tail = [0.1, 0.1, 0.1, 0.1, 0.5]
    for p, t in zip(pts, tail):
        p['epoch_s'] = t
    assert scaling.analyse('diffrec', 'users', pts)['time'][
        'flag'] == 'tail'
    # throughput falling faster than 1/I is flagged, as 1/I is not
    items = [{'num_users': 1000, 'num_items': i, 'train_edges': 16000,
              'epoch_s': 1.0, 'memory_mb': 40.0,
              'eval_users_per_s': 1e9 / i} for i in x]
    assert 'eval' in scaling.analyse('diffmm', 'items', items)
    assert not scaling.analyse('diffmm', 'items', items)['eval']['flag']
    for p in items:
        p['eval_users_per_s'] = 1e12 / p['num_items'] ** 2
    assert scaling.analyse('diffmm', 'items', items)['eval']['flag']


def test_expected_exponents_cover_every_model_and_axis():
    for m in scaling.ALL_MODELS:
        for what in ('time', 'memory'):
            assert set(scaling.EXPECTED[m][what]) == set(scaling.AXES)
    assert set(scaling.MODELS) == set(scaling.ALL_MODELS)


@pytest.mark.parametrize('axis', scaling.AXES)
def test_axis_points_span_16_and_hold_the_others(axis):
    factors = [16 ** (k / 4) for k in range(5)]
    pts = scaling.axis_points(axis, scaling.BASE, factors)
    key = {'users': 'users', 'items': 'items',
           'interactions': 'train_edges'}[axis]
    vals = [p[key] for p in pts]
    assert vals == sorted(vals) and vals[-1] / vals[0] == pytest.approx(16)
    for other in {'users', 'items', 'train_edges'} - {key}:
        assert len({p[other] for p in pts}) == 1


def test_tiny_measurement_in_process(one_thread):
    pts = []
    for users in (30, 60):
        data, info = scaling.make_data(users, 40, users * 4,
                                       {'image': 8}, tol=0.2)
        assert abs(info['train_edges'] / (users * 4) - 1) <= 0.2
        r = scaling.measure('mf', data, {}, timed=2, threads=1,
                            evaluate=True)
        assert len(r['epoch_seconds']) == 3
        assert r['epoch_s'] == statistics.median(r['epoch_seconds'][1:])
        assert r['num_users'] == users and r['train_edges'] == \
            info['train_edges']
        assert r['eval_users_per_s'] > 0 and 'bpr' in r['phase_s']
        r['memory_mb'] = r['train_peak_mb'] - r['rss_data_mb'] + 1.0
        r['ru_maxrss_mb'] = r['train_peak_mb']
        pts.append(r)
    a = scaling.analyse('mf', 'users', pts)
    assert a['time']['n'] == 2 and math.isfinite(a['time']['slope'])
    assert math.isnan(a['time']['se'])


def _point(u, t):
    return {'num_users': u, 'num_items': 100, 'train_edges': 500,
            'epoch_s': t, 'epoch_seconds': [t * 2, t, t],
            'phase_s': {'bpr': t}, 'build_s': 0.01, 'memory_mb': 10.0,
            'train_peak_mb': 300.0, 'ru_maxrss_mb': 301.0}


def _run_info(**kw):
    return dict({'date': '2026-01-01T00:00:00', 'machine': 'test box',
                 'threads': 1, 'command': 'python benchmarks/scaling.py',
                 'matmul_s': [0.2, 0.21], 'loadavg': [0.1, 0.2],
                 'wall_s': 12.0, 'quick': False}, **kw)


def test_report_and_merge():
    pts = [_point(u, 1e-6 * u ** 2) for u in (100, 200, 400, 800)]
    new = {'run': _run_info(),
           'series': {'mf/users': {'model': 'mf', 'axis': 'users',
                                   'points': pts,
                                   'analysis': scaling.analyse(
                                       'mf', 'users', pts)}}}
    res = scaling.merge(None, new)
    md = scaling.format_report(res)
    assert 'Command: `python benchmarks/scaling.py`' in md
    assert '2026-01-01T00:00:00' in md and 'test box' in md
    row = next(ln for ln in md.splitlines() if ln.startswith('| mf | users'))
    assert '2.00 ± 0.00' in row and '**FLAG (slope)**' in row
    assert '| 800 | 100 | 500 | 0.640 |' in md
    assert '## Flags' in md and 'mf time vs users' in md
    # a partial re-run replaces its series and keeps the others
    pts2 = [_point(u, 1e-3 * u) for u in (100, 200, 400, 800)]
    other = {'run': _run_info(command='python benchmarks/scaling.py '
                              '--models mf --axes users'),
             'series': {'mf/users': {'model': 'mf', 'axis': 'users',
                                     'points': pts2,
                                     'analysis': scaling.analyse(
                                         'mf', 'users', pts2)},
                        'lightgcn/items': dict(
                            new['series']['mf/users'], model='lightgcn',
                            axis='items')}}
    res2 = scaling.merge(res, other)
    assert [r['id'] for r in res2['runs']] == [2]      # run 1 unused now
    assert res2['series']['mf/users']['run'] == 2
    md2 = scaling.format_report(res2)
    assert 'None: no cost' not in md2                   # lightgcn copy
    assert md2.index('| mf | users') < md2.index('| lightgcn | items')
