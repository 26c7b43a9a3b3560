"""The C++ core under every thread setting and at the edges of float32 (issue: the native core
on every CPU, every thread setting and every input).

* determinism: values and gradients bitwise identical across calls and across thread counts;
* OpenMP settings (thread limit, dynamic teams, oversubscription, nesting, several Python
  threads) give those same bits;
* an allocation failure reaches Python as MemoryError (child process under an address-space
  limit);
* float32 features at extreme scales give the float64 reference's answer (relative bandwidths
  make the loss scale-free) or a clear ValueError.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dapkernels as dk
from dapkernels import _C

from .oracle import oracle_jmmd

ALPHAS = [0.125, 0.25, 0.5, 1.0, 2.0]


def _inputs(n: int, m: int, d: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = 1.3 * torch.randn(m, d, generator=g, dtype=dtype) + 0.2
    return x, y


def _mmd_and_grads(x, y, estimator="unbiased"):
    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    value = dk.mmd(xs, ys, estimator=estimator, backend="cpu")
    gx, gy = torch.autograd.grad(value, (xs, ys))
    return value.detach(), gx, gy


def _jmmd_and_grads(x, y):
    srcs = [x.clone().requires_grad_(), x[:, :7].clone().requires_grad_()]
    tgts = [y.clone().requires_grad_(), y[:, :7].clone().requires_grad_()]
    value = dk.jmmd(srcs, tgts, backend="cpu")
    return (value.detach(), *torch.autograd.grad(value, srcs + tgts))


def _bitwise_equal(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("n, m, d", [(1100, 900, 48), (32, 32, 256), (100, 92, 40)])
def test_bitwise_identical_across_calls_and_thread_counts(restore_threads, deterministic, n, m,
                                                          d):
    """Five calls, 1 and 2 threads, same bits: N = 2000 (many tiles, the one-pass parallel
    sweep) and N = 64, 192 (the two-phase small-batch sweep, also parallel at these sizes)."""
    x, y = _inputs(n, m, d)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        runs = []
        for threads in (2, 1, 2, 2, 1):
            torch.set_num_threads(threads)
            runs.append(_mmd_and_grads(x, y))
    finally:
        torch.use_deterministic_algorithms(before)
    for run in runs[1:]:
        assert _bitwise_equal(run, runs[0])


def test_jmmd_bitwise_identical_across_thread_counts(restore_threads):
    x, y = _inputs(700, 500, 33, seed=3)
    torch.set_num_threads(1)
    one = _jmmd_and_grads(x, y)
    torch.set_num_threads(2)
    two = _jmmd_and_grads(x, y)
    assert _bitwise_equal(one, two)


_CHILD = """
import sys, torch, dapkernels as dk
torch.set_num_threads(int(sys.argv[2]))
g = torch.Generator().manual_seed(0)
x = torch.randn(1100, 48, generator=g)
y = 1.3 * torch.randn(900, 48, generator=g) + 0.2
xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
v = dk.mmd(xs, ys, backend="cpu")
out = [v.detach(), *torch.autograd.grad(v, (xs, ys))]
a = torch.randn(64, 2048, generator=g).requires_grad_()  # CORAL Gram path, threaded
b = (1.5 * torch.randn(64, 2048, generator=g)).requires_grad_()
c = dk.coral(a, b, backend="cpu")
out += [c.detach(), *torch.autograd.grad(c, (a, b))]
torch.save(out, sys.argv[1])
"""


def _coral_and_grads():
    g = torch.Generator().manual_seed(0)
    torch.randn(1100, 48, generator=g), torch.randn(900, 48, generator=g)  # as in _CHILD
    a = torch.randn(64, 2048, generator=g).requires_grad_()
    b = (1.5 * torch.randn(64, 2048, generator=g)).requires_grad_()
    c = dk.coral(a, b, backend="cpu")
    return (c.detach(), *torch.autograd.grad(c, (a, b)))


@pytest.mark.parametrize(
    "env, threads",
    [
        ({"OMP_THREAD_LIMIT": "1"}, 2),
        ({"OMP_DYNAMIC": "true"}, 2),
        ({"OMP_NUM_THREADS": "8"}, 8),  # more threads than the CI machine's cores
        ({"OMP_NUM_THREADS": "3", "OMP_PROC_BIND": "false"}, 3),
    ],
)
def test_openmp_settings_give_the_same_bits(tmp_path, env, threads):
    """A child under each OpenMP setting reproduces this process's MMD and CORAL values and
    gradients bit for bit."""
    here = (*_mmd_and_grads(*_inputs(1100, 900, 48)), *_coral_and_grads())
    out = tmp_path / "run.pt"
    subprocess.run([sys.executable, "-c", _CHILD, str(out), str(threads)],
                   env={**os.environ, **env}, check=True)
    assert _bitwise_equal(torch.load(out), here)


def test_nested_inside_an_outer_parallel_region():
    """Called from every thread of an enclosing OpenMP region (nested regions get one thread
    by default): each call still gives the same bits."""
    x, y = _inputs(700, 600, 40, seed=5)
    expected = _mmd_and_grads(x, y)
    results = _C.call_from_parallel_region(lambda i: _mmd_and_grads(x, y), 2)
    ran = [r for r in results if r is not None]  # one thread only in a build without OpenMP
    assert len(ran) == (2 if _C.openmp else 1)
    for r in ran:
        assert _bitwise_equal(r, expected)


def test_several_python_threads_at_once():
    """The GIL is released during the sweep: concurrent calls on different data do not mix."""
    problems = [_inputs(300 + 40 * k, 250, 24, seed=k) for k in range(6)]
    expected = [_mmd_and_grads(x, y) for x, y in problems]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda p: _mmd_and_grads(*p), problems * 2))
    for k, r in enumerate(got):
        assert _bitwise_equal(r, expected[k % len(problems)])


_OOM_CHILD = """
import resource, torch, dapkernels as dk
x = torch.randn(60000, 512)          # 117 MiB of features; the sweep's centred copy needs as much
y = torch.randn(60000, 512)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 64 * 2**20, hard))
try:
    dk.{call}
