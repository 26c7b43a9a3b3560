"""``dapkernels demo`` in its quick mode: every method, both impls, one table and a PNG."""

from __future__ import annotations

import json

from dapkernels.cli import main


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--no-bench", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for name in ("source-only", "dan", "dann", "coral", "speed-up", "MMD red."):
        assert name in text
    result = json.loads((tmp_path / "demo.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"source-only", "dan", "dann", "coral"}
    assert "compare" not in rows["source-only"]
    for method in ("dan", "dann", "coral"):
        row = rows[method]
        assert row["compare"]["speedup"] > 0 and row["compare"]["steps"] == 20
        assert row["compare"]["max_rel_gap"] <= 1e-4
        assert 0.0 <= row["target_acc"] <= 100.0
    assert rows["source-only"]["mmd_reduction"] == 0.0
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
