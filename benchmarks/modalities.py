r"""What each item modality contributes, and what an uninformative one costs
(issue #17).

For a model and a dataset, every *variant* below is trained over paired
seeds through :func:`mmdiff.train.run.train_run` (the code path of ``mmdiff
train``), with the preset of the dataset and early stopping on validation
Recall@20; the test metrics of the validation-selected epoch are compared
with the full model of the same seed:

* ``full``: all item modalities of the dataset;
* ``-<name>``: every modality but ``<name>`` (leave one out);
* ``none``: no modality, where the model allows it (LD4MRec ``use_bg=False``,
  "w/o BG"; DiffMM needs one and has no such variant);
* ``+noise<d>``: all modalities plus one added modality ``noise<d>`` of pure
  noise, :math:`X_{noise} \in \mathbb{R}^{I \times d}` with i.i.d.
  :math:`\mathcal{N}(0, 1)` entries drawn from ``numpy.random.default_rng(
  [seed, d])`` (default widths ``128`` and ``1024``).

For each variant :math:`v` and metric :math:`M` the report gives the paired
change :math:`\Delta_s = M_s(v) - M_s(\text{full})` over the seeds :math:`s`
that both have, its mean :math:`\bar\Delta` and standard error
:math:`\mathrm{SE} = \mathrm{sd}(\Delta) / \sqrt{n}`.  A modality *pays for
itself* when leaving it out lowers Recall@20 by more than one SE; an added
noise modality is *harmless* when it costs at most one SE.

A run whose model, built as training builds it, is bit-identical to the
default ``full`` model of the same seed (same modalities, every parameter
and buffer equal, the same random state afterwards, a configuration that
differs only in settings used while building) is that run: this is the
case of a noise modality that ``modality_screening`` drops before anything
is built, and of ``--label paper --set modality_screening=false`` on data
whose every modality passes the screening.  Such a *twin* is not trained
again; its record takes the full run's metrics and says so (``twin_of``,
``twin_check``), and ``--no-twins`` trains it anyway.  The report lists the
twins, and the trained runs whose metrics equal their seed's full run
exactly, the evidence that a twin would train to the same numbers.

Every finished run is one JSON record in ``<results>/modality_runs/`` (the
metrics, configuration, command, machine, date, seconds); the report
``<results>/modalities.md`` is rebuilt from all records, so runs can be made
piecemeal and interrupted runs continue from their checkpoint under
``--work``.  Examples::

    python benchmarks/modalities.py --models ld4mrec --dataset tiktok \
        --root DATA_ROOT --seeds 0 1 2 --threads 1
    python benchmarks/modalities.py --models ld4mrec --dataset tiktok \
        --root DATA_ROOT --variants=full,+noise128 --label proj \
        --set preference_projection=true
    python benchmarks/modalities.py --models diffmm --dataset tiktok \
        --root DATA_ROOT --pending          # the runs still missing
    python benchmarks/modalities.py --report-only

    # your own data (a folder in either layout): which modalities pay?
    python benchmarks/modalities.py --models ld4mrec diffmm \
        --dataset PATH --seeds 0 1 2 --results my_results
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality  # noqa: E402

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')

RESULTS = HERE / 'results'
WORK = HERE.parent / 'runs' / 'modalities'
NOISE_DIMS = (128, 1024)
#: models that can be trained without any modality, and the setting for it
NO_MODALITY = {'ld4mrec': {'use_bg': False}}
METRICS = (('test/recall@20', 'R@20'), ('test/ndcg@20', 'N@20'))


# ---------------------------------------------------------------------------
# variants and data
def variants_of(model: str, modalities: Sequence[str],
                noise_dims: Sequence[int] = NOISE_DIMS) -> List[str]:
    r"""The variants of ``model`` on data with ``modalities``, in report
    order."""
    out = ['full'] + [f'-{m}' for m in modalities]
    if model in NO_MODALITY:
        out.append('none')
    return out + [f'+noise{d}' for d in noise_dims]


def noise_features(num_items: int, dim: int, seed: int) -> np.ndarray:
    r"""``[I, d]`` i.i.d. standard normal features, a function of
    ``(seed, d)`` only."""
    rng = np.random.default_rng([int(seed), int(dim)])
    return rng.standard_normal((num_items, dim)).astype(np.float32)


def variant_data(data, variant: str, seed: int):
    r"""``(data, modalities, overrides)`` of ``variant``: the data (with the
    noise modality added for ``+noise<d>``), the modality names the model
    uses (:obj:`None`: all of ``data``) and the configuration changes."""
    from mmdiff.data.hetero import add_modality, modality_names, num_items
    names = modality_names(data)
    if variant == 'full':
        return data, None, {}
    if variant == 'none':
        return data, [], {}
    if variant.startswith('-'):
        m = variant[1:]
        if m not in names:
            raise ValueError(f"variant {variant!r}: no modality {m!r} in "
                             f"{names}")
        return data, [n for n in names if n != m], {}
    if variant.startswith('+noise'):
        dim = int(variant[len('+noise'):])
        name = f'noise{dim}'
        data = data.clone()
        add_modality(data, name, noise_features(num_items(data), dim, seed))
        return data, names + [name], {}
    raise ValueError(f"unknown variant {variant!r}; expected full, none, "
                     f"-<modality> or +noise<dim>")


def select_modalities(data, names: Sequence[str]):
    r"""A copy of ``data`` holding only the item modalities ``names``."""
    from mmdiff.data.hetero import modality_names
    data = data.clone()
    for m in modality_names(data):
        if m not in names:
            del data['item'][m]
    return data


def dataset_tag(dataset: str) -> str:
    r"""Short file-name tag of a dataset name or folder."""
    p = Path(str(dataset))
    tag = p.name if p.name else str(dataset)
    return ''.join(c if c.isalnum() or c in '._' else '_' for c in tag)


def record_name(model: str, label: str, dataset: str, variant: str,
                seed: int) -> str:
    v = {'full': 'full', 'none': 'none'}.get(variant) or (
        ('minus-' + variant[1:]) if variant.startswith('-') else
        ('plus-' + variant[1:]))
    lab = f'-{label}' if label else ''
    return f'{model}{lab}-{dataset_tag(dataset)}-{v}-seed{seed}.json'


# ---------------------------------------------------------------------------
# one run
def run_variant(model: str, dataset: str, variant: str, seed: int, *,
                root: Optional[str], device: str = 'cpu',
                overrides: Optional[Dict] = None, label: str = '',
                epochs: int = 0, work: Optional[Path] = WORK,
                data=None, command: Optional[str] = None) -> Dict:
    r"""Trains one (model, variant, seed) and returns its record."""
    from mmdiff.nn.models import get_model_class
    from mmdiff.train.config import preset
    from mmdiff.train.run import dataset_key, load_data, train_run
    cls = get_model_class(model)
    cfg = preset(cls.name, dataset_key(dataset))
    cfg.update(overrides or {})
    if epochs:
        cfg['epochs'] = epochs
    base = data if data is not None else load_data(dataset, root)
    vdata, mods, extra = variant_data(base, variant, seed)
    if variant == 'none':
        if cls.name not in NO_MODALITY:
            raise ValueError(f"{cls.name} cannot be trained without a "
                             f"modality (no 'none' variant)")
        extra = dict(NO_MODALITY[cls.name])
    cfg.update(extra)
    if mods is not None:
        vdata = select_modalities(vdata, mods)
    out = None
    if work is not None:
        out = Path(work) / record_name(cls.name, label, dataset, variant,
                                       seed)[:-len('.json')]
    resume = out is not None and (out / 'checkpoint.pt').exists()
    t0 = time.time()
    result, net, _ = train_run(cls.name, dataset, root=root, seed=seed,
                               device=device, cfg=cfg, data=vdata,
                               out=str(out) if out else None, resume=resume,
                               log=lambda s: print(s, flush=True))
    from mmdiff.data.hetero import modality_names
    return {'model': cls.name, 'label': label, 'dataset': str(dataset),
            'variant': variant, 'seed': seed,
            'modalities': modality_names(vdata) if (
                variant != 'none') else [],
            'config': cfg, 'metrics': result.metrics_dict(),
            'modality_weights': modality_weights(net),
            'modality_relevance': {
                m: dataclasses.asdict(r) for m, r in
                getattr(net, 'modality_relevance', {}).items()},
            'history': quality.compact_history(out) if out else [],
            'wall_seconds': time.time() - t0,
            'command': command or command_line(sys.argv[1:]),
            'machine': quality.machine(),
            'date': dt.datetime.now().isoformat(timespec='seconds')}


#: settings that act only while a model is built; a run that differs from
#: the full run only in these can be its twin
BUILD_ONLY = frozenset({'modality_screening', 'screening_alpha'})


def model_modalities(model) -> List[str]:
    r"""The modalities a built model uses (DiffMM ``modalities``, LD4MRec
    ``modality_names``)."""
    names = getattr(model, 'modalities', None)
    if names is None:
        names = getattr(model, 'modality_names', None)
    return list(names or [])


def outcome(metrics: Dict) -> Dict:
    r"""The metrics of a record without its timings."""
    return {k: v for k, v in metrics.items()
            if not k.startswith('seconds_per_epoch')}


def _tensors(model) -> Dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def twin_check(model: str, cfg: Dict, data, twin_cfg: Dict, twin_data,
               seed: int) -> Optional[Dict]:
    r"""Whether training ``(model, cfg, data)`` is the same computation as
    training ``(model, twin_cfg, twin_data)`` with ``seed``: both models are
    built as :func:`mmdiff.train.run.train_run` builds them, and they are
    twins when the configurations differ only in :data:`BUILD_ONLY`, the
    models use the same modalities in the same order, every parameter and
    buffer is bit-identical and the Python, NumPy and torch random states
    after building are equal.  (The trainer reads only the interactions and
    the model, so it then runs the same computation.)  Returns the check
    (what was compared, which modalities the screening dropped) or
    :obj:`None` when they are not twins."""
    import random
    from mmdiff.train.run import build_model
    diff = sorted(k for k in set(cfg) | set(twin_cfg)
                  if cfg.get(k) != twin_cfg.get(k))
    if set(diff) - BUILD_ONLY:
        return None
    built = []
    for c, d in ((twin_cfg, twin_data), (cfg, data)):
        net, trainer_kw = build_model(model, d, dict(c), seed=seed)
        built.append((net, trainer_kw, torch.get_rng_state(),
                      np.random.get_state(), random.getstate()))
    (a, kw_a, ta, na, pa), (b, kw_b, tb, nb, pb) = built
    names_a, names_b = model_modalities(a), model_modalities(b)
    ten_a, ten_b = _tensors(a), _tensors(b)
    same = (kw_a == kw_b and names_a == names_b and type(a) is type(b)
            and list(ten_a) == list(ten_b)
            and all(ten_a[k].dtype == ten_b[k].dtype and
                    ten_a[k].shape == ten_b[k].shape and
                    torch.equal(ten_a[k], ten_b[k]) for k in ten_a)
            and torch.equal(ta, tb) and pa == pb
            and na[0] == nb[0] and np.array_equal(na[1], nb[1])
            and na[2:] == nb[2:])
    if not same:
        return None
    dropped = getattr(b, 'dropped_modalities', [])
    return {'relevance': {m: dataclasses.asdict(r) for m, r in
                          getattr(b, 'modality_relevance', {}).items()},
            'config_differs_in': diff, 'modalities': names_b,
            'dropped_by_screening': list(dropped),
            'tensors_compared': len(ten_b),
            'elements_compared': int(sum(t.numel() for t in ten_b.values())),
            'random_states_equal': True}


def run_twin(model: str, dataset: str, variant: str, seed: int, *,
             full_record: Dict, overrides: Optional[Dict] = None,
             label: str = '', epochs: int = 0, data=None, root=None,
             command: Optional[str] = None) -> Optional[Dict]:
    r"""The record of ``(model, variant, seed)`` without training, when its
    model is the twin (:func:`twin_check`) of the default full model of the
    same seed, whose ``full_record`` then gives the metrics; else
    :obj:`None` (the run has to be trained).  This is the case of a noise
    modality that ``modality_screening`` drops before anything is built,
    and of the papers' behaviour (``modality_screening=false``) on data
    whose every modality passes the screening."""
    from mmdiff.data.hetero import modality_names
    from mmdiff.train.config import preset
    from mmdiff.train.run import dataset_key, load_data
    t0 = time.time()
    cfg = preset(model, dataset_key(dataset))
    cfg.update(overrides or {})
    if epochs:
        cfg['epochs'] = epochs
    if (variant == 'full' and not label) or variant == 'none' or \
            variant.startswith('-'):
        return None
    base = data if data is not None else load_data(dataset, root)
    vdata, mods, extra = variant_data(base, variant, seed)
    cfg.update(extra)
    if mods is not None:
        vdata = select_modalities(vdata, mods)
    check = twin_check(model, cfg, vdata, full_record['config'], base, seed)
    if check is None:
        return None
    rec = {k: full_record[k] for k in ('model', 'dataset', 'metrics',
                                        'modality_weights', 'history')}
    relevance = check.pop('relevance')
    rec.update({
        'label': label, 'variant': variant, 'seed': seed,
        'modalities': modality_names(vdata), 'config': cfg,
        'modality_relevance': relevance,
        'twin_of': record_name(model, '', dataset, 'full', seed),
        'twin_check': check,
        'wall_seconds': time.time() - t0,
        'command': command or command_line(sys.argv[1:]),
        'machine': quality.machine(),
        'date': dt.datetime.now().isoformat(timespec='seconds')})
    return rec


def command_line(argv: Sequence[str]) -> str:
    r"""The command of a run as stored in its record, with the data root
    written as ``DATA_ROOT``."""
    out, skip = ['benchmarks/modalities.py'], False
    for a in argv:
        if skip:
            out.append('DATA_ROOT')
            skip = False
        elif a == '--root':
            out.append(a)
            skip = True
        elif a.startswith('--root='):
            out.append('--root=DATA_ROOT')
        else:
            out.append(a)
    return ' '.join(out)


def modality_weights(model) -> Optional[Dict[str, float]]:
    r"""The learned per-modality weights of a model that has them (DiffMM's
    :math:`\mathrm{softmax}(\omega)`), else :obj:`None`."""
    names = getattr(model, 'modalities', None)
    w = getattr(model, 'modal_weight', None)
    if w is None or not names:
        return None
    w = torch.softmax(w.detach().float().cpu(), 0).tolist()
    return dict(zip(names, w))


# ---------------------------------------------------------------------------
# report
def load_records(folder: Path) -> List[Dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob('*.json'))]


def paired_delta(base: List[Dict], var: List[Dict], key: str
                 ) -> Tuple[float, float, List[int]]:
    r"""Mean and standard error of :math:`M(v) - M(\text{full})` over the
    seeds both have (SE ``nan`` for one seed)."""
    by = {r['seed']: r['metrics'][key] for r in base}
    pairs = [(r['seed'], r['metrics'][key] - by[r['seed']])
             for r in var if r['seed'] in by]
    pairs.sort()
    d = [x for _, x in pairs]
    if not d:
        return float('nan'), float('nan'), []
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return statistics.mean(d), se, [s for s, _ in pairs]


def verdict(variant: str, mean: float, se: float) -> str:
    if variant == 'full' or mean != mean:
        return ''
    if se != se:
        return 'one seed: no SE'
    lower, higher = mean < -se, mean > se
    if variant.startswith('-'):
        return (f'{variant[1:]} pays for itself' if lower else
                f'better without {variant[1:]}' if higher else
                f'{variant[1:]} not shown to help')
    if variant == 'none':
        return ('modalities pay' if lower else 'better without modalities'
                if higher else 'modalities not shown to help')
    return 'costs > 1 SE' if lower else 'harmless (not lower by 1 SE)'


def _order(variant: str) -> Tuple[int, str]:
    rank = {'full': 0, 'none': 2}.get(variant)
    if rank is None:
        rank = 1 if variant.startswith('-') else 3
    num = variant[len('+noise'):] if variant.startswith('+noise') else ''
    return rank, num.zfill(8) if num.isdigit() else variant


def group_table(recs: List[Dict]) -> List[str]:
    by: Dict[str, List[Dict]] = {}
    for r in recs:
        by.setdefault(r['variant'], []).append(r)
    base = by.get('full', [])
    lines = ['| variant | seeds | R@20 | N@20 | ΔR@20 ± SE | ΔN@20 ± SE | '
             'ΔR@20 / SE | verdict | s/run |',
             '|---|---|---|---|---|---|---|---|---|']
    for v in sorted(by, key=_order):
        rs = sorted(by[v], key=lambda r: r['seed'])
        cells = [v, ', '.join(str(r['seed']) for r in rs)]
        for key, _ in METRICS:
            vals = [r['metrics'][key] for r in rs]
            sd = statistics.stdev(vals) if len(vals) > 1 else float('nan')
            cells.append(f'{statistics.mean(vals):.4f}' +
                         (f' ± {sd:.4f}' if sd == sd else ''))
        ratio, verdict_text = '', ''
        for key, _ in METRICS:
            if v == 'full' or not base:
                cells.append('')
                continue
            mean, se, seeds = paired_delta(base, rs, key)
            if not seeds:
                cells.append('no paired full run')
                continue
            cells.append(f'{mean:+.4f}' + (f' ± {se:.4f} (n={len(seeds)})'
                                           if se == se else ' (1 seed)'))
            if key == 'test/recall@20':
                ratio = f'{mean / se:+.1f}' if se == se and se > 0 else ''
                verdict_text = verdict(v, mean, se)
                if all(r.get('twin_of') for r in rs):
                    verdict_text += ' (twin of full, not retrained)'
        cells += [ratio, verdict_text,
                  f"{statistics.mean(r['wall_seconds'] for r in rs):.0f}"]
        lines.append('| ' + ' | '.join(cells) + ' |')
    weights = [r for r in recs if r.get('modality_weights')]
    if weights:
        lines += ['', 'Learned modality weights softmax(ω) at the end of '
                  'training (mean over seeds):', '']
        wb: Dict[str, Dict[str, List[float]]] = {}
        for r in weights:
            for m, w in r['modality_weights'].items():
                wb.setdefault(r['variant'], {}).setdefault(m, []).append(w)
        for v in sorted(wb, key=_order):
            lines.append(f'- {v}: ' + ', '.join(
                f'{m} {statistics.mean(ws):.3f}'
                for m, ws in wb[v].items()))
    return lines


def seed_table(recs: List[Dict]) -> List[str]:
    lines = ['| variant | seed | data modalities | R@20 | N@20 | val R@20 | '
             'val R@20, epochs 10-19 | best epoch | epochs run | s/epoch |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in sorted(recs, key=lambda r: (_order(r['variant']), r['seed'])):
        m = r['metrics']
        late = [h['val/recall@20'] for h in r.get('history', [])
                if 10 <= h['epoch'] < 20 and 'val/recall@20' in h]
        late = f'{statistics.mean(late):.4f}' if len(late) == 10 else '—'
        lines.append(
            f"| {r['variant']} | {r['seed']} | "
            f"{', '.join(r['modalities']) or '—'} | "
            f"{m['test/recall@20']:.4f} | {m['test/ndcg@20']:.4f} | "
            f"{m.get('val/recall@20', float('nan')):.4f} | {late} | "
            f"{m.get('best_epoch', '')} | {m.get('epochs_run', '')} | "
            f"{m.get('seconds_per_epoch', float('nan')):.2f} |")
    return lines


def relevance_lines(recs: List[Dict]) -> List[str]:
    r"""What the relevance test of ``modality_screening`` decided, per
    modality over the runs that ran it."""
    by: Dict[str, List[Dict]] = {}
    for r in recs:
        for m, rel in (r.get('modality_relevance') or {}).items():
            by.setdefault(m, []).append(rel)
    if not by:
        return []
    parts = []
    for m, rels in by.items():
        kept = sum(x['keep'] for x in rels)
        ps = [x['p_value'] for x in rels]
        parts.append(
            f"{m} kept in {kept} of {len(rels)} runs (held-out R² "
            f"{min(x['score'] for x in rels):+.5f} to "
            f"{max(x['score'] for x in rels):+.5f}, p {min(ps):.2f} to "
            f"{max(ps):.2f})")
    return ['', 'Relevance test of `modality_screening` (runs that ran it): '
            + '; '.join(parts) + '.']


def twin_lines(recs: List[Dict], all_recs: List[Dict]) -> List[str]:
    r"""The runs of a group that were not trained again (``twin_of``), and
    the trained runs whose metrics equal those of the default full run of
    the same seed exactly (the evidence that a twin trains identically)."""
    twins = [r for r in recs if r.get('twin_of')]
    if not twins:
        return []
    full = {(r['dataset'], r['model'], r['seed']): r for r in all_recs
            if r['variant'] == 'full' and not r.get('label')}
    by: Dict[str, List[Dict]] = {}
    for r in twins:
        by.setdefault(r['variant'], []).append(r)
    parts = []
    for v in sorted(by, key=_order):
        rs = sorted(by[v], key=lambda r: r['seed'])
        dropped = sorted({m for r in rs
                          for m in r['twin_check']['dropped_by_screening']})
        differs = sorted({k for r in rs
                          for k in r['twin_check']['config_differs_in']})
        why = (f'the screening dropped {", ".join(dropped)}' if dropped else
               'the same modalities') + (
            f'; configuration differs only in {", ".join(differs)}'
            if differs else '')
        n = rs[0]['twin_check']['tensors_compared']
        parts.append(f"{v} seed{'s' if len(rs) > 1 else ''} "
                     f"{', '.join(str(r['seed']) for r in rs)} ({why}; "
                     f"{n} parameters and buffers bit-equal)")
    same = sorted(
        f"{r['model']}{'-' + r['label'] if r.get('label') else ''} "
        f"{dataset_tag(r['dataset'])} {r['variant']} seed {r['seed']}"
        for r in all_recs if not r.get('twin_of') and
        r['model'] == twins[0]['model'] and
        (r['variant'] != 'full' or r.get('label')) and
        (r['dataset'], r['model'], r['seed']) in full and
        outcome(r['metrics']) == outcome(
            full[(r['dataset'], r['model'], r['seed'])]['metrics']))
    lines = ['', 'Not trained again (twins: both models built as a run '
             'builds them were bit-identical, with equal random states '
             'afterwards, so the run is the default full run of the same '
             'seed and its record takes that run\'s metrics; '
             '`--no-twins` trains them anyway): ' + '; '.join(parts) + '.']
    if same:
        lines[-1] += (f' Trained {twins[0]["model"]} runs whose metrics '
                      f'equal the default full run of their seed exactly '
                      f'({len(same)}): '
                      + ', '.join(same) + '.')
    return lines


def missing_lines(recs: List[Dict]) -> List[str]:
    r"""Variants that lack some of the group's seeds."""
    seeds = sorted({r['seed'] for r in recs})
    have: Dict[str, set] = {}
    for r in recs:
        have.setdefault(r['variant'], set()).add(r['seed'])
    miss = [f"{v} seed{'s' if len(set(seeds) - s) > 1 else ''} "
            f"{', '.join(str(x) for x in sorted(set(seeds) - s))}"
            for v, s in sorted(have.items(), key=lambda kv: _order(kv[0]))
            if set(seeds) - s]
    if not miss:
        return []
    return ['', 'Not run yet (`--pending` lists the commands): ' +
            '; '.join(miss) + '.']


