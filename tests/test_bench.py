"""The benchmark framework and ``bench mmd --quick`` (no wall times are asserted)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess

import pytest
import torch

from dapkernels.bench import memory, report, runner, subprocess_protocol
from dapkernels.bench import mmd as bench_mmd
from dapkernels.bench import timing as bench_timing
from dapkernels.bench.cli import add_bench_parser

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--sizes", "8", "16", "--dims", "16", "--ref-cases", "128:16", "--time-budget", "0"]


def _bench_main(argv: list) -> int:
    from dapkernels.cli import main  # the console script's entry point

    return main(argv)


def _positive_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_mmd_quick_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "mmd_cpu"
    assert _bench_main(["bench", "mmd", "--quick", "--silent", "--out", str(out)] + TINY) == 0
    printed = capsys.readouterr().out
    assert "ours/ref" in printed and "vs (a) TLL" in printed
    assert (out / "mmd.png").read_bytes()[:8] == PNG_MAGIC
    payload = json.loads((out / "mmd.json").read_text())
    assert {"benchmark", "machine", "config", "summary", "results"} <= payload.keys()
    assert "bars" not in payload  # targets live in benchmarks/results/README.md, not the library
    assert payload["benchmark"] == "mmd" and payload["config"]["quick"] is True
    assert {"date", "cpu", "torch", "cpu_count", "device"} <= payload["machine"].keys()
    # the figures depend on the C++ core's instruction-set copy: named in the JSON and printed
    from dapkernels import _C

    assert payload["machine"]["core_isa"] == _C.isa
    assert payload["machine"]["isa_cap"] == (os.environ.get("DAPKERNELS_ISA") or None)
    assert f"C++ core ISA {_C.isa}" in printed and payload["machine"]["cpu"] in printed
    comparison = payload["summary"]["comparison"]
    assert [(r["b"], r["d"]) for r in comparison] == [(8, 16), (16, 16)]
    for row in comparison:
        for impl in bench_mmd.IMPLS:
            assert _positive_finite(row[f"{impl}_s"])
            assert row[f"{impl}_mem"] >= 0
        for impl in bench_mmd.IMPLS[1:]:
            assert _positive_finite(row[f"speedup_{impl}"])
            assert _positive_finite(row[f"speedup_min_{impl}"])
    (ref,) = payload["summary"]["gemm_ref"]
    assert (ref["N"], ref["d"], ref["status"]) == (128, 16, "ok")
    assert _positive_finite(ref["ratio"]) and _positive_finite(ref["ratio_min"])
    assert _positive_finite(ref["ref_s"]) and ref["grad_bytes"] == 128 * 16 * 4
    for res in payload["results"]:
        assert res["status"] == "ok" and res["timings"]
        for timing in res["timings"].values():
            assert timing["mem_method"].startswith(("VmHWM", "ru_maxrss"))


def test_bench_registers_mmd_with_common_options() -> None:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "mmd", "--device", "cpu", "--quick", "--sizes", "4"])
    assert args.func is bench_mmd.run and args.sizes == [4] and args.quick
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "mmd", "--ref-cases", "12x3"])


def test_case_over_budget_is_skipped_and_reported() -> None:
    cpu = torch.device("cpu")
    cases, skipped = bench_mmd.build_cases(cpu, [64], [2048], [], impls=["ours", "tll"],
                                           time_budget_s=0.0, mem_budget_bytes=256 * memory.MiB)
    assert [c.params["impls"] for c in cases] == [["ours"]]
    assert [s["name"] for s in skipped] == ["tll"] and skipped[0]["status"] == "skipped"
    assert "budget" in skipped[0]["reason"]
    results = skipped + runner.run_cases(cases, cpu, isolate=False)
    summary = bench_mmd.summarize(results)
    assert summary["comparison"][0]["ours_s"] > 0 and summary["comparison"][0]["tll_s"] is None
    assert summary["comparison"][0]["speedup_tll"] is None
    assert "skipped" in bench_mmd.report(summary)
    (ref,) = runner.run_cases([runner.Case("g", "gemm_ref", "x:y", est_bytes=2)], cpu,
                                mem_budget_bytes=1)
    assert ref["status"] == "skipped"


def test_isolated_case_runs_in_a_subprocess() -> None:
    case = runner.Case(group="g", name="cmp", factory="dapkernels.bench.mmd:make_comparison",
                       params={"impls": ["ours", "torch"], "n": 6, "m": 5, "d": 4},
                       time_budget_s=0.0)
    res = runner.run_case(case, torch.device("cpu"), isolate=True, mem_budget_bytes=memory.GiB)
    assert res["status"] == "ok", res
    assert list(res["timings"]) == ["ours", "torch"]
    for timing in res["timings"].values():
        assert timing["repeats"] >= 3 and _positive_finite(timing["median_s"])
        assert timing["peak_mem_bytes"] >= 0
    assert res["median_s"] == res["timings"]["ours"]["median_s"]


def test_failed_subprocess_is_reported(monkeypatch) -> None:
    def killed(*args, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args, -9, stdout="", stderr="boom\n")

    monkeypatch.setattr(subprocess_protocol.subprocess, "run", killed)
    case = runner.Case(group="g", name="x", factory="dapkernels.bench.mmd:make_comparison")
    res = runner.run_case(case, torch.device("cpu"), isolate=True, mem_budget_bytes=memory.GiB)
    assert res["status"] == "failed"
    assert "out of memory" in res["reason"] and "boom" in res["reason"]


def test_peak_growth_sees_an_allocation() -> None:
    def step() -> None:
        torch.ones(16 * 2**20).sum()  # 64 MiB, touched

    step()
    growth, method, seconds = memory.measure_peak_growth(step, torch.device("cpu"))
    assert seconds > 0
    if method.startswith("VmHWM"):
        assert 56 * memory.MiB <= growth <= 200 * memory.MiB


def test_time_callable_repeats() -> None:
    calls = []
    timing = bench_timing.time_callable(lambda: calls.append(1), torch.device("cpu"), warmup=2,
                                  min_repeats=4, max_repeats=6, time_budget_s=0.0)
    assert 4 <= timing["repeats"] <= 6 and len(calls) == 2 + timing["repeats"]
    assert 0 <= timing["min_s"] <= timing["median_s"]


def test_time_interleaved_alternates() -> None:
    log = []
    timings = bench_timing.time_interleaved(
        {"a": lambda: log.append("a"), "b": lambda: log.append("b")}, torch.device("cpu"),
        min_repeats=3, max_repeats=3, time_budget_s=0.0, slice_s=0.0,
    )
    assert log == ["a", "b"] * 3
    assert timings["a"]["repeats"] == timings["b"]["repeats"] == 3


def test_quick_comparison_for_the_demo(monkeypatch) -> None:
    monkeypatch.setattr(bench_mmd, "QUICK_SIZES", (6,))
    monkeypatch.setattr(bench_mmd, "QUICK_DIMS", (5,))
    rows = bench_mmd.quick_mmd_comparison()
    assert len(rows) == 1 and (rows[0]["b"], rows[0]["d"]) == (6, 5)
    assert all(_positive_finite(rows[0][f"speedup_{i}"]) for i in bench_mmd.IMPLS[1:])


def test_format_helpers() -> None:
    table = report.format_table([{"a": "x", "b": 1}, {"a": "long", "b": 22}],
                                [("A", "a"), ("B", lambda r: f"{r['b']}!")])
    lines = table.splitlines()
    assert lines[0].split() == ["A", "B"] and lines[3].split() == ["long", "22!"]
    assert report.format_seconds(0.0012) == "1.2 ms" and report.format_seconds(None) == "-"
    assert report.format_bytes(3 * memory.MiB) == "3 MiB"
