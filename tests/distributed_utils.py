"""Running a function on W gloo ranks (CPU) with timeouts: a hung collective fails the test.

``run_ranks(fn, world, *args)`` spawns W processes, each calls ``init(rank, world, store)``
(gloo, 60 s collective timeout) then ``fn(rank, world, *args)``; an exception on any rank fails
the test with that rank's traceback, and a run longer than ``timeout`` kills every rank.  The
ranks rendezvous through a file in a fresh temporary folder (``file://``), not a TCP port, so
runs on one machine at the same time cannot collide.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def init(rank: int, world: int, store: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))


def _entry(rank: int, fn, world: int, store: str, args: tuple) -> None:
    init(rank, world, store)
    try:
        fn(rank, world, *args)
    except BaseException:
        dist.destroy_process_group()
        raise
    # Success: leave together, then skip the interpreter's teardown.  A rank that tore down its
    # gloo context while a peer was still tearing down occasionally aborted in a background
    # thread's destructor ("terminate called without an active exception", SIGABRT) after every
    # assertion had passed.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world: int, *args, timeout: float = 80.0) -> None:
    """Runs ``fn(rank, world, *args)`` on ``world`` spawned gloo ranks; raises on any failure
    or when the ranks are not done within ``timeout`` seconds."""
    folder = tempfile.mkdtemp(prefix="dk_ranks_")
    try:
        _run(fn, world, os.path.join(folder, "store"), args, timeout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(fn, world: int, store: str, args: tuple, timeout: float) -> None:
    ctx = mp.start_processes(_entry, args=(fn, world, store, args), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{world} ranks still running after {timeout} s (a hang?)")
