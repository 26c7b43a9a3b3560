"""The C++ quadratic-forms engine (``dapkernels._C.quadratic_forms``): thread-count
independence, every instruction-set copy against the dense oracle, argument checks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dapkernels import _C
from dapkernels.backends import cpu_quadratic_forms as core
from dapkernels.backends import reference_quadratic_forms as oracle

_ISAS = ["baseline", "avx2", "avx512"]


def _case(n_rows=300, d=7, b=37, num=3, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n_rows, d, generator=gen, dtype=dtype) + 5.0  # an offset the centring removes
    g = torch.tensor([0.02, 0.05, 0.3][:num], dtype=torch.float64)
    v = torch.randint(-1, 2, (n_rows, b), generator=gen).to(torch.int8)
    return z, g, v


@pytest.mark.parametrize("sum_bank", [True, False])
def test_same_result_for_every_thread_count(sum_bank):
    z, g, v = _case(n_rows=600, b=40)  # above the core's threading threshold
    one = core.quadratic_forms(z, g, v, sum_bank, tile=32, threads=1)
    for threads in (2, 3):
        many = core.quadratic_forms(z, g, v, sum_bank, tile=32, threads=threads)
        for a, b in zip(one, many):
            assert torch.equal(a, b)


def test_parts_equal_pooled_and_strided_inputs():
    z, g, v = _case(n_rows=130)
    pooled = core.quadratic_forms(z, g, v, True, tile=16)
    wide = torch.randn(130, 11)
    wide[:, 2:9] = z
    parts = core.quadratic_forms_parts([wide[:50, 2:9], wide[50:, 2:9]], g, v, True, tile=16)
    for a, b in zip(pooled, parts):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4)


_ISA_CHECK = """
import torch
from dapkernels import _C
from dapkernels.backends import cpu_quadratic_forms as core
from dapkernels.backends import reference_quadratic_forms as oracle
assert _C.isa == "{isa}", _C.isa
gen = torch.Generator().manual_seed(1)
for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
    for n_rows, b, tile in ((1, 1, 8), (2, 3, 8), (61, 19, 16), (97, 40, 256)):
        z = torch.randn(n_rows, 5, generator=gen, dtype=dtype)
        g = torch.tensor([0.1, 0.7], dtype=torch.float64)
        v = torch.randint(-1, 2, (n_rows, b), generator=gen).to(torch.int8)
        for sb in (True, False):
            want = oracle.quadratic_forms(z, g, v, sb)
            got = core.quadratic_forms(z, g, v, sb, tile=tile, threads=2)
            for w, o in zip(want, got):
                scale = float(want[2].abs().max()) + 1.0
                torch.testing.assert_close(o, w, rtol=tol, atol=tol * scale)
