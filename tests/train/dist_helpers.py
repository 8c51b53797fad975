r"""Launches ``mmdiff train`` as a data-parallel job of ``N`` local
processes with the environment ``torchrun`` gives its workers (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), backend
gloo on CPU, one thread each."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def worker_env(rank: int, world: int, port: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONWARNINGS='ignore', RANK=str(rank),
               LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(port))
    env['PYTHONPATH'] = os.pathsep.join(
        [str(ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    return env


def launch(argv: Sequence[str], world: int,
           module: Sequence[str] = ('-m', 'mmdiff'),
           extra_env: Optional[List[dict]] = None) -> List[subprocess.Popen]:
    r"""Starts the ``world`` ranks of ``python -m mmdiff *argv``."""
    port = free_port()
    procs = []
    for r in range(world):
        env = worker_env(r, world, port)
        if extra_env is not None:
            env.update(extra_env[r])
        procs.append(subprocess.Popen(
            [sys.executable, *module, *map(str, argv)], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def run_job(argv: Sequence[str], world: int, timeout: float = 300.0,
            module: Sequence[str] = ('-m', 'mmdiff')) -> List[str]:
    r"""Runs a job to completion; every rank must exit with 0.  Returns
    the ranks' stderr."""
    procs = launch(argv, world, module)
    errs = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            errs.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, err) in enumerate(zip(procs, errs)):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{err}"
    return errs
