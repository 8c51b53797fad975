import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from mmdiff.data.safe_pickle import safe_load_npy, safe_load_pickle
from mmdiff.errors import DataError, MissingFileError, UnsafeFileError

DATA = Path(__file__).resolve().parents[2].parent / 'shared' / 'data'


class _SystemPayload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f'touch {self.target}',))


class _ExecPayload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


def _write(path, obj, protocol=3):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
@pytest.mark.parametrize('cls', [sp.coo_matrix, sp.csr_matrix, sp.csc_matrix,
                                 sp.coo_array, sp.csr_array, sp.csc_array])
def test_round_trip_sparse(tmp_path, cls, protocol):
    dense = np.array([[0, 1, 0], [2, 0, 3]], dtype=np.float64)
    out = safe_load_pickle(_write(tmp_path / 'm.pkl', cls(dense), protocol))
    assert sp.issparse(out)
    np.testing.assert_array_equal(out.toarray(), dense)


@pytest.mark.skipif(not (DATA / 'tiktok').is_dir(), reason='no real data')
def test_real_file_loads_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        m = safe_load_pickle(DATA / 'tiktok' / 'valMat.pkl')
    assert isinstance(m, sp.coo_matrix)
    assert m.shape == (9308, 6710) and m.nnz == 3051


@pytest.mark.parametrize('payload', [_SystemPayload, _ExecPayload])
def test_payload_is_refused_and_not_executed(tmp_path, payload):
    target = tmp_path / 'pwned'
    file = _write(tmp_path / 'evil.pkl', payload(target))
    with pytest.raises(UnsafeFileError) as info:
        safe_load_pickle(file)
    msg = str(info.value)
    assert 'evil.pkl' in msg
    assert ('system' in msg) if payload is _SystemPayload else (
        'builtins.exec' in msg)
    assert not target.exists()
    if payload is _ExecPayload:  # the payload is live under plain pickle
        pickle.loads(file.read_bytes())
        assert target.exists()


def test_payload_hidden_inside_matrix_is_refused(tmp_path):
    target = tmp_path / 'pwned'
    m = sp.coo_matrix(np.eye(2))
    m.extra = _ExecPayload(target)
    with pytest.raises(UnsafeFileError, match='builtins.exec'):
        safe_load_pickle(_write(tmp_path / 'm.pkl', m))
    assert not target.exists()


def test_other_globals_are_refused(tmp_path):
    file = _write(tmp_path / 'd.pkl', {'a': np.float64}, protocol=4)
    with pytest.raises(UnsafeFileError, match='numpy.float64'):
        safe_load_pickle(file)
    # _codecs.encode is accepted for latin-1 only.
    crafted = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00" \
              b"\x00rot13\x86R."
    (tmp_path / 'c.pkl').write_bytes(crafted)
    with pytest.raises(UnsafeFileError, match='rot13'):
        safe_load_pickle(tmp_path / 'c.pkl')


def test_truncated_and_corrupt_pickles(tmp_path):
    blob = pickle.dumps(sp.coo_matrix(np.eye(50)), protocol=3)
    (tmp_path / 'cut.pkl').write_bytes(blob[:len(blob) // 2])
    with pytest.raises(DataError, match='cut.pkl') as info:
        safe_load_pickle(tmp_path / 'cut.pkl')
    assert not isinstance(info.value, UnsafeFileError)
    (tmp_path / 'empty.pkl').write_bytes(b'')
    with pytest.raises(DataError, match='empty.pkl'):
        safe_load_pickle(tmp_path / 'empty.pkl')
    (tmp_path / 'junk.pkl').write_bytes(b'not a pickle at all')
    with pytest.raises(DataError, match='junk.pkl'):
        safe_load_pickle(tmp_path / 'junk.pkl')


def test_missing_and_directory(tmp_path):
    with pytest.raises(MissingFileError, match='nope.pkl'):
        safe_load_pickle(tmp_path / 'nope.pkl')
    (tmp_path / 'dir.pkl').mkdir()
    with pytest.raises(DataError, match='directory'):
        safe_load_pickle(tmp_path / 'dir.pkl')
    with pytest.raises(MissingFileError, match='nope.npy'):
        safe_load_npy(tmp_path / 'nope.npy')
    (tmp_path / 'dir.npy').mkdir()
    with pytest.raises(DataError, match='directory'):
        safe_load_npy(tmp_path / 'dir.npy')


def test_npy_round_trip_and_errors(tmp_path):
    x = np.arange(12, dtype=np.float16).reshape(4, 3)
    np.save(tmp_path / 'x.npy', x)
    out = safe_load_npy(tmp_path / 'x.npy')
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, x)

    blob = (tmp_path / 'x.npy').read_bytes()
    (tmp_path / 'cut.npy').write_bytes(blob[:-5])
    with pytest.raises(DataError, match='cut.npy'):
        safe_load_npy(tmp_path / 'cut.npy')
    (tmp_path / 'head.npy').write_bytes(blob[:20])
    with pytest.raises(DataError, match='head.npy'):
        safe_load_npy(tmp_path / 'head.npy')
    (tmp_path / 'junk.npy').write_bytes(b'hello world')
    with pytest.raises(DataError, match='junk.npy'):
        safe_load_npy(tmp_path / 'junk.npy')

    np.save(tmp_path / 'obj.npy', np.array([{'a': 1}, None], dtype=object),
            allow_pickle=True)
    with pytest.raises(UnsafeFileError, match='obj.npy'):
        safe_load_npy(tmp_path / 'obj.npy')