def against_paper(groups: Dict[Tuple, List[Dict]]) -> List[str]:
    r"""The default configuration against ``--label paper`` (the papers'
    behaviour), variant by variant, paired by seed."""
    lines = []
    for (dataset, model, label), rs in sorted(groups.items()):
        paper = groups.get((dataset, model, 'paper'))
        if label or not paper:
            continue
        if not lines:
            lines = ['## Defaults against the papers\' behaviour', '',
                     'Δ = default − paper (`--label paper --set '
                     'modality_screening=false`), same variant and seed.', '',
                     '| model | dataset | variant | seeds | ΔR@20 ± SE | '
                     'ΔN@20 ± SE |', '|---|---|---|---|---|---|']
        for v in sorted({r['variant'] for r in rs}, key=_order):
            a = [r for r in paper if r['variant'] == v]
            b = [r for r in rs if r['variant'] == v]
            cells = []
            for key, _ in METRICS:
                mean, se, seeds = paired_delta(a, b, key)
                if not seeds:
                    break
                cells.append(f'{mean:+.4f}' + (f' ± {se:.4f}' if se == se
                                               else ' (1 seed)'))
            if len(cells) == len(METRICS):
                lines.append(f"| {model} | {dataset_tag(dataset)} | {v} | "
                             f"{', '.join(str(x) for x in seeds)} | "
                             + ' | '.join(cells) + ' |')
    return lines + [''] if lines else []


