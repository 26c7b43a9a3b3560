"""Ahead-of-time compilation of the Triton kernels (no GPU needed: triton ships ptxas): the
subset of ``aot.subset_jobs`` — per device class (99 KB on sm_86, 163 KB on sm_80, 227 KB on
sm_90), each kernel family once, in its shipped configuration with the most registers — must
compile without error, without register spills and within the target's shared memory.  The
full table (every class on every target of the class: sm_80, 86, 89, 90, 100, 120) is
``python -m dapkernels.backends.triton.aot``, committed as
``benchmarks/results/aot_triton_cuda_all_targets.txt``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_aot_subset_compiles_without_spills():
    from dapkernels.backends.triton.aot import SHARED_LIMIT, subset_jobs

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dapkernels.backends.triton.aot", "--subset", "--jobs", "2"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    out = proc.stdout + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if "_kernel " in line]
    families = {(line.split()[0], line.split()[5], "HAS_GRAD=True" in line) for line in rows}
    assert len(rows) == len(subset_jobs()), out
    assert families >= {
        (arch, k, g) for arch in ("80", "86", "90") for g in (True, False)
        for k in ("mmd_small_kernel", "mmd_flash_kernel", "mmd_sweep_kernel", "coral_grad_kernel")}
    assert {(arch, k) for arch, k, _ in families} >= {
        (arch, k) for arch in ("80", "86", "90")
        for k in ("mmd_prep_kernel", "mmd_wide_kernel", "mmd_finish_kernel", "coral_gram_kernel",
                  "coral_small_kernel")}
    assert proc.returncode == 0, out
    for line in rows:
        sm, regs, spill, smem = line.split()[:4]
        assert regs.isdigit() and spill == "0" and int(smem) <= SHARED_LIMIT[int(sm)], line
