"""Shift tests at scale: streaming block / linear tests over memmaps, permutation engine.

Two groups of cases, each measured in a fresh subprocess (``--isolate``, the default except with
``--quick``) after a small warm-up call:

* **stream**: ``n = m`` rows of ``d`` float32 features are written to two ``.npy`` files in a
  temporary folder (source N(0, I), target N(0.01, I), seeded), opened with
  ``np.load(mmap_mode="r")`` and tested with :func:`dapkernels.metrics.block_mmd_test` (default
  block size ⌊√n⌋, default bank with the pilot bandwidths) and
  :func:`dapkernels.metrics.linear_mmd_test`.  Full run: n = m = 10^6, d = 128 (two 512 MB
  files); ``--quick``: n = m = 20 000, d = 32.
* **permutation**: :func:`dapkernels.metrics.mmd_test` (``method="permutation"``, unbiased,
  default bank) on in-memory float32 data, n = m = 10^4, d = 256, B = 1000 and n = m = 10^5,
  d = 128, B = 200 (``--quick``: n = m = 500, d = 32, B = 100).

Peak memory growth "beyond the inputs": the memmapped input pages count in the process's
resident set once read (``RssFile``) although they are the inputs themselves, so the growth
reported is the larger of (a) the peak of ``RssAnon`` sampled every millisecond by a thread
(the C++ core releases the GIL) minus its value before the call, and (b) the growth of the peak
resident set ``VmHWM`` (reset through ``/proc/self/clear_refs``) minus the growth of
``RssFile`` at the end of the call.  For in-memory inputs (permutation cases) ``RssFile`` does
not grow and (b) is the usual ``VmHWM`` growth.  Linux only; elsewhere the figures are None.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .machine import machine_info
from .memory import MiB, reset_peak_rss

__all__ = ["add_arguments", "run", "measure", "write_memmap", "FULL_STREAM", "FULL_PERM"]

#: (rows per domain, d) of the streaming cases.
FULL_STREAM = (1_000_000, 128)
QUICK_STREAM = (20_000, 32)
#: (rows per domain, d, permutations) of the permutation cases.
FULL_PERM = ((10_000, 256, 1000), (100_000, 128, 200))
QUICK_PERM = ((500, 32, 100),)
_RESULT = "RESULT:"
_WRITE_ROWS = 65536


def write_memmap(path: Path, rows: int, d: int, seed: int, shift: float) -> Path:
    """Writes a (rows, d) float32 ``.npy`` of N(shift, I) rows in chunks (O(chunk) memory)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, rows, _WRITE_ROWS):
        k = min(_WRITE_ROWS, rows - i)
        arr[i:i + k] = (torch.randn(k, d, generator=gen) + shift).numpy()
    arr.flush()
    del arr
    return path


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class _PeakAnon:
    """Samples ``RssAnon`` every ``interval`` seconds in a thread; ``peak`` in KiB."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval, self.peak = interval, _status_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        v = _status_kib("RssAnon")
        if v is not None and self.peak is not None:
            self.peak = max(self.peak, v)

    def __enter__(self) -> _PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _measured(fn) -> dict:
    """Runs ``fn()`` once; seconds and the memory growths of the module docstring."""
    import gc

    gc.collect()
    anon0, file0 = _status_kib("RssAnon"), _status_kib("RssFile")
    rss0 = _status_kib("VmRSS")
    hwm_ok = reset_peak_rss()
    with _PeakAnon() as sampler:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    file1, hwm = _status_kib("RssFile"), _status_kib("VmHWM")
    anon_growth = None if anon0 is None else (sampler.peak - anon0) * 1024
    hwm_growth = None
    if hwm_ok and None not in (hwm, rss0, file0, file1):
        hwm_growth = (hwm - rss0 - (file1 - file0)) * 1024
    growths = [g for g in (anon_growth, hwm_growth) if g is not None]
    return {"seconds": seconds, "peak_growth_bytes": max(growths) if growths else None,
            "anon_peak_growth_bytes": anon_growth, "hwm_minus_file_growth_bytes": hwm_growth,
            "file_rss_growth_bytes": None if file1 is None else (file1 - file0) * 1024,
            "result": out}


def _summary(res: object) -> dict:
    return {"statistic": res.statistic, "p_value": res.p_value, "std_error": res.std_error,
            "num_blocks": getattr(res, "num_blocks", 0), "block_size": getattr(res, "block_size",
                                                                             0)}


def measure(request: dict) -> dict:
    """One case (the worker body): ``{"kind": "stream", "method", "paths"}`` or
    ``{"kind": "permutation", "n", "d", "B", "device"}``."""
    from .. import metrics

    if request["kind"] == "stream":
        test = metrics.block_mmd_test if request["method"] == "block" else metrics.linear_mmd_test
        x, y = (np.load(p, mmap_mode="r") for p in request["paths"])
        test(x[:2048], y[:2048])  # warm-up: lazy imports, thread pools
        res = _measured(lambda: test(x, y))
        return {"status": "ok", **{k: v for k, v in res.items() if k != "result"},
                **_summary(res["result"]), "input_bytes": int(x.nbytes + y.nbytes)}
    mmd_test = metrics.mmd_test
    device = torch.device(request["device"])
    n, d, b = request["n"], request["d"], request["B"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen).to(device)
    y = (torch.randn(n, d, generator=gen) + 0.01).to(device)

    def call(xx, yy, perms):
        g = torch.Generator(device=device).manual_seed(1)
        out = mmd_test(xx, yy, method="permutation", num_permutations=perms, generator=g)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    call(x[:64], y[:64], 10)
    res = _measured(lambda: call(x, y, b))
    out = res.pop("result")
    return {"status": "ok", **res, "statistic": out.statistic, "p_value": out.p_value,
            "input_bytes": int(2 * n * d * 4)}


def _run_isolated(request: dict) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "dapkernels.bench.shift", json.dumps(request)],
                          capture_output=True, text=True, env=env, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return {"status": "failed", "reason": f"worker exited with code {proc.returncode}: {tail}"}


def _fmt_bytes(v: float | None) -> str:
    return "-" if v is None else f"{v / MiB:.1f} MiB"


def report(payload: dict) -> str:
    """The printed tables and bars."""
    lines = [f"machine: {payload['machine']['cpu']}, {payload['machine']['cpu_count']} cores, "
             f"C++ core ISA {payload['machine']['core_isa']}, torch threads "
             f"{payload['machine']['torch_threads']}", "",
             "case                                    time       peak growth   "
             "statistic   p-value     status"]
    for c in payload["cases"]:
        name = c["name"]
        if c["status"] == "ok":
            grown = _fmt_bytes(c["peak_growth_bytes"])
            lines.append(f"{name:<38}  {c['seconds']:8.2f} s  {grown:>12}"
                         f"  {c['statistic']:10.3g}  {c['p_value']:9.3g}  ok")
        else:
            lines.append(f"{name:<38}  {'-':>10}  {'-':>12}  {'-':>10}  {'-':>9}  "
                         f"{c['status']}: {c['reason']}")
    if payload["bars"]:
        lines += ["", "Bars"]
        for bar in payload["bars"]:
            mark = {True: "MET", False: "NOT MET", None: "n/a"}[bar["met"]]
            value = "-" if bar["value"] is None else f"{bar['value']:.3g}"
            lines.append(f"  [{mark}] {bar['bar']} (measured {value})")
    return "\n".join(lines)


def _bars(cases: list) -> list:
    bars = []
    for c in cases:
        p = c["params"]
        if c["group"] == "stream" and c["method"] == "block" and p["n"] >= 10**6:
            limit = 64
            label = f"block n=m={p['n']} d={p['d']} (memmap) growth beyond inputs <= 64 MiB"
        elif c["group"] == "permutation" and p["n"] >= 10**5:
            limit = 256
            label = f"permutation n=m={p['n']} d={p['d']} B={p['B']} completes, growth <= 256 MiB"
        elif c["group"] == "permutation" and p["n"] >= 10**4:
            limit = 64
            label = f"permutation n=m={p['n']} d={p['d']} B={p['B']} growth <= 64 MiB"
        else:
            continue
        grown = c.get("peak_growth_bytes")
        value = None if grown is None else grown / MiB
        bars.append({"bar": label, "value": value,
                     "met": None if value is None else value <= limit})
    return bars


def _write_png(path: Path, cases: list, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in cases if c["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [c["name"] for c in ok]
    axes[0].bar(labels, [c["seconds"] for c in ok], color="tab:blue")
    axes[0].set_ylabel("seconds")
    axes[0].set_title("wall time of one call")
    axes[1].bar(labels, [(c["peak_growth_bytes"] or 0) / MiB for c in ok], color="tab:orange")
    axes[1].set_ylabel("MiB")
    axes[1].set_title("peak memory growth beyond the inputs")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    if not ok:
        axes[0].text(0.5, 0.5, "no case measured", ha="center", transform=axes[0].transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench shift`` (the common ones are added by :mod:`dapkernels.bench.cli`)."""
    parser.add_argument("--stream-size", type=int, nargs=2, metavar=("N", "D"),
                        help=f"rows per domain and d of the streaming cases (default "
                             f"{FULL_STREAM[0]} {FULL_STREAM[1]}; --quick {QUICK_STREAM[0]} "
                             f"{QUICK_STREAM[1]})")
    parser.add_argument("--no-permutation", action="store_true",
                        help="skip the permutation-engine cases")
    parser.add_argument("--tmp-dir", metavar="DIR",
                        help="where the memmapped inputs are written (default: system temp)")


