r"""How much bfloat16 changes DiffMM's gradients, against the mini-batch
noise they already carry.

Trains DiffMM (TikTok preset, float32, seed 0) for ``--epochs`` epochs, then
for ``--batches`` training batches of each phase computes the gradient of
the phase's loss twice with the same random draws: in float32 and with the
bf16 setting of that phase (``precision='bf16'`` for BPR + contrastive,
bf16 autocast for the denoisers' diffusion loss).  It reports the
relative error :math:`\lVert g_{bf16} - g_{32}\rVert / \lVert g_{32}
\rVert` and, for scale, the same distance between the float32 gradients of
two different batches.  Writes ``benchmarks/results/bf16_grad.md``.

    python benchmarks/bf16_grad.py --root ../shared/data --epochs 2
"""
import argparse
import datetime as dt
import platform
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')

OUT = Path(__file__).resolve().parent / 'results' / 'bf16_grad.md'


def _grads(model, fn, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    fn()['loss'].backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()
                      if p.grad is not None])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('--root', default=None)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--batches', type=int, default=8)
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mmdiff.train.run import load_data
    from mmdiff.data.hetero import edge_index_of, interaction_csr
    from mmdiff.data.samplers import TripletSampler, UserRowSampler
    from mmdiff.nn.models import DiffMM
    from mmdiff.train import Trainer
    from mmdiff.train.config import preset, split_config
    data = load_data('tiktok', args.root)
    tkw, hp = split_config(preset('diffmm', 'tiktok'), DiffMM)
    tkw.update(epochs=args.epochs, patience=0, track_test=False)
    torch.manual_seed(0)
    m = DiffMM.from_data(data, **hp)
    Trainer(m, data, device='cpu', **tkw).fit()
    m.train()
    rows = {}

    def measure(name, loss, batches, switch):
        errs, noise, prev = [], [], None
        for k, batch in enumerate(batches):
            if k == args.batches:
                break
            switch(False)
            g32 = _grads(m, lambda: loss(batch), 100 + k)
            switch(True)
            g16 = _grads(m, lambda: loss(batch), 100 + k)
            switch(False)
            errs.append(_rel(g16, g32))
            if prev is not None:
                noise.append(_rel(prev, g32))
            prev = g32
        rows[name] = (errs, noise)

    def set_cl(flag):
        m.precision = 'bf16' if flag else 'float32'

    def set_dn(flag):
        for d in m.denoisers:
            d.autocast_bf16 = flag

    gen = torch.Generator().manual_seed(1)
    bs = int(hp.get('batch_size', 1024))
    triplets = TripletSampler(edge_index_of(data, 'train'), m.num_items, bs,
                              gen)
    measure('BPR + contrastive (`precision=bf16`)', m.bpr_loss,
            iter(triplets),
            set_cl)
    users = UserRowSampler(interaction_csr(data, 'train'), bs, generator=gen)
    measure('diffusion loss (bf16 denoisers)', m.diffusion_loss,
            iter(users), set_dn)

    def stats(v):
        t = torch.tensor(v)
        return f'{float(t.median()):.2e} (max {float(t.max()):.2e})'

    lines = [
        '# bf16 and the gradients of DiffMM (TikTok)', '',
        f'Command: `python benchmarks/bf16_grad.py {" ".join(sys.argv[1:])}`'
        f'; {dt.datetime.now().isoformat(timespec="seconds")}; '
        f'{platform.machine()}, torch {torch.__version__}, '
        f'{args.threads} thread(s).  DiffMM trained {args.epochs} epochs in '
        f'float32 (TikTok preset, seed 0), then {args.batches} training '
        f'batches per phase, each differentiated in float32 and in bf16 with '
        f'the same random draws (all parameters of the model concatenated).',
        '', '| phase | bf16 vs float32: relative error, median (max) | '
        'float32, batch k vs batch k+1: relative distance, median (max) |',
        '|---|---|---|']
    for name, (errs, noise) in rows.items():
        lines.append(f'| {name} | {stats(errs)} | {stats(noise)} |')
    lines += ['', 'The second column is the mini-batch noise every SGD step '
              'already carries; bf16 matters only where the first column '
              'comes close to it.']
    OUT.write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
