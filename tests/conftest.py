import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdiff.data.hetero import make_interaction_data

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')

#: the shared real datasets live beside the repository (../shared/data)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


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