def run(args: argparse.Namespace) -> int:
    """Runs ``bench shift``: prints the tables, writes ``shift.json`` and ``shift.png``."""
    device = torch.device(args.device)
    n, d = args.stream_size or (QUICK_STREAM if args.quick else FULL_STREAM)
    isolate = args.isolate if args.isolate is not None else not args.quick
    say = (lambda msg: None) if args.silent else (
        lambda msg: print(msg, file=sys.stderr, flush=True))
    cases = []
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="dk_shift_") as tmp:
        say(f"writing 2 × {n} × {d} float32 memmaps to {tmp} …")
        paths = [str(write_memmap(Path(tmp) / f"{name}.npy", n, d, seed, shift))
                 for name, seed, shift in (("source", 0, 0.0), ("target", 1, 0.01))]
        for method in ("block", "linear"):
            request = {"kind": "stream", "method": method, "paths": paths}
            say(f"[stream] {method} n=m={n} d={d} …")
            res = _run_isolated(request) if isolate else measure(request)
            cases.append({"group": "stream", "method": method,
                          "name": f"{method} n=m={n} d={d} memmap",
                          "params": {"n": n, "d": d}, **res})
    if not args.no_permutation:
        for pn, pd, pb in (QUICK_PERM if args.quick else FULL_PERM):
            request = {"kind": "permutation", "n": pn, "d": pd, "B": pb, "device": str(device)}
            say(f"[permutation] n=m={pn} d={pd} B={pb} …")
            res = _run_isolated(request) if isolate else measure(request)
            cases.append({"group": "permutation", "method": "permutation",
                          "name": f"permutation n=m={pn} d={pd} B={pb}",
                          "params": {"n": pn, "d": pd, "B": pb}, **res})
    machine = machine_info(device)
    payload = {"benchmark": "shift", "machine": machine,
               "config": {"device": str(device), "quick": bool(args.quick), "isolate": isolate,
                          "stream_size": [n, d], "dtype": "float32", "estimator": "unbiased",
                          "kernels": "GaussianKernels() (pilot bandwidths for streaming)"},
               "cases": cases, "bars": _bars(cases)}
    print(report(payload))
    out = Path(args.out if args.out is not None else f"bench-results/shift_{device.type}")
    out.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(payload, default=str),
                       parse_constant=lambda c: None)  # NaN / Inf → null
    (out / "shift.json").write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    _write_png(out / "shift.png", cases, f"dapkernels bench shift ({machine['cpu']})")
    print(f"\nwrote {out / 'shift.json'} and {out / 'shift.png'}")
    return 0 if all(c["status"] != "failed" for c in cases) else 1


def _worker_main(argv: list) -> int:
    request = json.loads(argv[0])
    result = measure(request)
    print(_RESULT + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1:]))
