import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from mmdiff.data.hetero import edge_index_of, modality_names, summary
from mmdiff.data.readers import (
    detect_layout,
    from_dataframe,
    load_folder,
    read_diffmm_folder,
    read_mmrec_folder,
    split_per_user,
)
from mmdiff.errors import (
    ConfigError,
    DataError,
    MissingFileError,
    UnsafeFileError,
)

DATA = Path(__file__).resolve().parents[2].parent / 'shared' / 'data'

TRAIN = [(0, 0), (0, 1), (1, 2), (2, 3)]
VAL = [(0, 2)]
TEST = [(1, 0), (2, 1)]


def _coo(pairs, shape, values=None):
    pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    values = np.ones(len(pairs)) if values is None else np.asarray(values)
    return sp.coo_matrix((values, (pairs[:, 0], pairs[:, 1])), shape=shape)


def _dump(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=3))


def _diffmm(folder, shape=(3, 4), val=True, feats=None):
    folder.mkdir(parents=True, exist_ok=True)
    _dump(folder / 'trnMat.pkl', _coo(TRAIN, shape))
    _dump(folder / 'tstMat.pkl', _coo(TEST, shape))
    if val:
        _dump(folder / 'valMat.pkl', _coo(VAL, shape))
    for name, x in (feats or {}).items():
        np.save(folder / f'{name}_feat.npy', x, allow_pickle=True)
    return folder


def _pairs(data, split):
    return sorted(map(tuple, edge_index_of(data, split).t().tolist()))


# DiffMM layout ###############################################################

def test_read_diffmm_folder(tmp_path):
    image = np.random.default_rng(0).random((4, 5)).astype(np.float16)
    folder = _diffmm(tmp_path / 'd', feats={'image': image,
                                            'audio': np.ones((4, 2))})
    data = read_diffmm_folder(folder)
    assert data['user'].num_nodes == 3 and data['item'].num_nodes == 4
    assert _pairs(data, 'train') == sorted(TRAIN)
    assert _pairs(data, 'val') == VAL
    assert _pairs(data, 'test') == sorted(TEST)
    assert modality_names(data) == ['audio', 'image']
    assert data['item'].image.dtype == torch.float32
    assert torch.equal(data['item'].image, torch.from_numpy(image).float())

    sub = read_diffmm_folder(folder, modalities=['image'])
    assert modality_names(sub) == ['image']
    with pytest.raises(DataError, match=r"'text'.*\['audio', 'image'\]"):
        read_diffmm_folder(folder, modalities=['text'])


def test_diffmm_binarises_and_dedups(tmp_path):
    folder = _diffmm(tmp_path / 'd')
    _dump(folder / 'trnMat.pkl',
          _coo(TRAIN + [(1, 3), (0, 0)], (3, 4), [2, 1, 1, 5, 0.0, 1]))
    with pytest.warns(UserWarning, match='1 duplicate'):
        data = read_diffmm_folder(folder)
    assert _pairs(data, 'train') == sorted(TRAIN)  # 0.0 dropped, dup merged


def test_diffmm_val_optional(tmp_path):
    data = read_diffmm_folder(_diffmm(tmp_path / 'd', val=False))
    assert edge_index_of(data, 'val').shape == (2, 0)


@pytest.mark.parametrize('missing', ['trnMat.pkl', 'tstMat.pkl'])
def test_diffmm_missing_files(tmp_path, missing):
    folder = _diffmm(tmp_path / 'd')
    (folder / missing).unlink()
    with pytest.raises(MissingFileError, match=missing):
        read_diffmm_folder(folder)


def test_diffmm_shape_mismatch(tmp_path):
    folder = _diffmm(tmp_path / 'd')
    _dump(folder / 'tstMat.pkl', _coo(TEST, (3, 5)))
    with pytest.raises(DataError, match=r'trnMat.pkl.*3x4.*tstMat.pkl.*3x5'):
        read_diffmm_folder(folder)


