"""Running a case in a fresh Python subprocess (for a clean peak-RSS measurement on CPU).

Protocol: ``python -m dapkernels.bench.subprocess_protocol`` reads one JSON request
(:mod:`.measure`) on stdin and prints one JSON result line prefixed with ``RESULT:``; the
parent reads the last such line.  A worker that dies (e.g. killed for memory) is reported as
``{"status": "failed", "reason": …}``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from .measure import measure_request

__all__ = ["RESULT_PREFIX", "run_in_subprocess", "worker_main"]

RESULT_PREFIX = "RESULT:"


def run_in_subprocess(request: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "dapkernels.bench.subprocess_protocol"],
        input=json.dumps(request), capture_output=True, text=True, check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    reason = f"worker exited with code {proc.returncode}"
    if proc.returncode in (-9, 137):
        reason += " (killed, probably out of memory)"
    return {"status": "failed", "reason": reason + (": " + " | ".join(tail) if tail else "")}


def worker_main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        result = measure_request(request)
    except torch.OutOfMemoryError as exc:
        result = {"status": "failed", "reason": f"out of memory: {exc}".splitlines()[0]}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main())
