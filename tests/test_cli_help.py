r"""Name lists in the command line's help come from the registries: models
from :data:`mmdiff.nn.models.MODELS` (read when the parser is built, so
:func:`~mmdiff.nn.models.register_model` extends them), datasets from
:data:`mmdiff.data.datasets.DATASET_NAMES`; metric names live in one tuple,
:data:`mmdiff.metrics.METRIC_NAMES`."""
import re
from pathlib import Path

import pytest
import torch

from mmdiff.cli import main, metrics_table
from mmdiff.data.datasets import DATASET_NAMES
from mmdiff.metrics import METRIC_NAMES, full_ranking_metrics
from mmdiff.nn.models import MF, MODELS, register_model

REPO = Path(__file__).resolve().parents[1]
EXTRA = 'zzhelpprobe'


def help_of(capsys, monkeypatch, *argv) -> str:
    monkeypatch.setenv('COLUMNS', '400')  # no line wrapping
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([*argv, '--help'])
    assert info.value.code == 0
    return ' '.join(capsys.readouterr().out.split())


def listed(name: str, text: str) -> bool:
    r"""Whether ``name`` is an entry of a ``a | b | c`` list in ``text``."""
    return re.search(rf'(?:^|[\s|(]){re.escape(name)}(?=$|[\s|),])',
                     text) is not None


@pytest.fixture
def extra_model():
    assert EXTRA not in MODELS

    class Probe(MF):
        name = EXTRA

    register_model(Probe)
    try:
        yield Probe
    finally:
        MODELS.pop(EXTRA, None)


def test_train_help_lists_every_model_and_dataset(capsys, monkeypatch,
                                                  extra_model):
    text = help_of(capsys, monkeypatch, 'train')
    assert EXTRA in MODELS and 'diffrec' in MODELS
    for name in MODELS:  # includes diffrec and the one registered here
        assert listed(name, text), (name, text)
    for name in DATASET_NAMES:
        assert listed(name, text), (name, text)
    # the other subcommands that take these names
    demo = help_of(capsys, monkeypatch, 'demo')
    assert all(listed(name, demo) for name in MODELS), demo
    info = help_of(capsys, monkeypatch, 'data', 'info')
    assert all(listed(name, info) for name in DATASET_NAMES), info


def test_help_is_built_when_the_parser_is(capsys, monkeypatch, extra_model):
    assert listed(EXTRA, help_of(capsys, monkeypatch, 'train'))
    MODELS.pop(EXTRA)
    assert not listed(EXTRA, help_of(capsys, monkeypatch, 'train'))


def test_metric_names_are_what_is_computed():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.1, 0.4]])
    target = torch.tensor([[0, 1], [2, 1]])
    m = full_ranking_metrics(lambda u: scores[u], target, 2, 4, ks=(1, 3))
    assert set(m) == {f'{n}@{k}' for n in METRIC_NAMES for k in (1, 3)} | {
        'num_users'}
    table = metrics_table({f'test/{n}@3': m[f'{n}@3'] for n in METRIC_NAMES},
                          ks=(3,))
    header = table.splitlines()[0].split()
    assert header == ['split'] + [f'{n}@3' for n in METRIC_NAMES]


#: files that still spell the metric names out by hand, to be switched to
#: METRIC_NAMES by their owners (remove them here when done)
NAME = r"'(?:%s)'" % '|'.join(METRIC_NAMES)


def test_no_other_hand_written_metric_name_lists():
    pattern = re.compile(rf'[(\[{{]\s*{NAME}\s*,\s*{NAME}')
    found = []
    for folder in ('mmdiff', 'benchmarks'):
        for path in sorted((REPO / folder).rglob('*.py')):
            rel = path.relative_to(REPO).as_posix()
            if rel == 'mmdiff/metrics.py':
                continue
            if pattern.search(path.read_text()):
                found.append(rel)
    assert not found, f'use mmdiff.metrics.METRIC_NAMES in {found}'
