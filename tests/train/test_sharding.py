r"""The single-process parts of data-parallel training: shard bounds, the
per-row draws of a sharded loss, the sharded samplers, the exact sharded
metric sums, and the errors of a bad distributed setup."""
from __future__ import annotations

import pytest
import torch

from mmdiff.data.samplers import TripletSampler, UserRowSampler
from mmdiff.data.hetero import edges_to_csr
from mmdiff.errors import ConfigError
from mmdiff.metrics import full_ranking_metrics
from mmdiff.nn.models.base import TrainingPhase
from mmdiff.sharding import draw_rows, shard_bounds, shard_of, sharded
from mmdiff.train.distributed import DistributedContext, init_distributed


@pytest.mark.parametrize('n,world', [(50, 2), (50, 3), (7, 4), (3, 4),
                                     (1, 2), (0, 2)])
def test_shards_partition_the_batch(n, world):
    shards = [shard_of(n, r, world) for r in range(world)]
    if n < world:  # replicated: every rank the whole batch, 1/N of it
        assert all(s.replicated and (s.start, s.stop) == (0, n)
                   for s in shards)
        assert sum(s.mean_scale for s in shards) == pytest.approx(1.0)
        assert sum(s.sum_scale for s in shards) == pytest.approx(1.0)
        return
    rows = torch.cat([torch.arange(s.start, s.stop) for s in shards])
    assert torch.equal(rows, torch.arange(n))
    sizes = [s.local_size for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sum(s.mean_scale for s in shards) == pytest.approx(1.0)
    assert all(s.sum_scale == 1.0 for s in shards)
    assert shard_bounds(n, world)[-1] == n


def test_shard_errors():
    with pytest.raises(ValueError, match='rank 2'):
        shard_of(10, 2, 2)
    with pytest.raises(ValueError, match='world_size'):
        shard_bounds(10, 0)
    with pytest.raises(ValueError, match='10 rows'):
        shard_of(10, 0, 2).slice(torch.zeros(4))


def test_draw_rows_gives_each_row_its_single_process_numbers():
    def draw(m):
        return torch.randn(m, 6)
    torch.manual_seed(0)
    full = draw_rows(9, draw)                    # no shard: plain draw
    parts = []
    for r in range(2):
        torch.manual_seed(0)
        s = shard_of(9, r, 2)
        with sharded(s):
            parts.append(draw_rows(s.local_size, draw))
        # the generator advanced exactly as one process's
        assert torch.equal(torch.randn(3), (torch.manual_seed(0),
                                            draw(9), torch.randn(3))[2])
    assert torch.equal(torch.cat(parts), full)


def test_sampler_shards_are_the_single_process_batches():
    g = torch.Generator().manual_seed(1)
    edges = torch.stack([torch.randint(0, 30, (200,)),
                         torch.randint(0, 40, (200,))])
    edges = torch.unique(edges, dim=1)
    for make in (lambda gen: TripletSampler(edges, 40, 32, gen),
                 lambda gen: UserRowSampler(edges_to_csr(edges, 30, 40), 8,
                                            generator=gen)):
        whole = list(make(torch.Generator().manual_seed(5)))
        per_rank = [list(make(torch.Generator().manual_seed(5))
                         .shards(r, 3)) for r in range(3)]
        assert len(per_rank[0]) == len(whole)
        for k, batch in enumerate(whole):
            users = torch.cat([per_rank[r][k][1].users for r in range(3)])
            assert torch.equal(users, batch.users)
            if hasattr(batch, 'rows'):
                rows = torch.cat([per_rank[r][k][1].rows for r in range(3)])
                assert torch.equal(rows, batch.rows)
            else:
                neg = torch.cat([per_rank[r][k][1].neg for r in range(3)])
                assert torch.equal(neg, batch.neg)
    del g


def test_sharded_metrics_equal_single_process_exactly():
    torch.manual_seed(0)
    U, I = 53, 30
    scores = torch.rand(U, I)
    target = torch.stack([torch.arange(U), torch.randint(0, I, (U,))])
    train = torch.stack([torch.arange(U), (target[1] + 1) % I])

    def score(users):
        return scores[users]
    one = full_ranking_metrics(score, target, U, I, train=train,
                               chunk_size=8)
    for world in (2, 3):
        tables = []
        for r in range(world):
            full_ranking_metrics(score, target, U, I, train=train,
                                 chunk_size=8, rank=r, world_size=world,
                                 all_reduce=lambda t: tables.append(
                                     t.clone()) or t)
        total = sum(tables)

        got = full_ranking_metrics(score, target, U, I, train=train,
                                   chunk_size=8, rank=0, world_size=world,
                                   all_reduce=lambda t: total)
        assert got == one                       # bit for bit
    with pytest.raises(ValueError, match='all_reduce'):
        full_ranking_metrics(score, target, U, I, world_size=2)


def test_bad_distributed_setup_errors(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.delenv('MASTER_ADDR', raising=False)
    monkeypatch.delenv('RANK', raising=False)
    with pytest.raises(ConfigError, match='torchrun'):
        init_distributed('cpu')
    monkeypatch.setenv('WORLD_SIZE', 'two')
    with pytest.raises(ConfigError, match='WORLD_SIZE'):
        init_distributed('cpu')
    monkeypatch.setenv('WORLD_SIZE', '1')
    with pytest.raises(ConfigError, match='timeout'):
        init_distributed('cpu', timeout=0)
    ctx = init_distributed('cpu')                # one process: no group
    assert not ctx.enabled and ctx.is_main and ctx.shard(10) is None
    assert DistributedContext.current() == DistributedContext()
    with pytest.raises(ValueError, match='reduction'):
        TrainingPhase('x', 'users', lambda b: {}, [], reduction='sum')
