"""The C++ CPU core (``backends/cpu.py`` + ``dapkernels._C``) against the float64 reference.

Error measures (the bars of issue 2):
* loss: |L_cpu − L_ref| / (|w_ss S_ss| + |2 w_st S_st| + |w_tt S_tt|).  MMD is a difference of
  terms that nearly cancel when the domains are close, so its own value can be ~0 while every
  term is O(1): relative error against the value would measure the cancellation, not the
  kernel.  The sum of the terms' magnitudes is the scale at which the float32 sums are formed.
* gradient: ‖g_cpu − g_ref‖ / ‖g_ref‖ per layer.

Tile shapes are varied (``SMALL_TILE`` / ``MID_TILE`` / ``LARGE_TILE``) so that small inputs
also run through many tiles, partial tiles and several threads; one test runs N = 3000 at the
default tiles.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dapkernels as dk
from dapkernels import _C
from dapkernels.backends import cpu
from dapkernels.backends import reference as ref

ALPHAS = [2.0**i for i in range(-3, 2)]
SIGMAS2 = [1.0, 4.0]  # σ = 1, 2
LOSS_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
GRAD_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def _weights(estimator: str, n: int, m: int) -> tuple:
    if estimator == "biased":
        return (1.0 / n**2, -1.0 / (n * m), 1.0 / m**2)
    return (1.0 / (n * (n - 1)), -1.0 / (n * m), 1.0 / (m * (m - 1)))


def _split(zs, n):
    """Per-layer (source, target) blocks of concatenated (N, d_l) layers."""
    return [z[:n] for z in zs], [z[n:] for z in zs]


def _errors(zs, n, factors, relative, weights):
    sums, grads = cpu.mmd_sweep(*_split(zs, n), factors, relative, weights, True)
    sums0, grads0 = ref.mmd_sweep(*_split(zs, n), factors, relative, weights, True)
    assert isinstance(sums, tuple) and len(sums) == 3
    sums = torch.tensor(sums, dtype=torch.float64)
    coef = torch.tensor([weights[0], 2.0 * weights[1], weights[2]], dtype=torch.float64)
    scale = float((coef * sums0).abs().sum())
    loss_err = abs(float((coef * (sums - sums0)).sum())) / scale
    grad_errs = []
    for g, g0, z in zip(grads, grads0, zs):
        assert g.shape == z.shape and g.dtype == z.dtype
        assert torch.isfinite(g).all()
        norm = float(g0.double().norm())
        diff = float((g.double() - g0.double()).norm())
        grad_errs.append(diff / norm if norm > 0 else diff)
    return loss_err, grad_errs


def _check(zs, n, factors, relative, estimator="unbiased"):
    N = zs[0].shape[0]
    loss_err, grad_errs = _errors(zs, n, factors, relative, _weights(estimator, n, N - n))
    dtype = zs[0].dtype
    assert loss_err <= LOSS_TOL[dtype], loss_err
    assert max(grad_errs) <= GRAD_TOL[dtype], grad_errs


def _set_tile(monkeypatch, tile: int) -> None:
    monkeypatch.setattr(cpu, "SMALL_TILE", tile)
    monkeypatch.setattr(cpu, "LARGE_TILE", tile)
    monkeypatch.setattr(cpu, "MID_TILE", tile)


@pytest.fixture
def tiled(monkeypatch):
    """Smallest tiles: a 150-row batch becomes 15 tiles (I ≤ J), the last ones partial
    (the two-phase small-batch sweep)."""
    _set_tile(monkeypatch, 32)


@pytest.fixture
def direct(monkeypatch):
    """Smallest tiles and the one-pass sweep at every size (no two-phase small-batch path)."""
    _set_tile(monkeypatch, 32)
    monkeypatch.setattr(cpu, "SMALL_ROWS", 0)


@st.composite
def problems(draw):
    big = draw(st.integers(0, 7)) == 0  # a few large batches, with small d to keep it cheap
    N = draw(st.integers(1025, 4096)) if big else draw(st.integers(4, 1024))
    n = draw(st.integers(2, N - 2).filter(lambda v: 2 * v != N))
    layers = 1 if big else draw(st.integers(1, 2))
    dmax = 64 if big else max(1, min(2048, (1 << 18) // N))
    dims = [draw(st.integers(1, dmax)) for _ in range(layers)]
    banks = [draw(st.sampled_from(["alphas", "sigmas", "odd"])) for _ in range(layers)]
    return dict(
        N=N, n=n, dims=dims, banks=banks,
        estimator=draw(st.sampled_from(["biased", "unbiased"])),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        tile=draw(st.sampled_from([0, 32, 64, 128])),  # 0: the default choice
        small_rows=draw(st.sampled_from([cpu.SMALL_ROWS, 0, 1024])),  # path by size / forced
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _bank(kind: str, d: int) -> tuple:
    if kind == "alphas":
        return ALPHAS, True
    if kind == "sigmas":  # fixed bandwidths scaled to the data's typical distance 2d
        return [s2 * d for s2 in SIGMAS2], False
    return [0.3, 1.7, 1.0], True  # not a ratio-2 series: one exp per kernel


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(problems())
def test_sweep_matches_reference(monkeypatch, p):
    if p["tile"]:
        _set_tile(monkeypatch, p["tile"])
    monkeypatch.setattr(cpu, "SMALL_ROWS", p["small_rows"])
    gen = torch.Generator().manual_seed(p["seed"])
    N, n = p["N"], p["n"]
    zs = []
    for d in p["dims"]:
        z = torch.randn(N, d, generator=gen, dtype=torch.float64)
        z[n:] += 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)  # domain shift
        zs.append(z.to(p["dtype"]))
    factors, relative = zip(*[_bank(b, d) for b, d in zip(p["banks"], p["dims"])])
    _check(zs, n, list(factors), list(relative), p["estimator"])


@pytest.mark.parametrize("path", ["default", "tiled", "direct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "case", ["offset", "duplicates", "tiny", "huge", "far_fixed"],
)
def test_adversarial_inputs(request, path, dtype, case):
    if path != "default":
        request.getfixturevalue(path)
    gen = torch.Generator().manual_seed(1)
    N, n, d = 150, 70, 40
    z = torch.randn(N, d, generator=gen, dtype=torch.float64)
    factors, relative = ALPHAS, True
    if case == "offset":  # large common offset: the uncentred distance formula would cancel
        z = z + 1e3
    elif case == "duplicates":
        z[1::3] = z[0::3][: z[1::3].shape[0]]
    elif case == "tiny":
        z = z * 1e-3
    elif case == "huge":
        z = z * 1e3
    elif case == "far_fixed":  # fixed bandwidths far below the distances: kernels underflow
        factors, relative = [0.05, 0.2], False
    _check([z.to(dtype)], n, [factors], [relative])


@pytest.mark.parametrize("path", ["default", "tiled", "direct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_rows_are_finite(request, path, dtype):
    if path != "default":
        request.getfixturevalue(path)
    z = torch.full((100, 7), 3.25, dtype=dtype)
    n = 40
    w = _weights("unbiased", n, 60)
    sums, grads = cpu.mmd_sweep([z[:n]], [z[n:]], [ALPHAS], [True], w, True)
    q = len(ALPHAS)  # every distance is 0: every kernel value is exactly 1
    assert list(sums) == pytest.approx([q * n * n, q * n * 60, q * 60 * 60], rel=1e-6)
    assert torch.equal(grads[0], torch.zeros_like(z))
    value = dk.mmd(z[:n], z[n:], backend="cpu")
    assert torch.isfinite(value) and abs(float(value)) < 1e-4


def test_large_n_at_default_tiles():
    N, n, d = 3000, 1400, 24
    assert N > 20 * cpu.LARGE_TILE
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(N, d, generator=gen)
    z[n:] += 0.3
    _check([z], n, [ALPHAS], [True])
    _check([z.double(), (2 * z[:, :5]).double()], n, [ALPHAS, [1.0, 9.0]], [True, False],
           "biased")


@pytest.mark.parametrize("path", ["default", "tiled", "direct"])
def test_no_grad_and_non_contiguous(request, path):
    if path != "default":
        request.getfixturevalue(path)
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(30, 200, generator=gen, dtype=torch.float64)
    z = base.t()[:, ::2]  # (200, 15), column stride 400: copied to contiguous rows
    zr = torch.randn(200, 30, generator=gen, dtype=torch.float64)[:, :3]  # row stride 30, in place
    w = _weights("biased", 90, 110)
    assert z[:90].stride(1) != 1 and zr[90:].stride(0) == 30
    sums, grads = cpu.mmd_sweep(*_split([z, zr], 90), [ALPHAS, ALPHAS], [True, True], w, False)
    assert grads == []
    sums0, _ = ref.mmd_sweep(*_split([z, zr], 90), [ALPHAS, ALPHAS], [True, True], w, False)
    torch.testing.assert_close(torch.tensor(sums, dtype=torch.float64), sums0, rtol=1e-12,
                               atol=0)


@pytest.mark.parametrize("path", ["default", "tiled", "direct"])
def test_gradcheck_mmd_and_jmmd(request, path):
    if path != "default":
        request.getfixturevalue(path)
    gen = torch.Generator().manual_seed(5)
    s = torch.randn(41, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    t = (torch.randn(37, 4, generator=gen, dtype=torch.float64) + 0.4).requires_grad_()
    s2 = torch.randn(41, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    t2 = torch.randn(37, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    fixed = dk.GaussianKernels(sigmas=[1.0, 2.0, 3.0])
    # Relative bandwidths are detached, so gradcheck needs fixed ones to compare finite
    # differences; the relative bank is checked against the reference above.
    for est in ("unbiased", "biased"):
        assert torch.autograd.gradcheck(
            lambda a, b, est=est: dk.mmd(a, b, fixed, est, backend="cpu"), (s, t))
    assert torch.autograd.gradcheck(
        lambda a, b, c, e: dk.jmmd([a, c], [b, e], [fixed, dk.GaussianKernels(sigmas=[1.5])],
                                   backend="cpu"), (s, t, s2, t2))


def test_functional_value_matches_reference():
    gen = torch.Generator().manual_seed(6)
    s = torch.randn(33, 16, generator=gen)
    t = torch.randn(31, 16, generator=gen) + 0.2
    for est in ("unbiased", "biased"):
        v = dk.mmd(s, t, estimator=est, backend="cpu")
        v0 = dk.mmd(s.double(), t.double(), estimator=est, backend="reference")
        assert v.dtype == torch.float32
        assert abs(float(v) - float(v0)) <= 1e-5


@pytest.mark.parametrize("path", ["default", "tiled", "direct"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_raises(request, path, bad):
    if path != "default":
        request.getfixturevalue(path)
    z = torch.randn(80, 5)
    z[57, 3] = bad
    with pytest.raises(ValueError, match=r"non-finite.*target row 17"):
        cpu.mmd_sweep([z[:40]], [z[40:]], [ALPHAS], [True], _weights("biased", 40, 40), True)
    z[57, 3] = 0.0
    z[2, 0] = bad
    with pytest.raises(ValueError, match=r"non-finite.*source row 2"):
        dk.mmd(z[:40], z[40:], backend="cpu")


def _raw(**over):
    """Arguments of _C.mmd_sweep for valid 5 × 4 source and target float32 blocks, with
    overrides."""
    z = torch.randn(10, 4)
    args = dict(source_ptrs=[z.data_ptr()], target_ptrs=[z[5:].data_ptr()], n=5, m=5, cols=[4],
                source_row_strides=[4], source_col_strides=[1], target_row_strides=[4],
                target_col_strides=[1], dtype="float32", factors=[ALPHAS], relative=[True],
                weights=[1.0, -1.0, 1.0], grad_ptrs=[], grad_row_strides=[], tile=32)
    args.update(over)
    return z, args


@pytest.mark.parametrize(
    "over, exc",
    [
        (dict(n=-1), ValueError),
        (dict(m=-1), ValueError),
        (dict(n=0, m=0), ValueError),
        (dict(cols=[-3]), ValueError),
        (dict(cols=[0]), ValueError),
        (dict(source_col_strides=[2]), ValueError),
        (dict(target_col_strides=[2]), ValueError),
        (dict(source_row_strides=[3]), ValueError),
        (dict(target_row_strides=[3]), ValueError),
        (dict(source_ptrs=[0]), ValueError),
        (dict(target_ptrs=[0]), ValueError),
        (dict(source_ptrs=[1]), ValueError),  # misaligned
        (dict(target_ptrs=[2]), ValueError),  # misaligned
        (dict(n=2**62), ValueError),  # size overflow
        (dict(dtype="float16"), TypeError),
        (dict(weights=[1.0, 2.0]), ValueError),
        (dict(weights=[1.0, float("nan"), 1.0]), ValueError),
        (dict(factors=[[]]), ValueError),
        (dict(factors=[[-1.0]]), ValueError),
        (dict(relative=[True, False]), ValueError),
        (dict(target_ptrs=[0, 0]), ValueError),
        (dict(grad_ptrs=[0], grad_row_strides=[4]), ValueError),
        (dict(grad_ptrs=[16], grad_row_strides=[2]), ValueError),
    ],
)
def test_raw_entry_point_validates_before_touching_memory(over, exc):
    _, args = _raw(**over)
    with pytest.raises(exc):
        _C.mmd_sweep(**args)


def test_raw_layer_limits_and_tile_size():
    z, args = _raw()
    nine = dict(source_ptrs=[z.data_ptr()] * 9, target_ptrs=[z.data_ptr()] * 9, cols=[4] * 9,
                source_row_strides=[4] * 9, source_col_strides=[1] * 9,
                target_row_strides=[4] * 9, target_col_strides=[1] * 9, factors=[ALPHAS] * 9,
                relative=[True] * 9)
    with pytest.raises(ValueError, match="layers"):
        _C.mmd_sweep(**{**args, **nine})
    for tile in (0, 16, 48, 2048):
        with pytest.raises(ValueError, match="tile"):
            _C.mmd_sweep(**{**args, "tile": tile})


_FALLBACK_CHECK = """
import torch
from dapkernels import _C
from dapkernels.backends import cpu, reference as ref
assert _C.isa == "{isa}", _C.isa
gen = torch.Generator().manual_seed(7)
for dtype in (torch.float32, torch.float64):
    for N, n, d in ((50, 20, 37), (300, 170, 70)):
        z = torch.randn(N, d, generator=gen, dtype=dtype)
        w = (1.0 / n**2, -1.0 / (n * (N - n)), 1.0 / (N - n) ** 2)
        s, g = cpu.mmd_sweep([z[:n]], [z[n:]], [[0.125, 0.5, 1.0, 2.0]], [True], w, True)
        s0, g0 = ref.mmd_sweep([z[:n]], [z[n:]], [[0.125, 0.5, 1.0, 2.0]], [True], w, True)
        s = torch.tensor(s, dtype=torch.float64)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert ((s - s0).abs() / s0.abs()).max() < tol
        assert (g[0].double() - g0[0].double()).norm() / g0[0].double().norm() < 10 * tol
"""


_ISAS = ("baseline", "avx2", "avx512")


# A copy can only run where the CPU supports it: every ISA up to the one chosen here.
@pytest.mark.parametrize("isa", _ISAS[: _ISAS.index(_C.isa) + 1])
def test_instruction_set_copies(isa):
    """Every instruction-set copy this CPU can run computes the same sweep."""
    env = {**os.environ, "DAPKERNELS_ISA": isa}
    subprocess.run([sys.executable, "-c", _FALLBACK_CHECK.format(isa=isa)], env=env, check=True)