except MemoryError:
    print("MemoryError")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or "DAPKERNELS_SANITIZED" in os.environ,
                    reason="needs /proc and RLIMIT_AS (AddressSanitizer reserves terabytes)")
@pytest.mark.parametrize("call", ["mmd(x, y, backend='cpu')", "coral(x, y, backend='cpu')"])
def test_allocation_failure_is_a_memory_error(call):
    """Scratch is allocated before any parallel region: a failed allocation is a Python
    MemoryError in the caller, not an abort of the process."""
    proc = subprocess.run([sys.executable, "-c", _OOM_CHILD.format(call=call)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "MemoryError"


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(exponent=st.integers(-37, 37), seed=st.integers(0, 2**16), estimator=st.sampled_from(
    ["biased", "unbiased"]))
def test_float32_at_any_scale_matches_the_float64_reference(exponent, seed, estimator):
    """Relative bandwidths make the loss scale-free: features × 10^k give the answer of the
    unscaled points, and the gradient scales as 10^-k."""
    x, y = _inputs(23, 31, 9, seed=seed, dtype=torch.float64)
    scale = 10.0**exponent
    xs, ys = (x * scale).float(), (y * scale).float()
    value, gx, gy = _mmd_and_grads(xs, ys, estimator)
    x64, y64 = xs.double().requires_grad_(), ys.double()
    expected = oracle_jmmd([x64], [y64], [(ALPHAS, None)], estimator)
    (expected_gx,) = torch.autograd.grad(expected, x64)
    terms = oracle_jmmd([x64], [y64], [(ALPHAS, None)], "biased").abs() + 1.0
    assert abs(value.double() - expected).item() <= 1e-5 * terms.item()
    err = (gx.double() - expected_gx).norm() / expected_gx.norm()
    assert err.item() <= 1e-4


def test_tiny_features_whose_gradient_overflows_float32_raise():
    """At 1e-40 (subnormal) the exact gradient is ~1e40, beyond float32: a ValueError, never Inf."""
    x, y = _inputs(20, 20, 5, dtype=torch.float64)
    xs, ys = (x * 1e-40).float(), (y * 1e-40).float()
    value = dk.mmd(xs, ys, backend="cpu")  # the value alone is fine
    expected = oracle_jmmd([xs.double()], [ys.double()], [(ALPHAS, None)], "unbiased")
    assert abs(value.item() - expected.item()) < 1e-4
    with pytest.raises(ValueError, match="gradient overflows float32"):
        dk.mmd(xs.requires_grad_(), ys, backend="cpu")


def test_fixed_bandwidth_out_of_float32_range_raises():
    x, y = _inputs(20, 20, 5)
    with pytest.raises(ValueError, match="out of float32 range"):
        dk.mmd(x, y, kernels=dk.GaussianKernels(sigmas=[1e-25]), backend="cpu")


@pytest.mark.parametrize("exponent", [-22, -12, 12, 18])
def test_fixed_bandwidths_at_extreme_scales(exponent):
    """Fixed σ scaled with the data: the unscaled problem's value, its gradient / 10^k."""
    x, y = _inputs(25, 18, 6, seed=2, dtype=torch.float64)
    scale = 10.0**exponent
    bank = dk.GaussianKernels(sigmas=[0.7 * scale, 2.0 * scale])
    xs = (x * scale).float().requires_grad_()
    value = dk.mmd(xs, (y * scale).float(), kernels=bank, backend="cpu")
    (gx,) = torch.autograd.grad(value, xs)
    x64 = (xs.detach().double() / scale).requires_grad_()
    expected = oracle_jmmd([x64], [(y * scale).float().double() / scale], [(None, [0.7, 2.0])],
                           "unbiased")
    (expected_gx,) = torch.autograd.grad(expected, x64)
    assert abs(value.item() - expected.item()) <= 1e-5 * (1.0 + abs(expected.item()))
    err = (gx.double() * scale - expected_gx).norm() / expected_gx.norm()
    assert err.item() <= 1e-4


def test_unknown_isa_cap_is_refused_at_import():
    env = {**os.environ, "DAPKERNELS_ISA": "sse9"}
    proc = subprocess.run([sys.executable, "-c", "import dapkernels._C"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "DAPKERNELS_ISA must be one of baseline, avx2, avx512" in proc.stderr
