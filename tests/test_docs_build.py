r"""The documentation site builds without a single warning and its API
reference covers the public API.

The build is the README's command: ``sphinx-build -W --keep-going -n -b html
docs <out>`` (warnings are errors, nitpicky: every cross-reference must
resolve, every docstring must parse).  Public means the ``__all__`` of
:mod:`mmdiff.nn` and its subpackages, :mod:`mmdiff.data`, :mod:`mmdiff.graph`
and :mod:`mmdiff.train`; for :mod:`mmdiff.metrics`, which has no ``__all__``,
every function defined there and every upper-case constant whose name does not
start with an underscore.  The Python examples of the user guide run as
written.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

pytest.importorskip('sphinx', reason='the docs extra is not installed')
pytest.importorskip('myst_parser', reason='the docs extra is not installed')
pytest.importorskip('furo', reason='the docs extra is not installed')

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'docs' / '_ext'))
from mmdiff_sphinx import _lookup as lookup  # noqa: E402  (the build's own)

PACKAGES = ['mmdiff.nn', 'mmdiff.nn.conv', 'mmdiff.nn.diffusion',
            'mmdiff.nn.denoisers', 'mmdiff.nn.models', 'mmdiff.data',
            'mmdiff.graph', 'mmdiff.train', 'mmdiff.metrics']

GUIDE = ['guide/install', 'guide/data', 'guide/models', 'guide/cli',
         'guide/benchmarks', 'guide/guarantees', 'guide/distributed',
         'guide/examples',
         'algorithms', 'hyperparameters', 'extending', 'api/index']


def public_names(modname: str) -> list:
    module = importlib.import_module(modname)
    if hasattr(module, '__all__'):
        return list(module.__all__)
    names = []
    for name, obj in vars(module).items():
        if name.startswith('_'):
            continue
        if inspect.isfunction(obj) and obj.__module__ == modname:
            names.append(name)
        elif name.isupper() and not inspect.ismodule(obj):
            names.append(name)
    return names


def read_inventory(path: Path) -> dict:
    r"""``{name: (domain:role, uri)}`` of a Sphinx ``objects.inv`` (v2)."""
    raw = path.read_bytes()
    lines = raw.split(b'\n', 4)
    assert lines[0].startswith(b'# Sphinx inventory version 2')
    body = zlib.decompress(lines[4]).decode()
    entries = {}
    for line in body.splitlines():
        m = re.match(r'(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+(\S*)\s+(.*)$', line)
        if m:
            entries.setdefault(m.group(1), (m.group(2), m.group(4)))
    return entries


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs') / 'html'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-n', '-q',
         '-b', 'html', str(ROOT / 'docs'), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc, out


def test_docs_build_without_warnings(built):
    proc, out = built
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert 'WARNING' not in log and 'ERROR' not in log, log[-6000:]
    assert (out / 'index.html').is_file()


def test_user_guide_pages_are_built(built):
    _, out = built
    inv = read_inventory(out / 'objects.inv')
    docs = {name for name, (role, _) in inv.items() if role == 'std:doc'}
    missing = [page for page in GUIDE if page not in docs]
    assert not missing, missing


@pytest.mark.parametrize('modname', PACKAGES)
def test_every_public_name_is_in_the_api_reference(built, modname):
    _, out = built
    inv = read_inventory(out / 'objects.inv')
    # every documented mmdiff object, by identity: a re-export (mmdiff.nn's
    # Graph is mmdiff.graph's) is covered where the object is documented
    documented = {}
    for name, (role, uri) in inv.items():
        if role.startswith('py:') and name.startswith('mmdiff'):
            obj = lookup(name)
            if obj is not None:
                documented.setdefault(id(obj), []).append((name, uri))
    module = importlib.import_module(modname)
    names = public_names(modname)
    assert names, modname
    missing = []
    for name in names:
        obj = getattr(module, name)
        hits = documented.get(id(obj), [])
        if not any(doc.rsplit('.', 1)[-1] == name for doc, _ in hits):
            missing.append(name)
    assert not missing, f'{modname}: not in the API reference: {missing}'


def test_reexports_are_listed_on_the_package_page(built):
    _, out = built
    import mmdiff.nn
    page = (out / 'api' / 'nn.html').read_text()
    missing = [name for name in mmdiff.nn.__all__
               if not re.search(rf'>{re.escape(name)}(\(\))?<', page)]
    assert not missing, missing


@pytest.mark.parametrize('page', sorted(
    p.name for p in (ROOT / 'docs' / 'guide').glob('*.md')))
def test_guide_examples_run(page, one_thread):
    r"""The ``python`` code blocks of a guide page run in order, as written
    (blocks meant to be read only are ``{code-block} python``)."""
    import warnings

    import torch
    text = (ROOT / 'docs' / 'guide' / page).read_text()
    blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
    scope: dict = {}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for block in blocks:
            exec(compile(block, f'docs/guide/{page}', 'exec'), scope)
