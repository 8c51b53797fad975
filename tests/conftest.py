r"""Shared fixtures, and two session-wide rules:

* **An isolated dataset cache.**  ``MMDIFF_CACHE_DIR`` (the default
  ``cache_dir`` of :mod:`mmdiff.data.datasets`) points to a temporary folder
  for the whole session, in ``os.environ`` so that subprocesses (``mmdiff``
  command lines) inherit it; it is removed at the end.  Tests of the
  *default* placement of the cache unset it themselves (``cache_home`` in
  ``tests/data/test_datasets.py``) and use folders of their own.
* **The shared data stay untouched.**  :data:`READ_ONLY_DIR` (``../shared/
  data``, or ``$MMDIFF_TEST_READONLY_DIR``) is listed (paths, sizes, modes,
  modification and change times) when the session starts; after every test the
  listing is compared again and a test that created, removed or modified
  anything there errors at teardown, naming the paths.  The whole session is
  compared once more at its end, and the run fails if anything changed.
"""
import os
import pickle
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmdiff.data.hetero import make_interaction_data

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')

#: the shared real datasets live beside the repository (../shared/data)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'

#: the folder no test may write into (``$MMDIFF_TEST_READONLY_DIR`` replaces
#: it, e.g. to check the guard itself on a scratch folder)
READ_ONLY_DIR = Path(os.environ.get('MMDIFF_TEST_READONLY_DIR')
                     or SHARED_DATA).absolute()

CACHE_ENV = 'MMDIFF_CACHE_DIR'

Listing = Dict[str, Tuple[str, int, int, int, int]]


def listing(folder: Path) -> Listing:
    r"""``{relative path: (kind, size, mode, mtime_ns, ctime_ns)}`` of
    ``folder`` and everything below it (symbolic links are not followed;
    ``{}`` if the folder does not exist).  A directory's modification time
    changes when an entry is created or removed in it, even if it is removed
    again."""
    out: Listing = {}
    if not os.path.lexists(folder):
        return out
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [''] + dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            try:
                st = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:  # removed while we walk
                continue
            kind = ('dir' if stat.S_ISDIR(st.st_mode) else
                    'link' if stat.S_ISLNK(st.st_mode) else 'file')
            out[os.path.relpath(path, folder)] = (
                kind, int(st.st_size), int(st.st_mode), int(st.st_mtime_ns),
                int(st.st_ctime_ns))
    return out


def listing_changes(before: Listing, after: Listing) -> List[str]:
    r"""Human-readable differences between two :func:`listing` results."""
    out = [f'created {p}' for p in sorted(after.keys() - before.keys())]
    out += [f'removed {p}' for p in sorted(before.keys() - after.keys())]
    out += [f'modified {p}' for p in sorted(before.keys() & after.keys())
            if before[p] != after[p]]
    return out


class _ReadOnlyGuard:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.start = self.last = listing(folder)

    def changes_since_last(self) -> List[str]:
        now = listing(self.folder)
        changes = listing_changes(self.last, now)
        self.last = now  # report a write once, at the test that made it
        return changes

    def changes_since_start(self) -> List[str]:
        return listing_changes(self.start, listing(self.folder))


_GUARD: Dict[str, object] = {}


def pytest_configure(config):
    _GUARD['saved_env'] = os.environ.get(CACHE_ENV)
    cache = tempfile.mkdtemp(prefix='mmdiff-test-cache-')
    _GUARD['cache'] = cache
    os.environ[CACHE_ENV] = cache
    _GUARD['guard'] = _ReadOnlyGuard(READ_ONLY_DIR)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    guard = _GUARD.get('guard')
    if guard is None:
        return
    changes = guard.changes_since_start()
    if changes:
        lines = [f'the test session changed {guard.folder}, which must stay '
                 f'read-only:'] + [f'  {c}' for c in changes[:50]]
        reporter = session.config.pluginmanager.get_plugin('terminalreporter')
        if reporter is not None:
            reporter.write_sep('=', 'read-only data modified', red=True)
            for line in lines:
                reporter.write_line(line, red=True)
        else:
            print('\n'.join(lines))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    cache = _GUARD.pop('cache', None)
    if cache is not None:
        saved = _GUARD.pop('saved_env', None)
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved
        shutil.rmtree(cache, ignore_errors=True)
    _GUARD.pop('guard', None)


def _inside(path, folder: Path) -> bool:
    try:
        return Path(path).absolute().is_relative_to(folder)
    except (TypeError, ValueError):
        return False


@pytest.fixture(autouse=True)
def _read_only_data_guard(request):
    r"""Errors at teardown if the test wrote into :data:`READ_ONLY_DIR`."""
    yield
    guard = _GUARD.get('guard')
    if guard is None:
        return
    changes = guard.changes_since_last()
    if changes:
        pytest.fail(f"{request.node.nodeid} wrote into {guard.folder}, "
                    f"which tests must leave untouched (the dataset cache "
                    f"belongs in ${CACHE_ENV}): " + '; '.join(changes[:10]),
                    pytrace=False)


def tiny_data(num_users=40, num_items=30, per_user=6, modalities=None,
              seed=0):
    r"""A small random interaction dataset with a leave-two-out split."""
    g = np.random.default_rng(seed)
    rows = []
    for u in range(num_users):  # test fixture only: not library code
        items = g.choice(num_items, size=per_user, replace=False)
        rows.append(np.stack([np.full(per_user, u), items]))
    e = np.concatenate(rows, axis=1)
    train = e[:, np.tile(np.arange(per_user) < per_user - 2, num_users)]
    val = e[:, np.tile(np.arange(per_user) == per_user - 2, num_users)]
    test = e[:, np.tile(np.arange(per_user) == per_user - 1, num_users)]
    mods = {}
    for name, dim in (modalities or {}).items():
        mods[name] = g.standard_normal((num_items, dim)).astype(np.float32)
    return make_interaction_data(num_users, num_items, train, val, test, mods)


@pytest.fixture
def tiny():
    return tiny_data()


def requires_shared(name):
    return pytest.mark.skipif(not (SHARED_DATA / name).exists(),
                              reason=f'{SHARED_DATA / name} not available')


@pytest.fixture
def one_thread():
    r"""Run a test single-threaded (2 shared cores: avoid oversubscription)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_diffmm_folder(folder, seed=0, feats=True):
    r"""A tiny dataset in the DiffMM layout (20 users, 15 items; image and
    text features unless ``feats=False``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dense = rng.random((20, 15)) < 0.3
    dense[:, 0] = True
    labels = rng.integers(0, 3, dense.shape)
    labels[:, 0] = 0
    for name, k in (('trnMat.pkl', 0), ('valMat.pkl', 1), ('tstMat.pkl', 2)):
        m = sp.coo_matrix((dense & (labels == k)).astype(np.float64))
        (folder / name).write_bytes(pickle.dumps(m, protocol=3))
    if feats:
        np.save(folder / 'image_feat.npy', rng.random((15, 4), np.float32))
        np.save(folder / 'text_feat.npy', rng.random((15, 3), np.float32))
    return folder
