"""CORAL C++ core (csrc/coral.cpp, csrc/coral_kernel.h): robustness of the CPU kernel.

Non-finite inputs and overflowing products raise ``ValueError``; every instruction-set copy
(``DAPKERNELS_ISA``, run in subprocesses) meets the accuracy bar against the float64 oracle;
results are bitwise reproducible across calls and thread counts; a scratch allocation that
cannot succeed surfaces as ``MemoryError``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dapkernels as dk
from dapkernels import _C
from dapkernels.backends import cpu_coral

from .test_coral import draw, oracle_with_grad, rel

ROOT = Path(__file__).resolve().parents[1]
ISAS = ("baseline", "avx2", "avx512")
#: The copies this CPU and build run: every ISA up to the one chosen here.
ISAS_HERE = ISAS[: ISAS.index(_C.isa) + 1]


def _child_env(**extra) -> dict:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


# ---- NaN / Inf / overflow ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("domain", ["f_s", "f_t"])
@pytest.mark.parametrize("path", ["gram", "cov"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_finite_feature_names_domain_and_row(bad, domain, path, dtype):
    xs, xt = draw(6, 7, 40 if path == "gram" else 5, dtype, 0.0, 1)
    row = 3 if domain == "f_s" else 5
    (xs if domain == "f_s" else xt)[row, 2] = bad
    with pytest.raises(ValueError, match=rf"{domain} contains non-finite values .*: row {row}\b"):
        cpu_coral.coral_sweep(xs, xt, True, path)
    with pytest.raises(ValueError, match=rf"{domain} contains non-finite values .*: row {row}\b"):
        cpu_coral.coral_sweep(xs, xt, False, path)


def test_non_finite_through_public_api_and_first_row():
    xs, xt = draw(9, 8, 300, torch.float32, 0.0, 2)
    xt[6, 0] = float("nan")
    xt[2, 299] = float("inf")  # the first offending row is reported
    xs.requires_grad_()
    with pytest.raises(ValueError, match=r"f_t contains non-finite values .*: row 2\b"):
        dk.coral(xs, xt, backend="cpu")


@pytest.mark.parametrize("path", ["gram", "cov"])
def test_overflowing_products_raise(path):
    xs, xt = draw(5, 6, 50 if path == "gram" else 4, torch.float32, 0.0, 3)
    with pytest.raises(ValueError, match="features too large"):
        cpu_coral.coral_sweep(xs * 1e25, xt, True, path)  # finite inputs, products overflow f32
    with pytest.raises(ValueError, match="features too large"):
        cpu_coral.coral_sweep(xs, xt * 1e25, False, path)


def test_float64_sum_overflow_raises():
    xs, xt = draw(4, 4, 3, torch.float64, 0.0, 4)
    xs[:, 1] = 1.5e308  # each value finite, their column sum is not
    with pytest.raises(ValueError, match="too large"):
        cpu_coral.coral_sweep(xs, xt, True)


def test_threads_argument_is_validated():
    xs, xt = draw(3, 3, 2, torch.float32, 0.0, 5)
    args = (xs.data_ptr(), 3, 2, 2, 1, xt.data_ptr(), 3, 2, 2, 1, "float32", 0, 0, False, 0)
    with pytest.raises(ValueError, match="threads"):
        _C.coral_sweep(*args, 0)
    assert _C.coral_sweep(*args, 1)[0] == _C.coral_sweep(*args, 64)[0]


# ---- determinism ------------------------------------------------------------------------------

# Both paths, sizes whose work is above the kernel's one-thread threshold (so that threads are
# used when torch allows them) and awkward remainders (rows, columns, tiles).
DET_CASES = [(32, 32, 2048, "auto"), (37, 29, 1001, "gram"), (256, 256, 64, "auto"),
             (300, 211, 67, "cov")]


def _run(xs, xt, path):
    v, (gs, gt) = cpu_coral.coral_sweep(xs, xt, True, path)
    return float(v), gs, gt


@pytest.mark.parametrize("ns, nt, d, path", DET_CASES)
def test_bitwise_repeatable_and_thread_independent(ns, nt, d, path):
    """The core is bitwise independent of the thread count; the BLAS route (a baseline core
    only) inherits torch's GEMMs, which are repeatable at a fixed thread count."""
    xs, xt = draw(ns, nt, d, torch.float32, 10.0, 6)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, before))
        runs = [_run(xs, xt, path) for _ in range(5)]
        if cpu_coral.blas_route(ns, nt, d, path) is None:
            torch.set_num_threads(1)
            runs.append(_run(xs, xt, path))
    finally:
        torch.set_num_threads(before)
    v0, gs0, gt0 = runs[0]
    for v, gs, gt in runs[1:]:
        assert v == v0
        assert torch.equal(gs, gs0) and torch.equal(gt, gt0)


