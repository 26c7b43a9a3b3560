"""``dapkernels bench ddp --quick`` runs end to end and writes its JSON, PNG and report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_ddp_quick(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "dapkernels", "bench", "ddp", "--quick", "--no-baseline",
           "--world", "2", "--n", "256", "--d", "16", "--out", str(tmp_path), "--silent"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=80)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "ddp.json").read_text())
    assert [r["mode"] for r in report["results"]] == ["one-process", "global"]
    assert report["results"][1]["value_rel_diff"] < 1e-4
    assert report["bytes_per_rank_per_call"]["gather_contribution"] == 128 * 16 * 4
    assert (tmp_path / "ddp.png").stat().st_size > 0
    assert "bytes per rank per call" in run.stdout
