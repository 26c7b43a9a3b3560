"""Triton CORAL Gram-path kernels against the float64 reference (``path="cov"``).

Like ``test_triton_interpret.py``: without a GPU the kernels run in Triton's interpreter on CPU
tensors (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``); with a GPU the same tests run the
compiled kernels on CUDA tensors.  Bars: value ≤ 1e-5 relative, gradients
≤ 1e-4 relative (norm), including features offset by 1e4; float16 / bfloat16 ≤ 1e-2.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
pytest.importorskip("triton")

import dapkernels as dk  # noqa: E402
from dapkernels.backends import get, reference  # noqa: E402

from .launches import record_launches  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
TRITON = get("triton")
TCORAL = importlib.import_module("dapkernels.backends.triton.coral")


def _draw(ns: int, nt: int, d: int, offset: float, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(ns, d, generator=g, dtype=torch.float64) + offset
    xt = 1.5 * torch.randn(nt, d, generator=g, dtype=torch.float64) + offset
    return xs, xt + torch.randn(nt, 1, generator=g, dtype=torch.float64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu().double() - b).norm() / b.norm())


@pytest.mark.parametrize(
    "ns,nt,d,offset",
    # one column range and many, a full 64-row tile, d = 1, odd sizes, a far-away mean
    [(2, 2, 1, 0.0), (5, 9, 40, 3.0), (17, 6, 300, 1e4), (30, 34, 70, 1e4), (31, 33, 1000, 0.5)],
)
@pytest.mark.parametrize("need_grad", [True, False])
@pytest.mark.parametrize("route", ["one program", "split columns"])
def test_coral_sweep_matches_reference(monkeypatch, ns, nt, d, offset, need_grad, route):
    if route == "split columns":  # the path of d > CORAL_SMALL_MAX_D, on the same shapes
        monkeypatch.setattr(TCORAL, "CORAL_SMALL_MAX_D", 0)
    xs, xt = _draw(ns, nt, d, offset, ns + d)
    xs, xt = xs.float(), xt.float()
    value, grads = TRITON.coral_sweep(xs.to(DEVICE), xt.to(DEVICE), need_grad, "gram")
    ref, ref_grads = reference.coral_sweep(xs.double(), xt.double(), need_grad, "cov")
    assert value.dtype == torch.float64 and value.device.type == DEVICE
    assert abs(float(value) - float(ref)) <= 1e-5 * float(ref)
    assert len(grads) == (2 if need_grad else 0)
    for g, rg, x in zip(grads, ref_grads, (xs, xt)):
        assert g.shape == x.shape and g.dtype == torch.float32 and g.device.type == DEVICE
        assert _rel(g, rg) <= 1e-4


# The triton 3.9 interpreter cannot feed bfloat16 tensors to tl.dot: bfloat16 runs on a GPU only.
@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.float64] + ([torch.bfloat16] if ON_GPU else [])
)
@pytest.mark.parametrize("route", ["one program", "split columns"])
def test_other_dtypes(monkeypatch, dtype, route):
    if route == "split columns":
        monkeypatch.setattr(TCORAL, "CORAL_SMALL_MAX_D", 0)
    xs, xt = _draw(12, 20, 130, 0.2, 7)
    xs, xt = xs.to(dtype), xt.to(dtype)
    value, (gs, gt) = TRITON.coral_sweep(xs.to(DEVICE), xt.to(DEVICE), True, "gram")
    ref, (rs, rt) = reference.coral_sweep(xs.double(), xt.double(), True, "cov")
    tol = 1e-5 if dtype == torch.float64 else 1e-2
    assert gs.dtype == dtype and gt.dtype == dtype
    assert abs(float(value) - float(ref)) <= tol * float(ref)
    assert _rel(gs, rs) <= 10 * tol and _rel(gt, rt) <= 10 * tol


@pytest.mark.parametrize("path", ["gram", "cov"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_beyond_the_kernels_use_the_torch_formula_on_the_device(path, dtype):
    """More than 64 rows, or the d × d path: torch ops on the same device, float32 (float64 for
    float64 inputs), exact to the same bars, also for features far from the origin."""
    xs, xt = _draw(40, 30, 200, 1e4, 3)
    xs, xt = xs.to(dtype), xt.to(dtype)
    value, grads = TRITON.coral_sweep(xs.to(DEVICE), xt.to(DEVICE), True, path)
    ref, ref_grads = reference.coral_sweep(xs.double(), xt.double(), True, "cov")
    assert value.dtype == torch.float64 and value.device.type == DEVICE
    assert abs(float(value) - float(ref)) <= 1e-5 * float(ref)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype and g.device.type == DEVICE and _rel(g, r) <= 1e-4
    no_grad_value, no_grads = TRITON.coral_sweep(xs.to(DEVICE), xt.to(DEVICE), False, path)
    assert no_grads == [] and float(no_grad_value) == pytest.approx(float(value), rel=1e-6)


def test_unknown_path_is_an_error():
    xs, xt = _draw(4, 5, 8, 0.0, 1)
    with pytest.raises(ValueError, match="path"):
        TRITON.coral_sweep(xs.float().to(DEVICE), xt.float().to(DEVICE), True, "dense")


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [300, 2049])  # one program; past CORAL_SMALL_MAX_D
def test_coral_loss_in_the_requested_dtype(d, out_dtype):
    """``coral_loss``: the value in ``out_dtype`` on either route; strided inputs read in place."""
    xs, xt = _draw(20, 25, d + 3, 2.0, d)
    a, b = xs.float()[:, 3:], xt.float()[:, :d]
    value, grads = TRITON.coral_loss(a.to(DEVICE), b.to(DEVICE), True, "gram", out_dtype)
    ref, ref_grads = reference.coral_sweep(a.double(), b.double(), True, "cov")
    assert value.shape == () and value.dtype == out_dtype and value.device.type == DEVICE
    assert abs(float(value) - float(ref)) <= 1e-5 * float(ref)
    assert all(_rel(g, r) <= 1e-4 for g, r in zip(grads, ref_grads))


def test_small_batch_coral_is_one_launch(monkeypatch):
    """At DA batch sizes the forward is one launch plus output allocations (no memset, no copy,
    no dtype conversion: each would be another launch on a GPU)."""
    from dapkernels.backends.triton import coral_kernels

    xs, xt = _draw(32, 32, 2048, 0.5, 11)
    a, b = xs.float().to(DEVICE), xt.float().to(DEVICE)
    names = ["coral_small_kernel", "coral_gram_kernel", "coral_grad_kernel"]
    with record_launches(monkeypatch, coral_kernels, names) as record:
        value, (gs, gt) = TRITON.coral_loss(a, b, True, "gram", torch.float32)
    assert record.launches == ["coral_small_kernel"]
    assert record.ops and set(record.ops) <= {"empty.memory_format"}, record.ops
    ref, (rs, rt) = reference.coral_sweep(a.cpu().double(), b.cpu().double(), True, "cov")
    assert abs(float(value) - float(ref)) <= 1e-5 * float(ref)
    assert _rel(gs, rs) <= 1e-4 and _rel(gt, rt) <= 1e-4


def test_coral_through_the_op():
    """dk.coral with backend="triton": value and autograd gradients vs the reference backend."""
    xs, xt = _draw(16, 24, 96, 1.0, 5)
    a = xs.float().to(DEVICE).requires_grad_()
    b = xt.float().to(DEVICE).requires_grad_()
    out = dk.coral(a, b, backend="triton")
    out.backward()
    a64 = xs.float().double().requires_grad_()
    b64 = xt.float().double().requires_grad_()
    ref = dk.coral(a64, b64, backend="reference")
    ref.backward()
    assert out.device.type == DEVICE and out.dtype == torch.float32
    assert abs(float(out) - float(ref)) <= 1e-5 * float(ref)
    assert _rel(a.grad, a64.grad) <= 1e-4 and _rel(b.grad, b64.grad) <= 1e-4


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_cuda_tensors_pick_the_triton_gram_kernels():
    from dapkernels import backends

    assert backends.resolve(None, torch.device("cuda")) == "triton"
    assert backends.get("triton") is TRITON
    s = torch.randn(32, 2048, device="cuda", requires_grad=True)
    out = dk.coral(s, torch.randn(32, 2048, device="cuda"))
    out.backward()
    assert out.is_cuda and s.grad.is_cuda