def test_diffmm_corrupt_inputs(tmp_path):
    folder = _diffmm(tmp_path / 'd')
    blob = (folder / 'trnMat.pkl').read_bytes()
    (folder / 'trnMat.pkl').write_bytes(blob[:len(blob) // 2])
    with pytest.raises(DataError, match='trnMat.pkl'):
        read_diffmm_folder(folder)

    folder = _diffmm(tmp_path / 'e')
    _dump(folder / 'valMat.pkl', np.zeros((3, 4)))
    with pytest.raises(DataError, match='scipy sparse'):
        read_diffmm_folder(folder)

    folder = _diffmm(tmp_path / 'f')
    (folder / 'tstMat.pkl').unlink()
    (folder / 'tstMat.pkl').mkdir()
    with pytest.raises(DataError, match='directory'):
        read_diffmm_folder(folder)


@pytest.mark.parametrize('feats, match', [
    (np.ones((3, 2), np.float32), '3 feature rows but 4 items'),
    (np.array([[np.nan, 1.0]] * 4), 'NaN'),
    (np.ones(4, np.float32), '2-D'),
    (np.ones((4, 2, 2), np.float32), '2-D'),
    (np.ones((4, 2), np.int64), 'floating point'),
    (np.array([[1.0, 2.0]] * 4, dtype=object), 'object'),
])
def test_diffmm_bad_features(tmp_path, feats, match):
    folder = _diffmm(tmp_path / 'd', feats={'image': feats})
    with pytest.raises(DataError, match=match) as info:
        read_diffmm_folder(folder)
    assert 'image_feat.npy' in str(info.value)


def test_diffmm_truncated_features(tmp_path):
    folder = _diffmm(tmp_path / 'd', feats={'image': np.ones((4, 8))})
    blob = (folder / 'image_feat.npy').read_bytes()
    (folder / 'image_feat.npy').write_bytes(blob[:-10])
    with pytest.raises(DataError, match='image_feat.npy'):
        read_diffmm_folder(folder)


def test_malicious_pickle_in_folder(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f'touch {tmp_path / "pwned"}',))

    folder = _diffmm(tmp_path / 'd')
    _dump(folder / 'valMat.pkl', Evil())
    with pytest.raises(UnsafeFileError, match='valMat.pkl'):
        read_diffmm_folder(folder)
    assert not (tmp_path / 'pwned').exists()


# MMRec layout ################################################################

def _inter(folder, rows, name='toy', header='userID\titemID\trating\tx_label'):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [header] + ['\t'.join(map(str, r)) for r in rows]
    (folder / f'{name}.inter').write_text('\n'.join(lines) + '\n')
    return folder


ROWS = [(0, 0, 5, 0), (0, 1, 4, 0), (1, 2, 5, 0), (2, 3, 3, 0), (0, 2, 5, 1),
        (1, 0, 4, 2), (2, 1, 5, 2)]


def test_read_mmrec_folder(tmp_path):
    folder = _inter(tmp_path / 'm', ROWS)
    np.save(folder / 'text_feat.npy', np.ones((6, 3), np.float32))
    data = read_mmrec_folder(folder)
    assert data['user'].num_nodes == 3
    assert data['item'].num_nodes == 6  # feature rows > max item id + 1
    assert _pairs(data, 'train') == sorted(TRAIN)
    assert _pairs(data, 'val') == VAL
    assert _pairs(data, 'test') == sorted(TEST)
    assert modality_names(data) == ['text']
    assert detect_layout(folder) == 'mmrec'
    assert _pairs(load_folder(folder), 'test') == sorted(TEST)

    np.save(folder / 'text_feat.npy', np.ones((3, 3), np.float32))
    with pytest.raises(DataError, match=r'text_feat.npy.*3 feature rows'):
        read_mmrec_folder(folder)


def test_mmrec_errors(tmp_path):
    with pytest.raises(DataError, match='x_label'):
        read_mmrec_folder(_inter(tmp_path / 'a', ROWS + [(0, 3, 1, 7)]))
    with pytest.raises(DataError, match=r"missing column.*x_label"):
        read_mmrec_folder(_inter(tmp_path / 'b', [(0, 0, 1)],
                                 header='userID\titemID\trating'))
    with pytest.raises(DataError, match='negative'):
        read_mmrec_folder(_inter(tmp_path / 'c', ROWS + [(-1, 0, 1, 0)]))
    with pytest.raises(DataError, match='both the train and the test'):
        read_mmrec_folder(_inter(tmp_path / 'd', ROWS + [(1, 0, 1, 0)]))
    with pytest.warns(UserWarning, match='duplicate'):
        data = read_mmrec_folder(_inter(tmp_path / 'e', ROWS + [ROWS[0]]))
    assert edge_index_of(data).size(1) == 4

    folder = _inter(_inter(tmp_path / 'f', ROWS, name='a'), ROWS, name='b')
    with pytest.raises(DataError, match='name='):
        read_mmrec_folder(folder)
    assert read_mmrec_folder(folder, name='b')['user'].num_nodes == 3
    with pytest.raises(MissingFileError, match='c.inter'):
        read_mmrec_folder(folder, name='c')


# Layout detection ############################################################

def test_detect_layout_and_load_folder(tmp_path):
    folder = _diffmm(tmp_path / 'd')
    assert detect_layout(folder) == 'diffmm'
    assert _pairs(load_folder(folder), 'train') == sorted(TRAIN)

    (tmp_path / 'empty').mkdir()
    with pytest.raises(MissingFileError) as info:
        load_folder(tmp_path / 'empty')
    assert 'trnMat.pkl' in str(info.value) and '.inter' in str(info.value)
    with pytest.raises(DataError, match='got a file'):
        load_folder(folder / 'trnMat.pkl')
    with pytest.raises(MissingFileError):
        load_folder(tmp_path / 'nowhere')


# Splitting and DataFrames ####################################################

def _interactions(sizes):
    users = np.repeat(np.arange(len(sizes)), sizes)
    items = np.concatenate([np.arange(n) for n in sizes])
    return users, items


def test_split_per_user_mmrec_rule():
    sizes = [1, 2, 3, 5, 9, 10, 11, 15, 19, 20, 23, 50, 101]
    users, _ = _interactions(sizes)
    labels = split_per_user(users, seed=3)
    for u, n in enumerate(sizes):
        got = np.bincount(labels[users == u], minlength=3).tolist()
        if n == 1:
            want = [1, 0, 0]
        elif n == 2:
            want = [1, 0, 1]
        elif n < 10:
            want = [n - 2, 1, 1]
        else:
            held = int(np.floor(0.2 * n))
            want = [n - held, held // 2, held - held // 2]
        assert got == want, (n, got, want)

    # Generalised ratios: held = floor(0.3 n), val = floor(held * 2 / 3).
    labels = split_per_user(np.zeros(30, np.int64), 0.2, 0.1)
    assert np.bincount(labels, minlength=3).tolist() == [21, 6, 3]
    labels = split_per_user(np.zeros(4, np.int64), 0.0, 0.1)
    assert np.bincount(labels, minlength=3).tolist() == [3, 0, 1]
    with pytest.raises(ConfigError):
        split_per_user(users, 0.6, 0.5)


def test_split_per_user_random_and_seeded():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 300, 6000)
    a = split_per_user(users, seed=1)
    assert np.array_equal(a, split_per_user(users, seed=1))
    assert not np.array_equal(a, split_per_user(users, seed=2))
    train_users = np.unique(users[a == 0])
    assert np.array_equal(train_users, np.unique(users))  # >= 1 train each


def test_split_per_user_time_latest_in_test():
    users = np.array([0] * 12 + [1] * 3)
    times = np.concatenate([np.arange(12)[::-1], [5, 7, 6]])
    labels = split_per_user(users, times=times)
    # user 0: times 11..0 in rows 0..11; 2 held out: latest (row 0) test,
    # next latest (row 1) val.
    assert labels[0] == 2 and labels[1] == 1 and (labels[2:12] == 0).all()
    # user 1 (n = 3): time 7 -> test, time 6 -> val, time 5 -> train.
    assert labels[12:].tolist() == [0, 2, 1]


def test_from_dataframe_string_ids():
    df = pd.DataFrame({'user': ['bob', 'amy', 'amy', 'cat', 'bob', 'amy'],
                       'item': ['x', 'y', 'x', 'z', 'z', 'w']})
    feats = pd.DataFrame(np.arange(10.0).reshape(5, 2),
                         index=['z', 'y', 'x', 'w', 'unused'])
    data, users, items = from_dataframe(df, {'text': feats},
                                        return_mappings=True,
                                        cold_items=False)
    assert users.tolist() == ['amy', 'bob', 'cat']
    assert items.tolist() == ['w', 'x', 'y', 'z']
    assert data['user'].num_nodes == 3 and data['item'].num_nodes == 4
    expected = np.array(feats.loc[items].to_numpy(np.float32))
    assert torch.equal(data['item'].text, torch.from_numpy(expected))
    pairs = set()
    for split in ('train', 'val', 'test'):
        pairs |= {(users[u], items[i]) for u, i in _pairs(data, split)}
    assert pairs == set(zip(df.user, df.item))

    as_dict = {k: v for k, v in zip(feats.index, feats.to_numpy())}
    data2 = from_dataframe(df, {'text': as_dict}, cold_items=False)
    assert torch.equal(data2['item'].text, data['item'].text)
    data3 = from_dataframe(df, {'text': expected})
    assert torch.equal(data3['item'].text, data['item'].text)

    with pytest.raises(DataError, match=r"1 item.*'w'"):
        from_dataframe(df, {'text': feats.drop(index='w')})
    with pytest.raises(DataError, match='5 feature rows'):
        from_dataframe(df, {'text': np.ones((5, 2), np.float32)})


def test_from_dataframe_split_and_checks():
    users, items = _interactions([1, 2, 3, 12, 40])
    df = pd.DataFrame({'u': users, 'i': items, 't': np.arange(users.size)})
    data = from_dataframe(df, user_col='u', item_col='i', seed=5)
    s = summary(data)
    assert (s['train_interactions'], s['val_interactions'],
            s['test_interactions']) == (1 + 1 + 1 + 10 + 32, 0 + 0 + 1 + 1 + 4,
                                        0 + 1 + 1 + 1 + 4)
    assert s['users_without_train'] == 0
    assert torch.equal(from_dataframe(df, user_col='u', item_col='i',
                                      seed=5)[('user', 'interacts',
                                               'item')].test_edge_index,
                       edge_index_of(data, 'test'))

    timed = from_dataframe(df, user_col='u', item_col='i', time_col='t',
                           split='time')
    # Times increase with the item id inside each user, so the latest
    # interactions are the largest item ids: test > val > train per user.
    per = {s: edge_index_of(timed, s) for s in ('train', 'val', 'test')}
    for u in range(5):
        t, v, r = (per[s][1][per[s][0] == u] for s in ('test', 'val',
                                                       'train'))
        assert t.numel() >= (u > 0)
        if v.numel():
            assert t.min() > v.max() and v.min() > r.max()
        elif t.numel():
            assert t.min() > r.max()

    with pytest.raises(ConfigError, match='time_col'):
        from_dataframe(df, user_col='u', item_col='i', split='time')
    with pytest.raises(DataError, match="column"):
        from_dataframe(df)
    dup = pd.concat([df, df.iloc[:3]])
    with pytest.warns(UserWarning, match='3 duplicate'):
        from_dataframe(dup, user_col='u', item_col='i')
    bad = df.astype({'u': object})
    bad.loc[0, 'u'] = None
    with pytest.raises(DataError, match='missing'):
        from_dataframe(bad, user_col='u', item_col='i')


# Real data ###################################################################

REAL = {
    'tiktok': ((9308, 6710), (59541, 3051, 6130), {'audio': 128,
                                                    'image': 128}),
    'baby': ((19445, 7050), (118551, 21682, 20559), {}),
    'sports': ((35598, 18357), (218409, 40029, 37899), {}),
}


@pytest.mark.parametrize('name', sorted(REAL))
def test_real_datasets(name):
    if not (DATA / name).is_dir():
        pytest.skip(f'{DATA / name} is absent')
    (users, items), counts, mods = REAL[name]
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        data = load_folder(DATA / name)
    s = summary(data)
    assert (s['users'], s['items']) == (users, items)
    assert (s['train_interactions'], s['val_interactions'],
            s['test_interactions']) == counts
    assert s['modalities'] == mods
    for m in mods:
        assert data['item'][m].dtype == torch.float32
    if name == 'tiktok':
        assert s['users_without_train'] == 10
        assert s['items_without_train'] == 465
