"""Running a function on W gloo ranks (CPU) with timeouts: a hung collective fails the test.

``run_ranks(fn, world, *args)`` spawns W processes, each calls ``init(rank, world, port)``
(gloo, 60 s collective timeout) then ``fn(rank, world, *args)``; an exception on any rank fails
the test with that rank's traceback, and a run longer than ``timeout`` kills every rank.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, world: int, port: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    init(rank, world, port)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args, timeout: float = 80.0) -> None:
    """Runs ``fn(rank, world, *args)`` on ``world`` spawned gloo ranks; raises on any failure
    or when the ranks are not done within ``timeout`` seconds."""
    ctx = mp.start_processes(_entry, args=(fn, world, free_port(), args), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{world} ranks still running after {timeout} s (a hang?)")
