r"""How often bfloat16 autocast changes DiffMM's regenerated top-1 items.

Trains DiffMM (TikTok preset, float32) for ``--epochs`` epochs, then for
every user denoises the training row with each modality's denoiser in
float32, in plain bf16 (``denoise`` + ``argmax``) and with the refined bf16
selection (``denoise_topk``), and reports the agreement with float32 and the
share of users whose bf16 row has a tied maximum.  Writes
``benchmarks/results/bf16_topk.md``.

    python benchmarks/bf16_topk.py --root ../shared/data --epochs 2
"""
import argparse
import datetime as dt
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support.*')
warnings.filterwarnings('ignore', message='.*Sparse invariant checks.*')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('--root', default=None)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--threads', type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mmdiff.train.run import load_data
    from mmdiff.nn.diffusion.interaction import _row_batches
    from mmdiff.nn.models import DiffMM
    from mmdiff.train import Trainer
    from mmdiff.train.config import preset, split_config
    data = load_data('tiktok', args.root)
    tkw, hp = split_config(preset('diffmm', 'tiktok'), DiffMM)
    tkw.update(epochs=args.epochs, patience=0, track_test=False)
    torch.manual_seed(0)
    m = DiffMM.from_data(data, **hp)
    Trainer(m, data, device='cpu', **tkw).fit()
    csr = m.interaction_matrix()
    lines = ['# bf16 autocast and the regenerated top-1 items (TikTok)', '',
             f'Command: `python benchmarks/bf16_topk.py {" ".join(sys.argv[1:])}`'
             f'; {dt.datetime.now().isoformat(timespec="seconds")}; DiffMM '
             f'trained {args.epochs} epochs in float32 (TikTok preset, seed 0).',
             '', '| modality | plain bf16 = float32 | refined bf16 = float32 '
             '| users with a tied bf16 maximum |', '|---|---|---|---|']
    for name, diff in zip(m.modalities, m.denoisers):
        plain = refined = ties = total = 0
        for _, rows in _row_batches(csr, m.num_users, 1024,
                                    torch.device('cpu')):
            diff.autocast_bf16 = False
            diff.clear_cache()
            _, ref = diff.denoise_topk(rows, 1)
            diff.autocast_bf16 = True
            diff.clear_cache()
            b = diff.denoise(rows)
            _, ib = diff.denoise_topk(rows, 1)
            plain += int((b.argmax(1) == ref[:, 0]).sum())
            refined += int((ib == ref).sum())
            ties += int(((b == b.max(1, keepdim=True).values).sum(1) > 1)
                        .sum())
            total += rows.size(0)
        diff.autocast_bf16 = False
        lines.append(f'| {name} | {plain / total:.3f} | {refined / total:.3f}'
                     f' | {ties / total:.3f} |')
        print(lines[-1], flush=True)
    out = Path(__file__).resolve().parent / 'results' / 'bf16_topk.md'
    out.write_text('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
