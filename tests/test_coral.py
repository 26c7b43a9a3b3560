"""Deep CORAL: reference backend, C++ kernel (both paths), public API, log variant, streaming
covariance, custom op and compile.

Oracle: the loss written from its definition in float64 (``torch.cov``-style centring,
autograd for the gradient), independent of the package's code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dapkernels as dk
from dapkernels.backends import cpu_coral, reference
from dapkernels.baselines import naive_coral


def oracle(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """‖C_s − C_t‖_F² / (4d²) in float64 from the definition, differentiable."""
    def cov(x):
        c = x - x.mean(dim=0, keepdim=True)
        return c.T @ c / (x.shape[0] - 1)

    d = xs.shape[1]
    return (cov(xs.double()) - cov(xt.double())).square().sum() / (4 * d * d)


def oracle_with_grad(xs, xt):
    a = xs.detach().double().requires_grad_()
    b = xt.detach().double().requires_grad_()
    v = oracle(a, b)
    v.backward()
    return v.detach(), a.grad, b.grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def term_scales(xs: torch.Tensor, xt: torch.Tensor) -> tuple:
    """Scales against which float32 errors are judged (the README's accuracy bar): for the value
    ``(‖C_s‖² + ‖C_t‖²) / (4d²)``, for the gradients ``‖X̃‖ (‖C_s‖ + ‖C_t‖) / (d² (n − 1))``.
    ``C_s − C_t`` can cancel (equal spreads: the value is tiny while its terms are O(1)), and
    rounding the centred inputs to float32 alone then costs ~1e-7 of the terms, far more than
    1e-5 of the value itself."""
    def centred(x):
        x = x.double()
        return x - x.mean(dim=0, keepdim=True)

    zs, zt = centred(xs), centred(xt)
    cs, ct = zs.T @ zs / (zs.shape[0] - 1), zt.T @ zt / (zt.shape[0] - 1)
    d = xs.shape[1]
    norms = float(cs.norm()) + float(ct.norm())
    value = (float(cs.norm()) ** 2 + float(ct.norm()) ** 2) / (4 * d * d)
    gs = float(zs.norm()) * norms / (d * d * (zs.shape[0] - 1))
    gt = float(zt.norm()) * norms / (d * d * (zt.shape[0] - 1))
    return value, gs, gt


def draw(ns, nt, d, dtype, offset, seed):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(ns, d, generator=g, dtype=torch.float64) + offset
    # target: other scale and a correlated component, so C_s and C_t differ clearly
    xt = 1.5 * torch.randn(nt, d, generator=g, dtype=torch.float64) + offset
    xt = xt + torch.randn(nt, 1, generator=g, dtype=torch.float64)
    return xs.to(dtype), xt.to(dtype)


# ---- reference backend ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["cov", "gram"])
@pytest.mark.parametrize("shape", [(2, 2, 1), (5, 9, 3), (17, 6, 40)])
def test_reference_matches_oracle(path, shape):
    xs, xt = draw(*shape, torch.float64, 3.0, 0)
    v0, gs0, gt0 = oracle_with_grad(xs, xt)
    v, (gs, gt) = reference.coral_sweep(xs, xt, True, path)
    assert abs(float(v) - float(v0)) <= 1e-12 * float(v0)
    assert rel(gs, gs0) < 1e-10 and rel(gt, gt0) < 1e-10


# ---- C++ kernel against the oracle -----------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ns=st.integers(2, 40),
    nt=st.integers(2, 40),
    d=st.one_of(st.integers(1, 64), st.integers(65, 4096)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    offset=st.sampled_from([0.0, 1e4, -3e3]),
    path=st.sampled_from(["auto", "gram", "cov"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_matches_oracle(ns, nt, d, dtype, offset, path, seed):
    if path == "cov" and d > 512:
        path = "gram"  # the d×d path at d = 4096 costs seconds; "auto" covers it for N ≥ d
    xs, xt = draw(ns, nt, d, dtype, offset, seed)
    v0, gs0, gt0 = oracle_with_grad(xs, xt)
    v, (gs, gt) = cpu_coral.coral_sweep(xs, xt, True, path)
    assert gs.dtype == dtype and gt.dtype == dtype
    tol_v, tol_g = (1e-5, 1e-4) if dtype == torch.float32 else (1e-10, 1e-9)
    scale_v, scale_s, scale_t = term_scales(xs, xt)
    assert abs(float(v) - float(v0)) <= tol_v * scale_v
    assert float((gs.double() - gs0).norm()) <= tol_g * scale_s
    assert float((gt.double() - gt0).norm()) <= tol_g * scale_t


def test_equal_spreads_are_judged_against_the_terms():
    """The hypothesis example that showed why: C_s ≈ C_t (0.7966 vs 0.7972, d = 1), where the
    value is 1e-7 of its terms; both paths are within the bar relative to the terms (and the
    Gram path is 5 % off relative to the value itself, from float32 input rounding alone)."""
    xs, xt = draw(23, 5, 1, torch.float32, 0.0, 23)
    v0, gs0, gt0 = oracle_with_grad(xs, xt)
    scale_v, scale_s, scale_t = term_scales(xs, xt)
    assert float(v0) < 1e-6 * scale_v
    for path in ("gram", "cov"):
        v, (gs, gt) = cpu_coral.coral_sweep(xs, xt, True, path)
        assert abs(float(v) - float(v0)) <= 1e-5 * scale_v
        assert float((gs.double() - gs0).norm()) <= 1e-4 * scale_s
        assert float((gt.double() - gt0).norm()) <= 1e-4 * scale_t


@pytest.mark.parametrize("path", ["gram", "cov"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_offset(path, dtype):
    """Features sitting at 1e4 (a common offset 10^4 × their spread)."""
    xs, xt = draw(31, 45, 200, dtype, 1e4, 7)
    v0, gs0, gt0 = oracle_with_grad(xs, xt)
    v, (gs, gt) = cpu_coral.coral_sweep(xs, xt, True, path)
    assert abs(float(v) - float(v0)) <= 1e-5 * float(v0)
    assert rel(gs, gs0) <= 1e-4 and rel(gt, gt0) <= 1e-4


def test_paths_agree_and_strides():
    xs, xt = draw(20, 30, 70, torch.float64, 0.0, 3)
    wide = torch.zeros(20, 140, dtype=torch.float64)
    wide[:, ::2] = xs  # column stride 2: copied once by the wrapper
    row_padded = torch.zeros(30, 90, dtype=torch.float64)[:, :70]  # row stride 90
    row_padded.copy_(xt)
    a, ga = cpu_coral.coral_sweep(xs, xt, True, "gram")
    b, gb = cpu_coral.coral_sweep(wide[:, ::2], row_padded, True, "cov")
    assert abs(float(a) - float(b)) <= 1e-12 * float(a)
    assert rel(ga[0], gb[0]) < 1e-10 and rel(ga[1], gb[1]) < 1e-10


def test_no_grad_returns_no_grads():
    xs, xt = draw(4, 5, 3, torch.float32, 0.0, 1)
    v, grads = cpu_coral.coral_sweep(xs, xt, False)
    assert grads == [] and isinstance(v, float)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("shape", [(4, 6, 3), (3, 5, 11)])  # cov path, gram path
def test_gradcheck(backend, shape):
    xs, xt = draw(*shape, torch.float64, 0.5, 2)
    xs.requires_grad_()
    xt.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: dk.coral(a, b, backend=backend), (xs, xt))


# ---- public API --------------------------------------------------------------------------


def test_api_flattens_and_matches_naive():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(8, 3, 4, 4, generator=g, requires_grad=True)
    xt = torch.randn(6, 3, 4, 4, generator=g, requires_grad=True)
    ours = dk.CORALLoss()(xs, xt)
    ours.backward()
    gs = xs.grad.clone()
    xs.grad = None
    ref = naive_coral(xs, xt)
    ref.backward()
    assert ours.shape == () and ours.dtype == torch.float32
    assert torch.allclose(ours, ref, rtol=1e-5)
    assert rel(gs, xs.grad) < 1e-4
    assert torch.allclose(naive_coral(xs, xt, "mean"), 4 * ref, rtol=1e-5)


def test_backends_agree_and_one_sided_grad():
    xs, xt = draw(9, 12, 30, torch.float32, 0.0, 4)
    xs.requires_grad_()
    a = dk.coral(xs, xt, backend="cpu")
    b = dk.coral(xs, xt, backend="reference")
    assert torch.allclose(a, b, rtol=1e-5)
    (ga,) = torch.autograd.grad(a, xs)
    (gb,) = torch.autograd.grad(b, xs)
    assert rel(ga, gb) < 1e-4


def test_identical_batches_give_zero():
    xs, _ = draw(10, 2, 5, torch.float64, 0.0, 5)
    assert float(dk.coral(xs, xs.clone())) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((torch.randn(4, 3), torch.randn(4, 5)), ValueError, "f_s has d=3, f_t has d=5"),
        ((torch.randn(1, 3), torch.randn(4, 3)), ValueError, "f_s batch 1"),
        ((torch.randn(4, 3), torch.randn(1, 3)), ValueError, "f_t batch 1"),
        ((torch.randn(4), torch.randn(4, 3)), ValueError, "f_s must have shape"),
        ((torch.randn(4, 3), torch.randn(4, 3).double()), TypeError, "dtype"),
        ((torch.randn(4, 3), torch.ones(4, 3, dtype=torch.int64)), TypeError, "f_t has dtype"),
        ((torch.randn(4, 3), [[1.0] * 3] * 4), TypeError, "f_t must be a torch.Tensor"),
        ((torch.randn(4, 3), torch.randn(4, 3, device="meta")), ValueError, "f_t is on meta"),
        ((torch.randn(0, 3), torch.randn(4, 3)), ValueError, "f_s is an empty batch"),
    ],
)
def test_bad_inputs(args, exc, match):
    with pytest.raises(exc, match=match):
        dk.coral(*args)


def test_bad_backend_and_eps():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="backend"):
        dk.coral(x, x, backend="nope")
    with pytest.raises(ValueError, match="eps"):
        dk.coral(x, x, log=True, eps=0.0)


def test_custom_op_opcheck():
    from dapkernels.ops.coral import coral_fused_op

    xs, xt = draw(5, 7, 4, torch.float64, 0.0, 6)
    xs.requires_grad_()
    xt.requires_grad_()
    torch.library.opcheck(coral_fused_op, (xs, xt, True, "cpu"))


@pytest.mark.parametrize("shape", [(16, 16, 300), (40, 30, 12)])
def test_compile_fullgraph_matches_eager(shape):
    xs, xt = draw(*shape, torch.float32, 100.0, 8)
    xs.requires_grad_()
    xt.requires_grad_()
    eager = dk.coral(xs, xt)
    ge = torch.autograd.grad(eager, (xs, xt))
    fn = torch.compile(lambda a, b: dk.coral(a, b) * 2.0, fullgraph=True, backend="aot_eager")
    comp = fn(xs, xt)
    gc = torch.autograd.grad(comp, (xs, xt))
    assert torch.allclose(comp, 2.0 * eager, rtol=1e-6)
    assert rel(gc[0], 2.0 * ge[0]) < 1e-6 and rel(gc[1], 2.0 * ge[1]) < 1e-6


# ---- log-Euclidean variant -------------------------------------------------------------------


def log_oracle(xs, xt, eps):
    def logm(x):
        c = x - x.mean(dim=0, keepdim=True)
        lam, vec = torch.linalg.eigh(c.T @ c / (x.shape[0] - 1))
        return vec @ torch.diag(lam.clamp_min(eps).log()) @ vec.T

    d = xs.shape[1]
    return (logm(xs.double()) - logm(xt.double())).square().sum() / (4 * d * d)


def test_log_coral_value_and_gradcheck():
    xs, xt = draw(12, 10, 4, torch.float64, 2.0, 9)  # n > d: distinct eigenvalues above eps
    assert torch.allclose(dk.coral(xs, xt, log=True), log_oracle(xs, xt, 1e-5), rtol=1e-10)
    xs.requires_grad_()
    xt.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: dk.coral(a, b, log=True), (xs, xt))


def test_log_coral_rank_deficient_has_finite_grad():
    xs, xt = draw(4, 5, 12, torch.float32, 0.0, 10)  # n < d: repeated floored eigenvalues
    xs.requires_grad_()
    v = dk.CORALLoss(log=True, eps=1e-4)(xs, xt)
    (g,) = torch.autograd.grad(v, xs)
    assert v.dtype == torch.float32 and torch.isfinite(v) and torch.isfinite(g).all()
    assert torch.allclose(v.double(), log_oracle(xs, xt, 1e-4), rtol=1e-5)


# ---- RunningCovariance ------------------------------------------------------------------------


def test_running_covariance_matches_numpy_on_chunks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 7)) * [1, 2, 3, 4, 5, 6, 7] + 1e6  # large offset
    acc = dk.RunningCovariance()
    for chunk in np.array_split(x, [1, 3, 100, 101, 640]):
        acc.update(torch.from_numpy(chunk))
    assert acc.count == 1000
    np.testing.assert_allclose(acc.mean.numpy(), x.mean(axis=0), rtol=1e-13)
    # at offset 1e6 float64 data itself carries ~1e-10 absolute error per entry
    ref = np.cov(x, rowvar=False)
    np.testing.assert_allclose(acc.covariance().numpy(), ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        acc.covariance(ddof=0).numpy(), np.cov(x, rowvar=False, ddof=0), rtol=1e-9, atol=1e-9
    )


def test_running_covariance_merge():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    a = dk.RunningCovariance().update(torch.from_numpy(x[:50]))
    b = dk.RunningCovariance().update(torch.from_numpy(x[50:120])).update(
        torch.from_numpy(x[120:])
    )
    empty = dk.RunningCovariance()
    merged = dk.RunningCovariance().merge(b).merge(empty).merge(a)
    np.testing.assert_allclose(merged.covariance().numpy(), np.cov(x, rowvar=False), rtol=1e-12)
    assert b.count == 250  # merge leaves the other accumulator alone


def test_running_covariance_errors():
    acc = dk.RunningCovariance()
    with pytest.raises(ValueError, match="no data"):
        acc.covariance()
    acc.update(torch.randn(1, 3))
    with pytest.raises(ValueError, match="ddof=1"):
        acc.covariance()
    with pytest.raises(ValueError, match="d=3"):
        acc.update(torch.randn(2, 4))
    with pytest.raises(TypeError, match="batch"):
        acc.update(np.zeros((2, 3)))


def test_bench_factories_run_and_agree():
    from dapkernels.bench import coral as bench_coral
    from dapkernels.bench import grl as bench_grl

    steps = bench_coral.make_case(torch.device("cpu"), 6, 10, list(bench_coral.IMPLS))
    assert list(steps) == list(bench_coral.IMPLS)
    for step in steps.values():
        step()
    xs, xt = draw(6, 9, 10, torch.float64, 0.0, 11)
    assert torch.allclose(bench_coral.gram_torch_coral(xs, xt), oracle(xs, xt), rtol=1e-12)
    for step in bench_grl.make_case(torch.device("cpu"), 4, 8, 8).values():
        step()