#: the models of the issue, reported as not run where they have no records
MODELS = ('ld4mrec', 'diffmm')


def not_run(groups: Dict[Tuple, List[Dict]]) -> List[str]:
    r"""For a dataset with records, the models of :data:`MODELS` without
    any, with the cost of one run of their preset measured by
    ``benchmarks/quality.py`` (``quality_runs/``) and the runs that the
    three-seed table needs."""
    lines = []
    quality_groups = quality.group_runs(quality.load_runs())
    for dataset in sorted({d for d, _, _ in groups}):
        present = {m for d, m, _ in groups if d == dataset}
        mods = next((r['modalities'] for (d, _, _), rs in groups.items()
                     if d == dataset for r in rs if r['variant'] == 'full'),
                    None)
        for model in MODELS:
            if model in present or mods is None:
                continue
            n_runs = 3 * len(variants_of(model, mods))
            line = (f'- {model} on {dataset_tag(dataset)}: no run yet; the '
                    f'table needs {n_runs} runs (3 seeds × '
                    f"{', '.join(variants_of(model, mods))}).")
            prior = quality_groups.get((model, str(dataset), 0.0), [])
            if prior:
                wall = statistics.mean(r['wall_seconds'] for r in prior)
                spe = statistics.mean(r['metrics']['seconds_per_epoch']
                                      for r in prior)
                epochs = statistics.mean(r['metrics']['epochs_run']
                                         for r in prior)
                line += (f' One run of its preset took {wall / 60:.0f} min '
                         f'on average over the {len(prior)} records of '
                         f'`quality_runs/{model}-{dataset_tag(dataset)}-'
                         f'seed*.json` ({epochs:.0f} epochs at '
                         f'{spe:.1f} s), so about {n_runs * wall / 3600:.1f} '
                         f'h of one core for the table.')
            lines.append(line)
    if not lines:
        return []
    return ['## Not run', ''] + lines + ['']


