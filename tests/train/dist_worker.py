r"""One rank of the distributed tests: trains several models in one
process group (``python -m tests.train.dist_worker OUT MODEL...`` under the
``torchrun`` environment), each into ``OUT/<model>``, with the settings of
:data:`tests.train.test_distributed.SETTINGS`.

``--die-at EPOCH`` makes rank ``--die-rank`` exit abruptly (``os._exit``)
when that epoch starts; ``--hang-at EPOCH`` makes it sleep instead (a hung
rank).  Used by the fault-tolerance tests."""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument('out')
    p.add_argument('models', nargs='+')
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--die-at', type=int, default=None)
    p.add_argument('--hang-at', type=int, default=None)
    p.add_argument('--die-rank', type=int, default=1)
    p.add_argument('--timeout', type=float, default=30.0)
    p.add_argument('--patience', type=int, default=0)
    p.add_argument('--lr', type=float, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter('ignore')
    from mmdiff.errors import MMDiffError
    from mmdiff.train.distributed import init_distributed
    from mmdiff.train.run import train_run
    from tests.train.dist_settings import DATASET, SEED, config_of
    ctx = init_distributed('cpu', timeout=args.timeout)
    if ctx.rank == args.die_rank and (args.die_at is not None or
                                      args.hang_at is not None):
        from mmdiff.nn.models import get_model_class

        def faulty(original):
            def on_epoch_start(self, epoch):
                if epoch == args.die_at:
                    os._exit(17)
                if epoch == args.hang_at:
                    time.sleep(3600)
                return original(self, epoch)
            return on_epoch_start
        for model in args.models:
            cls = get_model_class(model)
            cls.on_epoch_start = faulty(cls.on_epoch_start)
    try:
        for model in args.models:
            train_run(model, DATASET, seed=SEED, device='cpu',
                      cfg=config_of(model, args.epochs,
                                    patience=args.patience,
                                    **({} if args.lr is None
                                       else {'lr': args.lr})),
                      out=os.path.join(args.out, model),
                      resume=args.resume)
    except MMDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
