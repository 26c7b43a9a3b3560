"""``dapkernels bench shift --quick``: JSON + PNG, streamed figures, no placeholder numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dapkernels.bench import shift as bench_shift
from dapkernels.cli import main
from dapkernels.metrics import block_mmd_test

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_shift_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["bench", "shift", "--quick", "--silent", "--out", str(out),
               "--stream-size", "6000", "16", "--tmp-dir", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "block n=m=6000 d=16 memmap" in printed and "C++ core ISA" in printed
    payload = json.loads((out / "shift.json").read_text())
    assert payload["benchmark"] == "shift" and payload["machine"]["core_isa"]
    stream = [c for c in payload["cases"] if c["group"] == "stream"]
    assert [c["method"] for c in stream] == ["block", "linear"]
    for c in stream:
        assert c["status"] == "ok" and c["seconds"] > 0
        assert c["input_bytes"] == 2 * 6000 * 16 * 4
        assert c["peak_growth_bytes"] is not None and c["peak_growth_bytes"] < 64 * 2**20
    assert stream[0]["num_blocks"] == 77 and stream[0]["block_size"] == 77
    perm = [c for c in payload["cases"] if c["group"] == "permutation"]
    assert perm and all(c["status"] == "ok" and c["seconds"] > 0 for c in perm)
    assert (out / "shift.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob("dk_shift_*"))  # the memmapped inputs are removed


def test_measure_stream_equals_in_memory_test(tmp_path):
    paths = [str(bench_shift.write_memmap(tmp_path / f"{k}.npy", 3000, 8, seed, shift))
             for k, seed, shift in (("s", 0, 0.0), ("t", 1, 0.5))]
    res = bench_shift.measure({"kind": "stream", "method": "block", "paths": paths})
    x, y = (torch.from_numpy(np.load(p)) for p in paths)
    ref = block_mmd_test(x, y)
    assert res["statistic"] == pytest.approx(ref.statistic, rel=1e-12)
    assert res["p_value"] == pytest.approx(ref.p_value, rel=1e-9, abs=1e-300)
    assert x.shape == (3000, 8) and float(y.mean()) == pytest.approx(0.5, abs=0.02)
