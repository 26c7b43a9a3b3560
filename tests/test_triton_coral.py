"""Triton CORAL Gram-path kernels against the float64 reference (``path="cov"``).

Like ``test_triton_interpret.py``: without a GPU the kernels run in Triton's interpreter on CPU
tensors (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``); with a GPU the same tests run the
compiled kernels on CUDA tensors.  Bars: value ≤ 1e-5 relative, gradients
≤ 1e-4 relative (norm), including features offset by 1e4; float16 / bfloat16 ≤ 1e-2.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
pytest.importorskip("triton")

import dapkernels as dk  # noqa: E402
from dapkernels.backends import get, reference  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
TRITON = get("triton")


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
def test_coral_sweep_matches_reference(ns, nt, d, offset, need_grad):
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
def test_other_dtypes(dtype):
    xs, xt = _draw(12, 20, 130, 0.2, 7)
    xs, xt = xs.to(dtype), xt.to(dtype)
    value, (gs, gt) = TRITON.coral_sweep(xs.to(DEVICE), xt.to(DEVICE), True, "gram")
    ref, (rs, rt) = reference.coral_sweep(xs.double(), xt.double(), True, "cov")
    tol = 1e-5 if dtype == torch.float64 else 1e-2
    assert gs.dtype == dtype and gt.dtype == dtype
    assert abs(float(value) - float(ref)) <= tol * float(ref)
    assert _rel(gs, rs) <= 10 * tol and _rel(gt, rt) <= 10 * tol


def test_rows_beyond_the_gram_tile_use_the_reference_formula():
    xs, xt = _draw(40, 30, 200, 0.0, 3)
    value, grads = TRITON.coral_sweep(xs.float().to(DEVICE), xt.float().to(DEVICE), True, "gram")
    ref, ref_grads = reference.coral_sweep(xs.float().double(), xt.float().double(), True, "cov")
    assert abs(float(value) - float(ref)) <= 1e-5 * float(ref)
    assert all(_rel(g, r) <= 1e-4 for g, r in zip(grads, ref_grads))


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
    from dapkernels.ops import coral

    assert backends.resolve(None, torch.device("cuda")) == "triton"
    assert coral._module("triton") is TRITON
    s = torch.randn(32, 2048, device="cuda", requires_grad=True)
    out = dk.coral(s, torch.randn(32, 2048, device="cuda"))
    out.backward()
    assert out.is_cuda and s.grad.is_cuda
