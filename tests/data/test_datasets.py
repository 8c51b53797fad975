import os
import stat
from pathlib import Path

import pytest
import torch

from conftest import write_diffmm_folder
from mmdiff.data import datasets as ds
from mmdiff.data.datasets import (
    AmazonBaby,
    AmazonSports,
    TikTok,
    get_dataset,
)
from mmdiff.data.hetero import edge_index_of, modality_names, summary
from mmdiff.errors import ConfigError, DataError, MissingFileError

DATA = Path(__file__).resolve().parents[2].parent / 'shared' / 'data'


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    r"""The default cache placement: no MMDIFF_CACHE_DIR (the session sets
    one, see conftest), the user cache under a temporary XDG_CACHE_HOME."""
    monkeypatch.delenv('MMDIFF_CACHE_DIR', raising=False)
    home = tmp_path / 'xdg'
    monkeypatch.setenv('XDG_CACHE_HOME', str(home))
    return home


def test_dataset_protocol_and_cache(tmp_path, cache_home, monkeypatch):
    root = write_diffmm_folder(tmp_path / 'tiktok')
    dataset = TikTok(root)
    assert len(dataset) == 1 and dataset[0] is dataset.data
    with pytest.raises(IndexError):
        dataset[1]
    assert modality_names(dataset.data) == ['image', 'text']
    assert 'TikTok(users=20, items=15' in repr(dataset)
    assert [Path(p).name for p in dataset.raw_paths] == [
        'trnMat.pkl', 'valMat.pkl', 'tstMat.pkl', 'image_feat.npy',
        'text_feat.npy']
    cache = root / 'processed' / 'data.pt'
    assert dataset.processed_paths == [str(cache)] and cache.exists()
    assert not cache_home.exists()
    blob = torch.load(cache, weights_only=True)
    assert blob['num_users'] == 20

    # The second load comes from the cache (the raw reader is not called).
    def fail(*args, **kwargs):
        raise AssertionError('raw files were re-read')
    monkeypatch.setattr(ds, 'load_folder', fail)
    again = TikTok(root)
    for split in ('train', 'val', 'test'):
        assert torch.equal(edge_index_of(again.data, split),
                           edge_index_of(dataset.data, split))
    assert torch.equal(again.data['item'].image, dataset.data['item'].image)
    assert modality_names(TikTok(root, modalities='text').data) == ['text']
    with pytest.raises(DataError, match='unknown modality'):
        TikTok(root, modalities=['audio'])
    monkeypatch.undo()

    # Changing a raw file invalidates the cache.
    write_diffmm_folder(root, seed=1)
    st = (root / 'trnMat.pkl').stat()
    os.utime(root / 'trnMat.pkl', ns=(st.st_atime_ns,
                                      st.st_mtime_ns + 10**9))
    changed = TikTok(root)
    assert not torch.equal(changed.data['item'].image,
                           dataset.data['item'].image)

    # A corrupt cache is rebuilt.
    cache.write_bytes(b'garbage')
    assert summary(TikTok(root).data)['users'] == 20


def test_raw_subfolder_and_read_only_root(tmp_path, cache_home):
    root = tmp_path / 'baby'
    write_diffmm_folder(root / 'raw', feats=False)
    os.chmod(root, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP |
             stat.S_IXGRP)
    try:
        dataset = AmazonBaby(root)
        assert dataset.raw_dir == root / 'raw'
        assert not (root / 'processed').exists()
        assert Path(dataset.processed_dir).is_relative_to(cache_home)
        assert Path(dataset.processed_paths[0]).exists()
        assert modality_names(dataset.data) == []
    finally:
        os.chmod(root, stat.S_IRWXU)

    other = AmazonBaby(root, cache_dir=tmp_path / 'elsewhere')
    assert Path(other.processed_dir).is_relative_to(tmp_path / 'elsewhere')


def test_missing_raw_files(tmp_path, cache_home):
    (tmp_path / 'sports').mkdir()
    with pytest.raises(MissingFileError) as info:
        AmazonSports(tmp_path / 'sports')
    msg = str(info.value)
    assert 'trnMat.pkl' in msg and 'tstMat.pkl' in msg and 'DiffMM' in msg
    with pytest.raises(MissingFileError):
        TikTok(tmp_path / 'nowhere')
    (tmp_path / 'file').write_text('x')
    with pytest.raises(DataError, match='file'):
        TikTok(tmp_path / 'file')


def test_get_dataset(tmp_path, cache_home):
    synthetic = get_dataset('synthetic')
    assert summary(synthetic)['users'] == 1000
    assert modality_names(get_dataset('synthetic',
                                      modalities=['text'])) == ['text']
    write_diffmm_folder(tmp_path / 'tiktok')
    data = get_dataset('tiktok', root=tmp_path, modalities='image')
    assert modality_names(data) == ['image']
    by_path = get_dataset(str(tmp_path / 'tiktok'))
    assert torch.equal(edge_index_of(by_path), edge_index_of(data))
    with pytest.raises(ConfigError, match=r"'movielens'.*'tiktok'"):
        get_dataset('movielens')
    with pytest.raises(ConfigError, match='root='):
        get_dataset('baby')


@pytest.mark.skipif(not (DATA / 'tiktok').is_dir(), reason='no real data')
def test_real_tiktok_read_only():
    # MMDIFF_CACHE_DIR (set for the session) takes the cache, whether or not
    # the data folder is writable
    before = sorted(os.listdir(DATA / 'tiktok'))
    dataset = TikTok(DATA / 'tiktok')
    assert sorted(os.listdir(DATA / 'tiktok')) == before  # wrote nothing
    assert Path(dataset.processed_dir).is_relative_to(
        os.environ['MMDIFF_CACHE_DIR'])
    s = summary(dataset.data)
    assert (s['users'], s['items']) == (9308, 6710)
    assert (s['train_interactions'], s['val_interactions'],
            s['test_interactions']) == (59541, 3051, 6130)
    assert s['modalities'] == {'audio': 128, 'image': 128}
    cached = TikTok(DATA / 'tiktok')
    assert torch.equal(cached.data['item'].audio, dataset.data['item'].audio)
