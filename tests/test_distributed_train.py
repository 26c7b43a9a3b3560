"""``dapkernels train dan --nproc-per-node 2`` end to end on moons (gloo, CPU), and
``--resume`` on both ranks continuing to the result of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from dapkernels.train.distributed import ShardedBatchStream, strip_nproc

ROOT = Path(__file__).resolve().parents[1]


def _train(out: Path, epochs: int, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CI="1")
    cmd = [sys.executable, "-m", "dapkernels", "train", "dan", "--dataset", "moons",
           "--epochs", str(epochs), "--iters-per-epoch", "2", "--batch-size", "16",
           "--nproc-per-node", "2", "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=80)


def _records(out: Path) -> list:
    data = json.loads((out / "metrics.json").read_text())
    return [{k: v for k, v in e.items() if "time" not in k} for e in data["epochs"]]


def test_train_dan_two_processes_and_resume(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run = _train(full, 2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("dan (fused) on moons") == 1  # rank 0 reports, once
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["epoch_001.pt",
                                                                       "epoch_002.pt"]
    assert (full / "curves.png").is_file()
    state = torch.load(full / "checkpoints" / "epoch_002.pt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 4
    run = _train(part, 1)
    assert run.returncode == 0, run.stderr[-3000:]
    run = _train(part, 2, "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming from" in run.stdout
    assert _records(part) == _records(full)


def test_sharded_stream_is_the_global_stream_split():
    x = torch.arange(40.0).reshape(20, 2)
    y = torch.arange(20)
    one = ShardedBatchStream(x, y, 8, 3, 0, 1)
    ranks = [ShardedBatchStream(x, y, 4, 3, r, 2) for r in range(2)]
    for _ in range(5):  # crosses a pass boundary
        xb, yb = one.next()
        parts = [s.next() for s in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), xb)
        assert torch.equal(torch.cat([p[1] for p in parts]), yb)


def test_strip_nproc():
    assert strip_nproc(["train", "dan", "--nproc-per-node", "2", "--x"]) == ["train", "dan",
                                                                          "--x"]
    assert strip_nproc(["train", "--nproc-per-node=3"]) == ["train"]