def group_key(r: Dict) -> Tuple[str, str, str]:
    return (r['dataset'], r['model'], r.get('label', ''))


def render(recs: List[Dict]) -> str:
    lines = [
        '# What each modality contributes, and what a noise modality costs',
        '',
        'Generated by `benchmarks/modalities.py` from the records in '
        '`modality_runs/` (issue #17). Each variant is trained with the '
        "dataset's preset, early stopping on validation Recall@20, and the "
        'test metrics of the validation-selected epoch are compared with '
        'the full model of the same seed: Δ = variant − full, mean over '
        'the paired seeds ± its standard error (sd/√n). Variants: `full` '
        '(all modalities), `-m` (modality m left out), `none` (no modality, '
        'LD4MRec w/o BG), `+noise<d>` (all modalities plus a d-dimensional '
        'modality of seeded i.i.d. N(0, 1) noise). A modality *pays for '
        'itself* when leaving it out lowers Recall@20 by more than one SE; '
        'a noise modality is *harmless* when it costs at most one SE.', '']
    if not recs:
        return '\n'.join(lines + ['No runs yet.']) + '\n'
    groups: Dict[Tuple, List[Dict]] = {}
    for r in recs:
        groups.setdefault(group_key(r), []).append(r)
    for (dataset, model, label), rs in sorted(groups.items()):
        title = f'{model}' + (f' ({label})' if label else '') + \
            f' on {dataset_tag(dataset)}'
        cfg_diff = sorted({json.dumps(r['config'], sort_keys=True)
                           for r in rs if r['variant'] == 'full'})
        lines += [f'## {title}', '']
        lines += group_table(rs)
        lines += relevance_lines(rs)
        lines += twin_lines(rs, recs)
        lines += missing_lines(rs)
        lines += ['', 'Per seed:', ''] + seed_table(rs) + ['']
        if cfg_diff:
            lines += ['Configuration of the full model: `' +
                      '`; `'.join(cfg_diff) + '`', '']
    lines += against_paper(groups)
    lines += not_run(groups)
    lines += ['## Provenance', '',
              'Commands (each run once per listed seed; finished runs are '
              'skipped when a command is repeated):', '']
    lines += [f'- `python {c}`' for c in sorted({r['command'] for r in recs})]
    notes = sorted({r['note'] for r in recs if r.get('note')})
    for i, note in enumerate(notes):
        which = sorted(f"{r['model']}-{r.get('label') or 'default'} "
                       f"{r['variant']} seed {r['seed']}"
                       for r in recs if r.get('note') == note)
        lines += ['', f"Note {i + 1} ({', '.join(which)}): {note}."]
    dates = sorted(r['date'] for r in recs)
    lines += ['', f"Machine: {'; '.join(sorted({r['machine'] for r in recs}))}"
              '  ', f'Dates: {dates[0]} to {dates[-1]}', '']
    return '\n'.join(lines)


