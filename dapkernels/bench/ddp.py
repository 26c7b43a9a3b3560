"""``dapkernels bench ddp``: the global-batch MMD over W gloo ranks vs one process.

One call = forward + backward of the unbiased MK-MMD (default bank) of a global batch of N rows
(N/2 source, N/2 target, d features, float32), split evenly over W ranks (one thread each):

* ``one-process``: :func:`dapkernels.mmd` on the whole batch in one process with one thread
  (the C++ core's symmetric sweep);
* ``global``: ``dapkernels.mmd(..., process_group=WORLD)`` on W ranks: one all_gather of the
  rows without autograd, each rank sweeps its own rows against all rows (own block in the C++
  core, own-vs-other rows in torch), one all-reduce of 3 sums;
* ``gather-autograd``: the usual workaround, ``torch.distributed.nn.functional.all_gather``
  (sum-reduced backward) then the full one-process MMD on every rank: every rank repeats the
  whole N² sweep.

Per case: wall time per call (the slowest rank, median over repeats, each repeat after a
barrier) and CPU time per rank (``time.process_time``: robust when other jobs share the
machine), the value's relative difference to the one-process value, and the bytes each rank
moves per call (analytic: the padded all_gather contribution ``max_r n_r · d · 4`` plus a 32-byte
status vector and a 24-byte all-reduce; ring collectives send ``(W − 1)×`` the contribution).

Bar (issue 12): N = 16384, d = 256, W = 2: global wall ≤ 0.75 × one-process wall.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from .._machine import core_info, cpu_model

__all__ = ["add_arguments", "run", "BAR_RATIO"]

BAR_RATIO = 0.75


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=16384, help="global batch rows (default 16384)")
    parser.add_argument("--d", type=int, default=256, help="features (default 256)")
    parser.add_argument("--world", type=int, default=2, help="ranks (default 2)")
    parser.add_argument("--reps", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the gather-with-autograd baseline")


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _data(n: int, d: int):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(n // 2, d, generator=g)
    t = torch.randn(n - n // 2, d, generator=g) + 0.25
    return s, t


def _worker(rank: int, world: int, port: int, mode: str, n: int, d: int, reps: int,
            out: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    import dapkernels as dk

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=900))
    group = dist.group.WORLD
    s_all, t_all = _data(n, d)
    ks, kt = s_all.shape[0] // world, t_all.shape[0] // world
    s = s_all[rank * ks:(rank + 1) * ks if rank < world - 1 else None].clone()
    t = t_all[rank * kt:(rank + 1) * kt if rank < world - 1 else None].clone()
    if mode == "one-process":
        s, t = s_all.clone(), t_all.clone()
    s.requires_grad_()
    t.requires_grad_()

    def call() -> float:
        s.grad = t.grad = None
        if mode == "one-process":
            loss = dk.mmd(s, t)
        elif mode == "global":
            loss = dk.mmd(s, t, process_group=group)
        else:
            from torch.distributed.nn.functional import all_gather

            loss = dk.mmd(torch.cat(all_gather(s, group=group)),
                          torch.cat(all_gather(t, group=group)))
        loss.backward()
        return float(loss.detach())

    value = call()  # warm-up
    walls, cpus = [], []
    for _ in range(reps):
        dist.barrier()
        w0, c0 = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    stats = torch.tensor([[w, c] for w, c in zip(walls, cpus)], dtype=torch.float64)
    rows = [torch.zeros_like(stats) for _ in range(world)]
    dist.all_gather(rows, stats)
    if rank == 0:
        table = torch.stack(rows)  # (world, reps, 2)
        result = {
            "mode": mode, "world": world, "value": value,
            "wall_s": statistics.median(table[:, :, 0].max(dim=0).values.tolist()),
            "wall_min_s": float(table[:, :, 0].max(dim=0).values.min()),
            "cpu_per_rank_s": statistics.median(table[:, :, 1].mean(dim=0).tolist()),
            "walls_s": table[:, :, 0].tolist(), "cpus_s": table[:, :, 1].tolist(),
        }
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def _launch(mode: str, world: int, n: int, d: int, reps: int) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        os.environ["OMP_NUM_THREADS"] = "1"
        mp.start_processes(_worker, args=(world, port, mode, n, d, reps, out), nprocs=world,
                           join=True, start_method="spawn")
        return json.loads(Path(out).read_text())


def _bytes(n: int, d: int, world: int) -> dict:
    top = -(-(n // 2) // world) + -(-(n - n // 2) // world)
    contrib = top * d * 4
    return {"gather_contribution": contrib, "gather_sent_ring": (world - 1) * contrib,
            "gathered_matrix": world * contrib, "status_vector": 32, "all_reduce": 24}


def _plot(path: Path, results: list, n: int, d: int, world: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = [f"{r['mode']}\n({r['world']} rank{'s' if r['world'] > 1 else ''})" for r in results]
    x = range(len(results))
    ax.bar([i - 0.2 for i in x], [r["wall_s"] for r in results], 0.4, label="wall (slowest rank)")
    ax.bar([i + 0.2 for i in x], [r["cpu_per_rank_s"] for r in results], 0.4,
           label="CPU time per rank")
    one = results[0]["wall_s"]
    ax.axhline(BAR_RATIO * one, color="k", ls="--", lw=1, label=f"bar {BAR_RATIO}× one-process")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("seconds per forward + backward")
    ax.set_title(f"global-batch MMD, N = {n}, d = {d}, one thread per rank")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.device != "cpu":
        raise SystemExit("bench ddp runs gloo ranks on the CPU (use --device cpu)")
    n, d, world, reps = args.n, args.d, args.world, args.reps
    if args.quick:
        n, d, reps = min(n, 512), min(d, 32), 1
    out = Path(args.out or "bench-results/ddp_cpu")
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    modes = [("one-process", 1), ("global", world)]
    if not args.no_baseline:
        modes.append(("gather-autograd", world))
    results = []
    for mode, w in modes:
        if not args.silent:
            print(f"[bench ddp] {mode} on {w} rank(s), N = {n}, d = {d} ...", flush=True)
        results.append(_launch(mode, w, n, d, reps))
    one = results[0]
    for r in results:
        r["wall_ratio"] = r["wall_s"] / one["wall_s"]
        r["cpu_ratio"] = r["cpu_per_rank_s"] / one["cpu_per_rank_s"]
        r["value_rel_diff"] = abs(r["value"] - one["value"]) / max(abs(one["value"]), 1e-30)
    glob = results[1]
    bars = {"wall_ratio_le_0.75": glob["wall_ratio"] <= BAR_RATIO,
            "cpu_ratio_le_0.75": glob["cpu_ratio"] <= BAR_RATIO}
    report = {
        "benchmark": "ddp", "n": n, "d": d, "world": world, "reps": reps, "dtype": "float32",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), **core_info(),
                    "load_avg_start": load0, "load_avg_end": os.getloadavg()},
        "commit": _commit(), "results": results, "bytes_per_rank_per_call": _bytes(n, d, world),
        "bars": bars,
    }
    (out / "ddp.json").write_text(json.dumps(report, indent=2))
    _plot(out / "ddp.png", results, n, d, world)
    machine = report["machine"]
    cap = f" (DAPKERNELS_ISA={machine['isa_cap']})" if machine["isa_cap"] else ""
    lines = [f"machine: {machine['cpu']}, {os.cpu_count()} cores, C++ core ISA "
             f"{machine['core_isa']}{cap}, torch "
             f"{torch.__version__}; load average at start {load0[0]:.2f}, end "
             f"{report['machine']['load_avg_end'][0]:.2f}",
             f"N = {n}, d = {d}, float32, one thread per rank, median of {reps}",
             f"{'mode':<16} {'ranks':>5} {'wall s':>9} {'× one':>7} {'CPU/rank s':>11} "
             f"{'× one':>7} {'value rel diff':>15}"]
    for r in results:
        lines.append(f"{r['mode']:<16} {r['world']:>5} {r['wall_s']:>9.3f} "
                     f"{r['wall_ratio']:>7.2f} {r['cpu_per_rank_s']:>11.3f} "
                     f"{r['cpu_ratio']:>7.2f} {r['value_rel_diff']:>15.2e}")
    b = report["bytes_per_rank_per_call"]
    lines.append(f"bytes per rank per call: all_gather contribution {b['gather_contribution']} "
                 f"(= N·d·4/W; sent over a ring: {b['gather_sent_ring']}; gathered matrix "
                 f"{b['gathered_matrix']} = N·d·4) + status {b['status_vector']} + all-reduce "
                 f"{b['all_reduce']}")
    lines.append(f"bar: global wall ≤ {BAR_RATIO}× one-process: "
                 f"{'met' if bars['wall_ratio_le_0.75'] else 'NOT met'} "
                 f"({glob['wall_ratio']:.2f}); CPU per rank: "
                 f"{'met' if bars['cpu_ratio_le_0.75'] else 'NOT met'} ({glob['cpu_ratio']:.2f})")
    text = "\n".join(lines)
    print(text)
    (out / "report.txt").write_text(text + "\n")
    return 0
