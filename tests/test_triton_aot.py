"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90 (no GPU needed: triton
ships ptxas): the subset of ``aot.subset_jobs`` — each kernel family once, in its most
demanding shipped configuration — must compile without error and without register spills."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


@pytest.mark.xfail(strict=True, reason="issue 4 open: shipped flash / 3xTF32 configurations "
                   "still spill (benchmarks/results/aot_triton_cuda_sm80_sm90.txt)")
def test_aot_subset_compiles_without_spills():
    from dapkernels.backends.triton.aot import subset_jobs

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dapkernels.backends.triton.aot", "--subset", "--jobs", "2"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if "_kernel " in line]
    families = {(line.split()[5], "HAS_GRAD=True" in line) for line in rows}
    assert len(rows) == len(subset_jobs()), out
    assert {f for f in families if f[0] != "prep_kernel"} >= {
        (k, g) for k in ("small_kernel", "flash_kernel", "sweep_kernel") for g in (True, False)}
    assert {line.split()[0] for line in rows} == {"80", "90"}
    assert proc.returncode == 0, out
    for line in rows:
        assert line.split()[2] == "0", line