def report(results: Path) -> str:
    text = render(load_records(Path(results) / 'modality_runs'))
    (Path(results) / 'modalities.md').write_text(text)
    return text


# ---------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--models', nargs='+', default=['ld4mrec'])
    ap.add_argument('--dataset', default='tiktok',
                    help="a dataset name (tiktok, baby, sports, synthetic, "
                         "'synthetic:...') or a folder PATH")
    ap.add_argument('--root', default=None, metavar='DATA_ROOT',
                    help='the folder that holds the named datasets')
    ap.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    ap.add_argument('--variants', default=None,
                    help='comma-separated subset, e.g. full,+noise128 '
                         '(default: all of the model and data)')
    ap.add_argument('--noise-dims', nargs='+', type=int,
                    default=list(NOISE_DIMS))
    ap.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                    help='configuration overrides of every run (use with '
                         '--label)')
    ap.add_argument('--label', default='',
                    help='name of this configuration in the record names '
                         'and the report')
    ap.add_argument('--epochs', type=int, default=0,
                    help='epoch cap (default: the preset)')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--results', default=str(RESULTS),
                    help='folder of modality_runs/ and modalities.md')
    ap.add_argument('--work', default=str(WORK),
                    help="checkpoints of the runs ('' for none)")
    ap.add_argument('--pending', action='store_true',
                    help='list the runs still missing and exit')
    ap.add_argument('--force', action='store_true')
    ap.add_argument('--no-twins', action='store_true',
                    help='train every run, also those whose built model is '
                         'bit-identical to the full model of the same seed '
                         '(by default their record takes the full run\'s '
                         'metrics, marked twin_of)')
    ap.add_argument('--report-only', action='store_true')
    args = ap.parse_args(argv)
    command = command_line(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.set and not args.label:
        ap.error('--set needs --label (the records of another '
                 'configuration must not mix with the defaults)')
    results = Path(args.results)
    runs = results / 'modality_runs'
    if not args.report_only:
        from mmdiff.data.hetero import modality_names
        from mmdiff.nn.models import get_model_class
        from mmdiff.train.config import parse_overrides
        from mmdiff.train.run import load_data
        overrides = parse_overrides(args.set)
        data = load_data(args.dataset, args.root)
        todo = []
        for model in args.models:
            name = get_model_class(model).name
            allv = variants_of(name, modality_names(data), args.noise_dims)
            chosen = (allv if args.variants is None else
                      [v.strip() for v in args.variants.split(',')])
            for v in chosen:
                if v == 'none' and name not in NO_MODALITY:
                    print(f'{name}: no "none" variant (needs a modality)')
                    continue
                for seed in args.seeds:
                    path = runs / record_name(name, args.label, args.dataset,
                                              v, seed)
                    if path.exists() and not args.force:
                        continue
                    todo.append((name, v, seed, path))
        if args.pending:
            for name, v, seed, path in todo:
                lab = f' --label {args.label}' if args.label else ''
                st = f" --set {' '.join(args.set)}" if args.set else ''
                print(f'python benchmarks/modalities.py --models {name} '
                      f'--dataset {args.dataset} --root DATA_ROOT '
                      f'--seeds {seed} --variants={v} --threads 1{lab}{st}')
            print(f'{len(todo)} run(s) pending')
            return 0
        runs.mkdir(parents=True, exist_ok=True)
        for name, v, seed, path in todo:
            print(f'=== {path.name}', flush=True)
            rec = None
            full = runs / record_name(name, '', args.dataset, 'full', seed)
            if not args.no_twins and full.exists():
                rec = run_twin(name, args.dataset, v, seed,
                               full_record=json.loads(full.read_text()),
                               overrides=overrides, label=args.label,
                               epochs=args.epochs, data=data, root=args.root,
                               command=command)
                if rec is not None:
                    chk = rec['twin_check']
                    why = (f"screening dropped "
                           f"{', '.join(chk['dropped_by_screening'])}"
                           if chk['dropped_by_screening'] else
                           f"configuration differs only in "
                           f"{', '.join(chk['config_differs_in']) or '-'}")
                    print(f"{path.name}: the same model as {full.name} "
                          f"({why}); not trained again", flush=True)
            if rec is None:
                rec = run_variant(
                    name, args.dataset, v, seed, root=args.root,
                    device=args.device, overrides=overrides,
                    label=args.label, epochs=args.epochs,
                    work=Path(args.work) if args.work else None,
                    data=data, command=command)
            path.write_text(json.dumps(rec, indent=1))
            print(f"{path.name}: test R@20 "
                  f"{rec['metrics']['test/recall@20']:.4f} "
                  f"({rec['wall_seconds']:.0f} s)", flush=True)
            report(results)
    print(report(results))
    return 0


if __name__ == '__main__':
    sys.exit(main())