"""


@pytest.mark.parametrize("isa", _ISAS[: _ISAS.index(_C.isa) + 1])
def test_instruction_set_copies_match_oracle(isa):
    env = {**os.environ, "DAPKERNELS_ISA": isa}
    subprocess.run([sys.executable, "-c", _ISA_CHECK.format(isa=isa)], env=env, check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _call(**over):
    z, g, v = _case(n_rows=10, b=4, num=1)
    q = torch.empty(1, 4, dtype=torch.float64)
    r = torch.empty(1, 10, dtype=torch.float64)
    args = dict(part_ptrs=[z.data_ptr()], part_rows=[10], part_row_strides=[7],
                part_col_strides=[1], cols=7, dtype="float32", gammas=[0.1],
                v_ptr=v.data_ptr(), v_row_stride=4, B=4, sum_bank=True, q_ptr=q.data_ptr(),
                rowsums_ptr=r.data_ptr(), tile=8, threads=1)
    args.update(over)
    _C.quadratic_forms(**args)
    return q, r


@pytest.mark.parametrize(
    "over, word",
    [
        (dict(threads=0), "threads"),
        (dict(tile=0), "tile"),
        (dict(part_ptrs=[]), "parts"),
        (dict(part_rows=[10, 1]), "parts"),
        (dict(cols=0), "cols"),
        (dict(gammas=[]), "gammas"),
        (dict(gammas=[-1.0]), "gammas"),
        (dict(gammas=[float("nan")]), "gammas"),
        (dict(B=0), "B"),
        (dict(v_ptr=0), "v"),
        (dict(v_row_stride=3), "v"),
        (dict(q_ptr=0), "q"),
        (dict(rowsums_ptr=3), "rowsums"),
        (dict(part_ptrs=[2]), "parts"),
        (dict(part_col_strides=[2]), "parts"),
        (dict(part_row_strides=[3]), "parts"),
        (dict(dtype="int8"), "parts"),
    ],
)
def test_core_validates_arguments_before_touching_memory(over, word):
    with pytest.raises((ValueError, TypeError), match=word):
        _call(**over)


def test_core_reports_non_finite_input():
    z = torch.ones(6, 2)
    z[3, 1] = float("inf")
    v = torch.ones(6, 2, dtype=torch.int8)
    with pytest.raises(ValueError, match="non-finite"):
        core.quadratic_forms(z, torch.tensor([0.5], dtype=torch.float64), v, True)


def test_wrapper_checks_labels():
    z, g, v = _case(n_rows=10, b=3)
    with pytest.raises(TypeError, match="int8"):
        core.quadratic_forms(z, g, v.float(), True)
    with pytest.raises(ValueError, match="rows"):
        core.quadratic_forms(z, g, v[:9], True)
    assert oracle.quadratic_forms(z, g, v, True)[0].shape == (1, 3)


_OMP_CHILD = """
import sys, torch
from dapkernels.backends import cpu_quadratic_forms as core
gen = torch.Generator().manual_seed(3)
z = torch.randn(700, 9, generator=gen)
v = torch.randint(-1, 2, (700, 50), generator=gen).to(torch.int8)
g = torch.tensor([0.03, 0.2], dtype=torch.float64)
out = [*core.quadratic_forms(z, g, v, True, tile=64, threads=int(sys.argv[2])),
       *core.quadratic_forms(z, g, v, False, tile=64, threads=int(sys.argv[2]))]
torch.save(out, sys.argv[1])
"""


def _omp_reference():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(700, 9, generator=gen)
    v = torch.randint(-1, 2, (700, 50), generator=gen).to(torch.int8)
    g = torch.tensor([0.03, 0.2], dtype=torch.float64)
    return [*core.quadratic_forms(z, g, v, True, tile=64, threads=1),
            *core.quadratic_forms(z, g, v, False, tile=64, threads=1)]


@pytest.mark.parametrize(
    "env, threads",
    [({"OMP_THREAD_LIMIT": "1"}, 2), ({"OMP_DYNAMIC": "true"}, 2), ({"OMP_NUM_THREADS": "8"}, 8)],
)
def test_openmp_settings_give_the_same_bits(tmp_path, env, threads):
    out = tmp_path / "run.pt"
    subprocess.run([sys.executable, "-c", _OMP_CHILD, str(out), str(threads)],
                   env={**os.environ, **env}, check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for a, b in zip(torch.load(out), _omp_reference()):
        assert torch.equal(a, b)


def test_nested_inside_an_outer_parallel_region():
    expected = _omp_reference()
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(700, 9, generator=gen)
    v = torch.randint(-1, 2, (700, 50), generator=gen).to(torch.int8)
    g = torch.tensor([0.03, 0.2], dtype=torch.float64)
    results = _C.call_from_parallel_region(
        lambda i: core.quadratic_forms(z, g, v, True, tile=64, threads=2), 2)
    for r in [r for r in results if r is not None]:
        for a, b in zip(r, expected[:3]):
            assert torch.equal(a, b)


_OOM_CHILD = """
import resource, torch
from dapkernels.backends import cpu_quadratic_forms as core
z = torch.randn(20000, 4)
v = torch.ones(20000, 1000, dtype=torch.int8)   # tile = 1: Q partials need 20000 × 1024 doubles
g = torch.tensor([0.5], dtype=torch.float64)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 64 * 2**20, hard))
try:
    core.quadratic_forms(z, g, v, True, tile=1, threads=2)
except MemoryError:
    print("MemoryError")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "DAPKERNELS_SANITIZED" in os.environ,
                    reason="needs /proc and RLIMIT_AS (AddressSanitizer reserves terabytes)")
def test_allocation_failure_is_a_memory_error():
    proc = subprocess.run([sys.executable, "-c", _OOM_CHILD], capture_output=True, text=True,
                          timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "MemoryError"