# ---- instruction-set copies -------------------------------------------------------------------

_ISA_CHILD = """
import json, sys, torch
from dapkernels import _C
from dapkernels.backends import cpu_coral
from tests.test_coral import draw, oracle_with_grad, rel
assert _C.isa == sys.argv[1], (_C.isa, sys.argv[1])
out = []
for ns, nt, d, path in ((32, 32, 256, "auto"), (64, 64, 2048, "auto"), (13, 22, 517, "gram"),
                        (128, 128, 64, "auto"), (41, 30, 23, "cov"), (5, 3, 1, "auto")):
    for dtype in (torch.float32, torch.float64):
        xs, xt = draw(ns, nt, d, dtype, 100.0, ns + d)
        v0, gs0, gt0 = oracle_with_grad(xs, xt)
        v, (gs, gt) = cpu_coral.coral_sweep(xs, xt, True, path)
        dv = abs(float(v) - float(v0)) / float(v0)
        out.append({"case": [ns, nt, d, path, str(dtype)], "dv": dv, "gs": rel(gs, gs0),
                    "gt": rel(gt, gt0), "v": float(v),
                    "route": cpu_coral.blas_route(ns, nt, d, path)})
print(json.dumps({"isa": _C.isa, "results": out}))
"""


@pytest.fixture(scope="module")
def isa_results():
    results = {}
    for isa in ISAS_HERE:
        proc = subprocess.run([sys.executable, "-c", _ISA_CHILD, isa], cwd=ROOT,
                              env=_child_env(DAPKERNELS_ISA=isa), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr
        results[isa] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("isa", ISAS_HERE)
def test_each_instruction_set_meets_the_accuracy_bar(isa_results, isa):
    res = isa_results[isa]
    assert res["isa"] == isa
    for r in res["results"]:
        f32 = "float32" in r["case"][4]
        tol_v, tol_g = (1e-5, 1e-4) if f32 else (1e-10, 1e-9)
        assert r["dv"] <= tol_v and r["gs"] <= tol_g and r["gt"] <= tol_g, (isa, r)


def test_baseline_copy_hands_gemm_bound_problems_to_torch(isa_results):
    """Under the baseline copy, where torch has wider vectors, the GEMM-bound case of the child
    (64 + 64, d = 2048, Gram path) took the BLAS route and met the bar above; no other copy
    routes anything."""
    wider = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    for isa, res in isa_results.items():
        routes = {tuple(r["case"][:4]): r["route"] for r in res["results"]}
        expect_gram = "gram" if isa == "baseline" and wider else None
        assert routes[(64, 64, 2048, "auto")] == expect_gram, isa
        assert routes[(5, 3, 1, "auto")] is None and routes[(32, 32, 256, "auto")] is None


def test_instruction_sets_agree(isa_results):
    ran = [isa_results[isa] for isa in ISAS_HERE]
    assert ran[0]["isa"] == "baseline"
    for other in ran[1:]:
        for a, b in zip(ran[0]["results"], other["results"]):
            tol = 1e-5 if "float32" in a["case"][4] else 1e-10
            assert abs(a["v"] - b["v"]) <= tol * abs(a["v"]), (other["isa"], a["case"])


# ---- BLAS route (baseline core, wider torch) ---------------------------------------------------

BLAS_CASES = [(32, 32, 2048, "gram"), (17, 40, 777, "gram"), (128, 128, 256, "cov"),
              (300, 211, 67, "cov"), (2, 3, 900, "gram"), (40, 2, 5, "cov")]


@pytest.mark.parametrize("ns, nt, d, path", BLAS_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blas_route_meets_the_accuracy_bar(ns, nt, d, path, dtype):
    xs, xt = draw(ns, nt, d, dtype, 100.0, ns + nt + d)
    v0, gs0, gt0 = oracle_with_grad(xs, xt)
    sweep = cpu_coral.blas_gram_sweep if path == "gram" else cpu_coral.blas_cov_sweep
    v, (gs, gt) = sweep(xs, xt, True)
    assert gs.dtype == gt.dtype == dtype and gs.shape == xs.shape and gt.shape == xt.shape
    tol_v, tol_g = (1e-5, 1e-4) if dtype == torch.float32 else (1e-10, 1e-9)
    assert abs(v - float(v0)) <= tol_v * float(v0)
    assert rel(gs, gs0) <= tol_g and rel(gt, gt0) <= tol_g
    assert sweep(xs, xt, False) == (v, [])


@pytest.mark.parametrize("path", ["gram", "cov"])
def test_blas_route_raises_like_the_core(path):
    d = 40 if path == "gram" else 5
    xs, xt = draw(6, 7, d, torch.float32, 0.0, 1)
    sweep = cpu_coral.blas_gram_sweep if path == "gram" else cpu_coral.blas_cov_sweep
    bad = xt.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"f_t contains non-finite values .*: row 4\b"):
        sweep(xs, bad, True)
    with pytest.raises(ValueError, match="features too large"):
        sweep(xs * 1e25, xt, True)


def test_blas_route_rule(monkeypatch):
    """Only a baseline core with a wider torch routes, and only from BLAS_MIN_WORK on; the
    public loss then equals the core's within the float32 bar."""
    monkeypatch.setattr(cpu_coral, "_BLAS_WIDER", False)
    assert cpu_coral.blas_route(64, 64, 8192, "auto") is None
    monkeypatch.setattr(cpu_coral, "_BLAS_WIDER", True)
    w = cpu_coral.BLAS_MIN_WORK
    assert cpu_coral.blas_route(32, 32, w // 64**2, "auto") == "gram"
    assert cpu_coral.blas_route(32, 32, w // 64**2 - 1, "auto") is None
    assert cpu_coral.blas_route(2048, 2048, 64, "auto") == "cov"  # 4096·64² = w
    assert cpu_coral.blas_route(256, 256, 64, "auto") is None
    assert cpu_coral.blas_route(64, 64, 512, "cov") == "cov"  # forced path: its own work
    xs, xt = draw(64, 64, 1024, torch.float32, 3.0, 8)
    v_route, g_route = cpu_coral.coral_sweep(xs, xt, True)
    monkeypatch.setattr(cpu_coral, "_BLAS_WIDER", False)
    v_core, g_core = cpu_coral.coral_sweep(xs, xt, True)
    assert abs(float(v_route) - float(v_core)) <= 1e-5 * float(v_core)
    for a, b in zip(g_route, g_core):
        assert rel(a, b.double()) <= 1e-4


# ---- allocation failure -----------------------------------------------------------------------

_OOM_CHILD = """
import resource, torch
from dapkernels.backends import cpu_coral
d = 60000  # the cov path's d×d float64 matrix alone is 28.8 GB; everything else is small
xs, xt = torch.randn(4, d), torch.randn(5, d)  # created before the limit; no grads requested
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
limit = vm + (256 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    cpu_coral.coral_sweep(xs, xt, False, "cov")
except MemoryError:
    print("MemoryError")
else:
    print("no error")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "DAPKERNELS_SANITIZED" in os.environ,
                    reason="needs /proc and RLIMIT_AS (AddressSanitizer reserves terabytes)")
def test_scratch_allocation_failure_is_memory_error():
    proc = subprocess.run([sys.executable, "-c", _OOM_CHILD], cwd=ROOT, env=_child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "MemoryError"


def test_float32_loss_beyond_float32_range_raises():
    """At 1e12 the value (∝ scale⁴, here ~3e47) is finite in the float64 accumulators but not
    representable as the float32 loss: a ValueError, not torch's conversion error or Inf."""
    g = torch.Generator().manual_seed(0)
    xs = (1e12 * torch.randn(20, 50, generator=g)).float()
    xt = (2e12 * torch.randn(30, 50, generator=g)).float()
    with pytest.raises(ValueError, match="overflows float32"):
        dk.coral(xs, xt, backend="cpu")
    assert torch.isfinite(dk.coral(xs.double(), xt.double(), backend="cpu"))
