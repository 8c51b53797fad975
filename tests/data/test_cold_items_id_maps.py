r"""from_dataframe keeps cold-start items (features, no interactions) and the
original ids; write_folder / load_folder round-trip both, MMRec id-map
files are read, and multimodal models can score the cold items."""
import numpy as np
import pandas as pd
import pytest
import torch

from mmdiff.data import from_dataframe, load_folder
from mmdiff.data.hetero import edge_index_of, num_items, summary
from mmdiff.data.readers import id_maps, read_id_maps, write_folder
from mmdiff.errors import DataError


def _frames():
    df = pd.DataFrame({'user': ['bob', 'amy', 'amy', 'cat', 'bob', 'amy',
                                'cat', 'bob'],
                       'item': ['x', 'y', 'x', 'z', 'z', 'w', 'y', 'w']})
    rng = np.random.default_rng(0)
    text = pd.DataFrame(rng.normal(size=(6, 3)),
                        index=['z', 'y', 'x', 'w', 'cold1', 'cold0'])
    return df, text


def test_cold_items_are_kept_with_features_and_no_edges():
    df, text = _frames()
    data, users, items = from_dataframe(df, {'text': text},
                                        return_mappings=True)
    assert items.tolist() == ['cold0', 'cold1', 'w', 'x', 'y', 'z']
    assert num_items(data) == 6 == len(text)          # nothing dropped
    s = summary(data)
    assert s['items_without_train'] >= 2
    every = torch.cat([edge_index_of(data, sp) for sp in
                       ('train', 'val', 'test')], dim=1)
    assert not torch.isin(every[1], torch.tensor([0, 1])).any()
    assert torch.allclose(data['item'].text,
                          torch.tensor(text.loc[items].to_numpy(),
                                       dtype=torch.float32))
    # the ids travel with the data
    u, i = id_maps(data)
    assert u.tolist() == users.tolist() and i.tolist() == items.tolist()
    # old behaviour on request
    old = from_dataframe(df, {'text': text}, cold_items=False)
    assert num_items(old) == 4


def test_cold_items_and_arrays_must_agree():
    df, text = _frames()
    with pytest.raises(DataError, match='6 items .*2 cold items'):
        from_dataframe(df, {'text': text,
                            'image': np.ones((4, 2), np.float32)})
    six = np.ones((6, 2), np.float32)
    data = from_dataframe(df, {'text': text, 'image': six})
    assert data['item'].image.shape == (6, 2)
    # a cold item of one table needs a row in every other table
    with pytest.raises(DataError, match="other modality.*'cold0'"):
        from_dataframe(df, {'text': text, 'more': text.drop(index='cold0')})


def test_write_folder_round_trip(tmp_path):
    df, text = _frames()
    data = from_dataframe(df, {'text': text})
    folder = write_folder(data, tmp_path / 'mine')
    assert {p.name for p in folder.iterdir()} == {
        'data.inter', 'text_feat.npy', 'u_id_mapping.csv',
        'i_id_mapping.csv'}
    back = load_folder(folder)
    assert num_items(back) == 6
    for split in ('train', 'val', 'test'):
        assert torch.equal(edge_index_of(back, split),
                           edge_index_of(data, split))
    assert torch.equal(back['item'].text, data['item'].text)
    assert [a.tolist() for a in id_maps(back)] == \
        [a.tolist() for a in id_maps(data)]


def test_mmrec_id_map_files(tmp_path):
    (tmp_path / 'i_id_mapping.csv').write_text(
        'asin\titemID\n097293751X\t1\nB0001\t0\n')
    users, items = read_id_maps(tmp_path, 3, 3)
    assert users is None
    assert items.tolist() == ['B0001', '097293751X', None]  # keeps zeros
    (tmp_path / 'u_id_mapping.csv').write_text('user_id\tuserID\nA\t5\n')
    with pytest.raises(DataError, match='u_id_mapping.csv.*userID'):
        read_id_maps(tmp_path, 3, 3)
    (tmp_path / 'u_id_mapping.csv').write_text('a,b\n1,2\n')
    with pytest.raises(DataError, match='expected two tab-separated'):
        read_id_maps(tmp_path, 3, 3)


def test_multimodal_model_scores_cold_items():
    from mmdiff.nn.models import LD4MRec
    df, text = _frames()
    data = from_dataframe(df, {'text': text})
    model = LD4MRec.from_data(data, hidden_dim=8)
    model.eval()
    with torch.no_grad():
        model.prepare_scoring()
        scores = model.score(torch.arange(3))
    assert scores.shape == (3, 6) and torch.isfinite(scores).all()
