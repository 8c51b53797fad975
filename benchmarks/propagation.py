r"""Sparse propagation backends on the real TikTok graph: what the optional
``torch-scatter`` / ``torch-sparse`` extension buys on this machine.

One propagation :math:`X' = \hat{A} X` with the DiffMM-normalised joint
adjacency (:math:`N = 16{,}018` nodes, 135k entries with self-loops),
:math:`X \in \mathbb{R}^{N \times 64}`, through
:class:`mmdiff.nn.conv.NormalizedPropagation` in every adjacency format it
accepts, for inference (forward) and training (forward + backward w.r.t.
:math:`X`).  Median of ``--reps`` runs after warm-up, 1 thread.  Writes
``benchmarks/results/propagation.md``.

Example::

    python benchmarks/propagation.py --root ../shared/data
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

# torch's one-time notices about its beta sparse-CSR support are noise here
warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')

HERE = Path(__file__).resolve().parent


def timed(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--root', default=None)
    ap.add_argument('--dataset', default='tiktok')
    ap.add_argument('--reps', type=int, default=20)
    ap.add_argument('--dim', type=int, default=64)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import torch_geometric.typing as pyg_typing
    from mmdiff.train.run import load_data
    from mmdiff.data.hetero import edge_index_of, num_items, num_users
    from mmdiff.graph import normalized_edges
    from mmdiff.graph import to_adj
    from mmdiff.nn.conv import NormalizedPropagation
    data = load_data(args.dataset, args.root)
    U, I = num_users(data), num_items(data)
    N = U + I
    ei, w = normalized_edges(edge_index_of(data), U, I, add_self_loops=True)
    conv = NormalizedPropagation()
    x = torch.randn(N, args.dim)
    graphs = {
        'edge_index + weight (gather/scatter)':
            to_adj(ei, w, N, 'edge_index'),
        'torch CSR (fused torch.sparse.mm)': to_adj(ei, w, N, 'csr'),
        'EdgeIndex + weight (fused, cached transpose)':
            to_adj(ei, w, N, 'edge_index_obj'),
    }
    if pyg_typing.WITH_TORCH_SPARSE:
        from torch_sparse import SparseTensor
        # adj_t is G itself: rows = targets (ei[1]), columns = sources
        graphs['torch_sparse SparseTensor (adj_t)'] = SparseTensor(
            row=ei[1], col=ei[0], value=w, sparse_sizes=(N, N))
    rows = []
    ref = None
    for name, g in graphs.items():
        if isinstance(g, tuple):
            def fwd(x_, g=g):
                return conv(x_, g[0], g[1])
        else:
            def fwd(x_, g=g):
                return conv(x_, g)
        out = fwd(x)
        ref = out if ref is None else ref
        err = float((out - ref).abs().max())

        def train(fwd=fwd):
            xx = x.detach().requires_grad_()
            fwd(xx).sum().backward()

        with torch.no_grad():
            t_inf = timed(lambda: fwd(x), args.reps)
        t_train = timed(train, args.reps)
        rows.append((name, t_inf, t_train, err))
        print(f'{name}: {t_inf:.2f} ms / {t_train:.2f} ms', flush=True)

    # the extension's own kernel, outside PyG's dispatch
    if pyg_typing.WITH_TORCH_SPARSE:
        import torch_sparse
        st = torch_sparse.SparseTensor(row=ei[0], col=ei[1], value=w,
                                       sparse_sizes=(N, N))
        with torch.no_grad():
            t_inf = timed(lambda: torch_sparse.matmul(st, x), args.reps)

        def train_ts():
            xx = x.detach().requires_grad_()
            torch_sparse.matmul(st, xx).sum().backward()
        t_train = timed(train_ts, args.reps)
        err = float((torch_sparse.matmul(st, x) - ref).abs().max())
        rows.append(('torch_sparse.matmul (direct)', t_inf, t_train, err))
    if pyg_typing.WITH_TORCH_SCATTER:
        import torch_scatter
        src, dst = ei[1], ei[0]

        def scat(x_):
            return torch_scatter.scatter(x_[src] * w.view(-1, 1), dst, dim=0,
                                         dim_size=N, reduce='sum')
        with torch.no_grad():
            t_inf = timed(lambda: scat(x), args.reps)

        def train_sc():
            xx = x.detach().requires_grad_()
            scat(xx).sum().backward()
        t_train = timed(train_sc, args.reps)
        rows.append(('torch_scatter gather + scatter (direct)', t_inf,
                     t_train, float((scat(x) - ref).abs().max())))

    lines = [
        '# Sparse propagation backends', '',
        f'One hop X\' = Â X on the {args.dataset} joint graph (N = {N:,}, '
        f'{ei.size(1):,} entries incl. self-loops), d = {args.dim}, 1 thread, '
        f'median of {args.reps}. torch {torch.__version__}; extensions '
        f'installed: torch-scatter {pyg_typing.WITH_TORCH_SCATTER}, '
        f'torch-sparse {pyg_typing.WITH_TORCH_SPARSE}. Machine: '
        f'{platform.machine()}; '
        f'{dt.datetime.now().isoformat(timespec="seconds")}.', '',
        f'Command: `python benchmarks/propagation.py {" ".join(sys.argv[1:])}`',
        '', '| backend | inference ms | training (fwd+bwd) ms | max abs '
        'diff vs first |', '|---|---|---|---|']
    for name, a, b, e in rows:
        lines.append(f'| {name} | {a:.2f} | {b:.2f} | {e:.1e} |')
    lines += ['', 'The models use the `EdgeIndex` layout (fastest training '
              'path here); every layout gives the same result.']
    (HERE / 'results' / 'propagation.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
