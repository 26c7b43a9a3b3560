"""Multi-process training: set-up from the ``torchrun`` environment, sharded batches, global
losses, gathered metrics.

``dapkernels train METHOD --nproc-per-node W`` re-executes itself through
``python -m torch.distributed.run --standalone --nproc-per-node W -m dapkernels train …``;
plain ``torchrun --nproc-per-node W -m dapkernels train …`` works too.  Each rank then:

* joins the default group from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (gloo on CPU, NCCL
  on CUDA, device ``cuda:LOCAL_RANK``);
* draws its batches from a :class:`ShardedBatchStream`: every rank holds the same seeded
  generator (so the same permutation, and the same resumable state), each step takes
  ``W · batch_size`` consecutive indices of it and rank r keeps slice r — a
  DistributedSampler over the endless stream.  The global batch is ``W · batch_size`` rows
  per domain, the batch a one-process run with ``--batch-size W·B`` would draw;
* trains a ``DistributedDataParallel`` model (the DANN discriminator too) whose adaptation
  losses are the global-batch estimators (``process_group=``: MMD / JMMD / CORAL over every
  rank's rows, the DANN means and domain accuracy over the global batch).  Their gradient
  convention (rows receive ``W · ∂L/∂z_local``) makes DDP's averaging exact.  BatchNorm
  layers become ``SyncBatchNorm`` on CUDA; on CPU (gloo) they normalise with per-rank
  statistics (``SyncBatchNorm`` is CUDA-only), so a CPU run with BN is close to, not equal
  to, the one-process run;
* reports per-step losses and accuracies averaged over ranks (one all-reduce), evaluates on
  its shard of the evaluation sets (accuracies from all-reduced counts, MMD and CORAL with the
  global-batch estimators), and only rank 0 writes logs, checkpoints and plots and shows the
  progress bar.  ``--resume`` loads the latest checkpoint on every rank (a shared
  filesystem: the output directory must be visible to all ranks).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .sampler import BatchStream

__all__ = [
    "DistContext",
    "ShardedBatchStream",
    "setup_from_env",
    "teardown",
    "launch",
    "env_world_size",
    "distribute_adaptation",
    "wrap_ddp",
    "reduce_step",
    "evaluate_distributed",
]

#: seconds a collective may wait before the job fails (a crashed peer ends the run, not hangs)
TIMEOUT_S = 600


@dataclass
class DistContext:
    """Where this process stands in the job."""

    rank: int
    world: int
    local_rank: int
    group: Any
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_from_env(device: str) -> DistContext | None:
    """Joins the default process group from the launcher's environment.

    Returns ``None`` for a single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``), so
    one-process runs stay exactly as before.  ``device`` is the run's ``--device``: a CUDA
    device selects NCCL and ``cuda:LOCAL_RANK``; anything else gloo on the CPU.
    """
    world = env_world_size()
    if world <= 1:
        return None
    _exit_with_launcher()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=TIMEOUT_S),
                                **({"device_id": dev} if cuda else {}))
    return DistContext(rank, world, local_rank, dist.group.WORLD, dev)


def _exit_with_launcher(poll_s: float = 1.0) -> None:
    """A daemon thread that ends this rank when its launcher dies (``kill -9`` of
    ``torchrun`` leaves its workers, which run in their own sessions, orphaned: they would
    go on training and writing checkpoints).  Polls the parent pid; no-op on Windows."""
    import threading
    import time

    if os.name != "posix":
        return
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="dapkernels-launcher-watch", daemon=True).start()


def teardown(ctx: DistContext | None) -> None:
    """Leaves the process group (after a barrier, so rank 0's files are complete)."""
    if ctx is not None and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Re-runs ``dapkernels`` with ``argv`` under ``torch.distributed.run`` on ``nproc``
    local processes; returns the launcher's exit code."""
    import signal

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "dapkernels", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    child = subprocess.Popen(cmd, env=env)

    def forward(signum, frame):  # SIGTERM / SIGINT reach torchrun, which stops the ranks
        child.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc-per-node W`` / ``--nproc-per-node=W``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--nproc-per-node", "--nproc_per_node"):
            skip = True
            continue
        if a.startswith(("--nproc-per-node=", "--nproc_per_node=")):
            continue
        out.append(a)
    return out


class ShardedBatchStream(BatchStream):
    """Rank ``rank``'s share of an endless shuffled stream of ``world · batch_size`` rows.

    Every rank builds it with the same seed, so every rank holds the same generator,
    permutation and offset (``state_dict`` is identical across ranks and a checkpoint of
    rank 0 restores them all); each step rank r returns rows ``[r·B, (r+1)·B)`` of the
    global batch.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, batch_size: int, seed: int,
                 rank: int, world: int) -> None:
        super().__init__(x, y, batch_size * world, seed)
        self.local_batch, self.rank = batch_size, rank

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        xb, yb = super().next()
        part = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        return xb[part], None if yb is None else yb[part]


def distribute_adaptation(adaptation: nn.Module, group) -> None:
    """Switches an adaptation's losses to their global-batch form over ``group``.

    Loss modules with a ``process_group`` attribute (``MMDLoss``, ``JMMDLoss``,
    ``DomainAdversarialLoss``) get the group; Deep CORAL's functional gets it bound.  The naive
    baselines have no global form: they are refused rather than silently run per rank.
    """
    from .. import functional

    if getattr(adaptation, "impl", "fused") == "naive" or (
            getattr(adaptation, "loss", "") is None):
        raise ValueError("--impl naive has no distributed form; use --impl fused")
    fn = getattr(adaptation, "fn", None)
    if fn is not None:
        if fn is not functional.coral:
            raise ValueError("--impl naive has no distributed form; use --impl fused")
        adaptation.fn = partial(functional.coral, process_group=group)
    for module in adaptation.modules():
        if hasattr(module, "process_group"):
            module.process_group = group


def wrap_ddp(module: nn.Module, ctx: DistContext) -> tuple[nn.Module, nn.Module]:
    """``(module, ddp)``: the module to keep (BatchNorm converted to ``SyncBatchNorm`` on
    CUDA) and the ``DistributedDataParallel`` wrapper to train through; a module without
    trainable parameters is returned twice, unwrapped.  Call before building the optimiser
    (the conversion makes new BatchNorm parameters)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not any(p.requires_grad for p in module.parameters()):
        return module, module
    ids = None
    if ctx.device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        ids = [ctx.device]
    return module, DDP(module, device_ids=ids, process_group=ctx.group)


def reduce_step(record: dict[str, float], ctx: DistContext,
                keys: Sequence[str] = ("loss", "cls_loss", "transfer_loss", "batch_acc",
                                       "time_ms")) -> dict[str, float]:
    """The step's metrics averaged over ranks (equal local batches: the global means; the
    time is the slowest rank's)."""
    vals = torch.tensor([float(record[k]) for k in keys[:-1]], dtype=torch.float64)
    slow = torch.tensor([float(record[keys[-1]])], dtype=torch.float64)
    if ctx.device.type == "cuda":
        vals, slow = vals.to(ctx.device), slow.to(ctx.device)
    dist.all_reduce(vals, group=ctx.group)
    dist.all_reduce(slow, op=dist.ReduceOp.MAX, group=ctx.group)
    out = dict(record)
    for k, v in zip(keys[:-1], (vals / ctx.world).tolist()):
        out[k] = v
    out[keys[-1]] = float(slow[0])
    return out


@torch.no_grad()
def evaluate_distributed(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor,
                         xt: torch.Tensor, yt: torch.Tensor | None, ctx: DistContext,
                         dtype: torch.dtype) -> dict[str, float | None]:
    """:func:`dapkernels.train.evaluation.evaluate` with each rank on rows ``rank::W``:
    accuracies from all-reduced counts, MMD and CORAL of the whole sets with the global-batch
    estimators.  The same numbers on every rank."""
    from .. import GaussianKernels, coral, mmd
    from .evaluation import predict

    part = slice(ctx.rank, None, ctx.world)
    logits_s, f_s = predict(model, xs[part], ctx.device, dtype)
    logits_t, f_t = predict(model, xt[part], ctx.device, dtype)
    counts = torch.tensor([
        float((logits_s.argmax(1) == ys[part]).sum()), float(logits_s.shape[0]),
        float((logits_t.argmax(1) == yt[part]).sum()) if yt is not None else 0.0,
        float(logits_t.shape[0]),
    ], dtype=torch.float64)
    dev = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    counts = counts.to(dev)
    dist.all_reduce(counts, group=ctx.group)
    counts = counts.cpu()
    f_s64, f_t64 = f_s.double().to(dev), f_t.double().to(dev)
    return {
        "source_acc": float(counts[0] / counts[1]) * 100.0,
        "target_acc": None if yt is None else float(counts[2] / counts[3]) * 100.0,
        "mmd": float(mmd(f_s64, f_t64, GaussianKernels(), estimator="unbiased",
                         process_group=ctx.group)),
        "coral": float(coral(f_s64, f_t64, process_group=ctx.group)),
    }
