"""Ahead-of-time compilation of a representative subset of the Triton kernels for sm_80 and
sm_90 (no GPU needed: triton ships ptxas); fails on a compile error or any register spill."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_aot_subset_compiles_without_spills():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dapkernels.backends.triton.aot", "--subset", "--jobs", "2"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    rows = [line for line in proc.stdout.splitlines() if "_kernel " in line]
    assert len(rows) == 4, out
    assert {line.split()[0] for line in rows} == {"80", "90"}
    for line in rows:
        assert line.split()[2] == "0", line
