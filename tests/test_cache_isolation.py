r"""The dataset cache never lands in a shared data folder during tests.

* ``MMDIFF_CACHE_DIR`` is the library's default ``cache_dir``: with it set,
  nothing is written under a dataset's ``root``, writable or not.
* ``tests/conftest.py`` sets it for the whole session (in ``os.environ``, so
  subprocesses inherit it) and checks after every test, and at the end of the
  session, that ``../shared/data`` was not modified; the guard is exercised
  here on a scratch folder in a nested pytest run.
"""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path


from conftest import (
    CACHE_ENV,
    READ_ONLY_DIR,
    SHARED_DATA,
    listing,
    requires_shared,
    write_diffmm_folder,
)
from mmdiff.data.datasets import TikTok, env_cache_dir, get_dataset

REPO = Path(__file__).resolve().parents[1]


def test_session_sets_an_isolated_cache_dir():
    value = os.environ.get(CACHE_ENV)
    assert value, f'tests/conftest.py must set {CACHE_ENV} for the session'
    cache = Path(value)
    assert cache.is_dir()
    assert not cache.resolve().is_relative_to(READ_ONLY_DIR.resolve())
    assert env_cache_dir() == cache
    if not os.environ.get('MMDIFF_TEST_READONLY_DIR'):
        assert READ_ONLY_DIR == SHARED_DATA.absolute()
    # subprocesses (command-line tests) inherit it
    out = subprocess.run(
        [sys.executable, '-c', f'import os; print(os.environ["{CACHE_ENV}"])'],
        capture_output=True, text=True, check=True)
    assert out.stdout.strip() == value


def test_env_cache_dir_keeps_a_writable_root_untouched(tmp_path,
                                                       monkeypatch):
    root = write_diffmm_folder(tmp_path / 'tiktok')
    before = listing(root)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / 'env-cache'))
    dataset = TikTok(root)
    assert listing(root) == before  # not even processed/ was created
    assert Path(dataset.processed_dir).is_relative_to(tmp_path / 'env-cache')
    assert Path(dataset.processed_paths[0]).is_file()
    # get_dataset goes through the same default
    get_dataset('tiktok', root=tmp_path)
    assert listing(root) == before

    # an explicit cache_dir wins over the variable
    other = TikTok(root, cache_dir=tmp_path / 'explicit')
    assert Path(other.processed_dir).is_relative_to(tmp_path / 'explicit')
    assert listing(root) == before

    # unset (or empty): the documented default, root/processed
    for unset in (lambda: monkeypatch.delenv(CACHE_ENV),
                  lambda: monkeypatch.setenv(CACHE_ENV, '')):
        unset()
        assert env_cache_dir() is None
        assert Path(TikTok(root).processed_dir) == root / 'processed'


@requires_shared('tiktok')
def test_real_data_cached_in_the_session_cache(tmp_path, monkeypatch):
    dataset = TikTok(SHARED_DATA / 'tiktok')
    assert Path(dataset.processed_dir).is_relative_to(env_cache_dir())
    # the command line in a subprocess honours the variable too
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / 'cli-cache'))
    out = subprocess.run(
        [sys.executable, '-m', 'mmdiff.cli', 'data', 'info', 'tiktok',
         '--root', str(SHARED_DATA)],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert '9308' in out.stdout.replace(',', '')
    assert list((tmp_path / 'cli-cache').glob('tiktok-*/processed/data.pt'))


INNER_TESTS = '''
import os
from pathlib import Path

import pytest

from mmdiff.data.datasets import TikTok

SHARED = Path(os.environ['MMDIFF_TEST_READONLY_DIR'])


@pytest.fixture(scope='session', autouse=True)
def late_writer():
    yield
    (SHARED / 'late.txt').write_text('written after the last test')


def test_a_reads():
    assert (SHARED / 'tiktok' / 'trnMat.pkl').read_bytes()


def test_b_writes():
    (SHARED / 'tiktok' / 'processed').mkdir()
    (SHARED / 'tiktok' / 'processed' / 'data.pt').write_bytes(b'x')


def test_d_session_cache():
    dataset = TikTok(SHARED / 'tiktok')
    assert Path(dataset.processed_dir).is_relative_to(
        os.environ['MMDIFF_CACHE_DIR'])
'''


def test_guard_fails_a_run_that_writes_into_shared_data(tmp_path):
    shared = tmp_path / 'shared'
    write_diffmm_folder(shared / 'tiktok')
    (tmp_path / 'inner').mkdir()
    (tmp_path / 'inner' / 'pytest.ini').write_text('[pytest]\n')
    (tmp_path / 'inner' / 'test_inner.py').write_text(
        textwrap.dedent(INNER_TESTS))
    env = dict(os.environ, MMDIFF_TEST_READONLY_DIR=str(shared),
               XDG_CACHE_HOME=str(tmp_path / 'xdg'),
               PYTHONDONTWRITEBYTECODE='1')
    env.pop('PYTEST_ADDOPTS', None)
    out = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         '-p', 'tests.conftest', '-c', str(tmp_path / 'inner' / 'pytest.ini'),
         '--rootdir', str(tmp_path / 'inner'),
         str(tmp_path / 'inner' / 'test_inner.py')],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    # only the test that wrote is blamed, at its teardown, naming the paths
    assert re.search(r'\b3 passed\b.*\b1 error\b', text), text
    assert re.search(r'ERROR .*test_inner.py::test_b_writes', text), text
    assert 'test_b_writes wrote into' in text, text
    assert f'created {os.path.join("tiktok", "processed")}' in text, text
    # a write after the last test is caught by the end-of-session check
    end = text.split('read-only data modified', 1)
    assert len(end) == 2 and 'created late.txt' in end[1], text
