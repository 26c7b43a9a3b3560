"""Triton MMD / JMMD kernels against the float64 reference backend.

Without a GPU the kernels run in the Triton interpreter on CPU tensors (``tests/conftest.py``
sets ``TRITON_INTERPRET=1`` before triton is imported).  With a GPU (and no
``TRITON_INTERPRET``) the same tests run compiled kernels on CUDA tensors.

Tolerances.  The estimate ``w_ss S_ss + 2 w_st S_st + w_tt S_tt`` can be ~0 while its terms are
O(1), so value errors are relative to the scale of the terms ``|w_ss S_ss| + |2 w_st S_st| +
|w_tt S_tt|`` (≤ 1e-5); gradients are relative to the reference gradient's norm (≤ 1e-4);
float16 / bfloat16 inputs ≤ 1e-2 for both.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
pytest.importorskip("triton")

import dapkernels as dk  # noqa: E402
from dapkernels.backends import get, reference  # noqa: E402

from .launches import record_launches  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
ALPHAS = [2.0**i for i in range(-3, 2)]
TRITON = get("triton")


def _sweep_errors(zs, n, factors, relative, weights, need_grad, dtype=torch.float32):
    """(value error relative to the term scale, [gradient error relative to its norm])."""
    zs = [z.to(device=DEVICE, dtype=dtype) for z in zs]
    sums, grads = TRITON.mmd_sweep(
        [z[:n] for z in zs], [z[n:] for z in zs], factors, relative, weights, need_grad
    )
    z64 = [z.cpu().double() for z in zs]
    ref_sums, ref_grads = reference.mmd_sweep(
        [z[:n] for z in z64], [z[n:] for z in z64], factors, relative, weights, need_grad
    )
    assert sums.device == zs[0].device and sums.dtype == torch.float64
    w = torch.tensor(weights, dtype=torch.float64) * torch.tensor([1.0, 2.0, 1.0])
    scale = (w * ref_sums).abs().sum()
    value_err = float((w * (sums.cpu() - ref_sums)).sum().abs() / scale)
    grad_errs = []
    for g, rg, z in zip(grads, ref_grads, zs):
        assert g.shape == z.shape and g.dtype == z.dtype and g.device == z.device
        grad_errs.append(float((g.cpu().double() - rg).norm() / rg.norm()))
    return value_err, grad_errs


UNBIASED = lambda n, m: (1.0 / (n * (n - 1)), -1.0 / (n * m), 1.0 / (m * (m - 1)))  # noqa: E731


@pytest.mark.parametrize(
    "n,m,d",
    # one program (N ≤ 64), flash (d ≤ 256), d > 256: wide (gradient) or sweep (value only)
    [(5, 7, 3), (2, 2, 1), (9, 14, 1000), (70, 80, 1), (33, 40, 127), (40, 31, 300),
     (150, 77, 1000)],
)
@pytest.mark.parametrize("need_grad", [True, False])
def test_mmd_sweep_matches_reference(n, m, d, need_grad):
    torch.manual_seed(n * 1000 + d)
    z = torch.cat([torch.randn(n, d) + 0.5, 1.3 * torch.randn(m, d)])
    value_err, grad_errs = _sweep_errors([z], n, [ALPHAS], [True], UNBIASED(n, m), need_grad)
    assert value_err <= 1e-5
    assert len(grad_errs) == (1 if need_grad else 0)
    assert all(e <= 1e-4 for e in grad_errs)


def test_general_bank_and_offset_data():
    """Bandwidths that are not a doubling series take one exp per kernel; a far-away mean."""
    torch.manual_seed(1)
    for rows in (45, 90):  # one-program and flash paths
        z = 1e3 + torch.randn(rows, 17)
        for factors, relative in (([0.7, 1.9, 5.0], True), ([8.0, 30.0], False)):
            value_err, grad_errs = _sweep_errors(
                [z], 20, [factors], [relative], UNBIASED(20, rows - 20), True)
            assert value_err <= 1e-5 and grad_errs[0] <= 1e-4


def test_jmmd_layers():
    torch.manual_seed(2)
    n, m = 19, 26
    z1 = torch.randn(n + m, 48) * 2.0 + 1.0
    z2 = torch.softmax(torch.randn(n + m, 31), dim=1)
    z3 = torch.randn(n + m, 5)
    factors = [ALPHAS, [0.5, 2.0], [1.0, 4.0]]
    relative = [True, False, True]
    for need_grad in (True, False):
        value_err, grad_errs = _sweep_errors(
            [z1, z2, z3], n, factors, relative, (1 / n**2, -1 / (n * m), 1 / m**2), need_grad
        )
        assert value_err <= 1e-5
        assert all(e <= 1e-4 for e in grad_errs)


def test_identical_rows_use_unit_bandwidth():
    z = torch.ones(10, 4)
    zd, z64 = z.to(DEVICE), z.double()
    sums, grads = TRITON.mmd_sweep([zd[:4]], [zd[4:]], [ALPHAS], [True], UNBIASED(4, 6), True)
    ref_sums, _ = reference.mmd_sweep([z64[:4]], [z64[4:]], [ALPHAS], [True], UNBIASED(4, 6),
                                      True)
    torch.testing.assert_close(sums.cpu(), ref_sums)
    assert float(grads[0].abs().max()) == 0.0


# The triton 3.9 interpreter's tl.dot multiplies bfloat16 bit patterns: bfloat16 on a GPU only.
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if ON_GPU else []))
def test_half_precision_inputs(dtype):
    torch.manual_seed(3)
    for n, m, d in ((30, 41, 127), (12, 9, 127), (30, 41, 300)):  # flash, one program, wide
        z = torch.cat([torch.randn(n, d) + 0.3, torch.randn(m, d)])
        value_err, grad_errs = _sweep_errors([z], n, [ALPHAS], [True], UNBIASED(n, m), True, dtype)
        assert value_err <= 1e-2 and grad_errs[0] <= 1e-2


class _Spy:
    """Records the name of each launch of a wrapped ``triton.jit`` kernel."""

    def __init__(self, kernel, name: str, seen: list):
        self.kernel, self.name, self.seen = kernel, name, seen

    def __getitem__(self, grid):
        self.seen.append(self.name)
        return self.kernel[grid]


@pytest.mark.parametrize(
    "target,precision,rows,d,need_grad,kernel",
    [
        ("227KB", "highest", 64, 100, True, "mmd_small_kernel"),
        # MMD_NO_SMALL; no 3xTF32 flash at DP 128
        ("163KB", "highest", 64, 100, True, "mmd_wide_kernel"),
        ("99KB", "highest", 64, 100, True, "mmd_wide_kernel"),
        ("163KB", "highest", 64, 40, True, "mmd_flash_kernel"),
        ("163KB", "high", 90, 100, True, "mmd_flash_kernel"),
        ("163KB", "high", 90, 200, True, "mmd_flash_kernel"),
        ("227KB", "highest", 90, 200, True, "mmd_wide_kernel"),  # no 3xTF32 flash, gradient, DP 256
        ("163KB", "high", 90, 300, True, "mmd_wide_kernel"),  # d > 256
        # several row blocks and column splits
        ("227KB", "high", 300, 1000, True, "mmd_wide_kernel"),
        ("227KB", "highest", 90, 100, False, "mmd_flash_kernel"),
        ("163KB", "highest", 90, 100, False, "mmd_sweep_kernel"),
        ("163KB", "high", 90, 300, False, "mmd_sweep_kernel"),  # no gradient: upper-triangle tiles
        # DP = 256 without the gradient: 64-row flash tiles within 99 KB of shared memory
        ("99KB", "high", 90, 200, False, "mmd_flash_kernel"),
        ("99KB", "high", 40, 200, True, "mmd_small_kernel"),
    ],
)
def test_routes_of_each_target_table(monkeypatch, target, precision, rows, d, need_grad, kernel):
    """Each target's tables pick the expected kernel (small / flash / sweep) and it is exact."""
    from dapkernels.backends.triton import device as tdevice
    from dapkernels.backends.triton import mmd_kernels

    seen: list = []
    for name in ("mmd_small_kernel", "mmd_flash_kernel", "mmd_sweep_kernel", "mmd_wide_kernel"):
        monkeypatch.setattr(mmd_kernels, name, _Spy(getattr(mmd_kernels, name), name, seen))
    monkeypatch.setitem(tdevice._TARGET, torch.empty(0, device=DEVICE).device, target)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        torch.manual_seed(rows + d)
        n = rows // 2
        z = torch.cat([torch.randn(n, d) + 0.5, 1.3 * torch.randn(rows - n, d)])
        value_err, grad_errs = _sweep_errors(
            [z], n, [ALPHAS], [True], UNBIASED(n, rows - n), need_grad)
    finally:
        torch.set_float32_matmul_precision(before)
    assert seen == [kernel]
    # TF32 ("high") products carry ~1e-3 relative error per term in the distances.
    tol = 1e-5 if precision == "highest" else 1e-3
    assert value_err <= tol and all(e <= 10 * tol for e in grad_errs)


def _leaves(args: dict) -> list:
    return [x for v in args.values() for x in (v if isinstance(v, list) else [v])
            if isinstance(x, torch.Tensor)]


def _as_reference(v):
    if isinstance(v, list):
        return [_as_reference(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().double().requires_grad_()
    return v


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_functional_mmd_and_jmmd_through_the_op(estimator):
    """dk.mmd / dk.jmmd with backend="triton": values and autograd gradients."""
    torch.manual_seed(4)
    s = torch.randn(12, 3, 5, device=DEVICE).requires_grad_()
    t = (torch.randn(17, 3, 5, device=DEVICE) + 0.4).requires_grad_()
    p = torch.softmax(torch.randn(12, 7, device=DEVICE), 1).requires_grad_()
    q = torch.softmax(torch.randn(17, 7, device=DEVICE), 1).requires_grad_()
    banks = [dk.GaussianKernels(), dk.GaussianKernels(sigmas=[0.3, 1.0])]
    for fn, args in (
        (dk.mmd, dict(source=s, target=t)),
        (dk.jmmd, dict(sources=[s, p], targets=[t, q], kernels=banks)),
    ):
        out = fn(**args, estimator=estimator, backend="triton")
        grads = torch.autograd.grad(out, _leaves(args))
        ref_args = {k: _as_reference(v) for k, v in args.items()}
        ref = fn(**ref_args, estimator=estimator, backend="reference")
        ref_grads = torch.autograd.grad(ref, _leaves(ref_args))
        assert out.device.type == DEVICE and out.dtype == torch.float32
        assert abs(float(out) - float(ref)) <= 1e-5 * max(1.0, abs(float(ref)))
        for g, rg in zip(grads, ref_grads):
            assert g.device.type == DEVICE
            assert float((g.cpu().double() - rg).norm()) <= 1e-4 * float(rg.norm())


def _reference_loss(s, t, factors, weights, const):
    sums, grads = reference.mmd_sweep([s.cpu().double()], [t.cpu().double()], [factors], [True],
                                      weights, True)
    w = torch.tensor(weights, dtype=torch.float64) * torch.tensor([1.0, 2.0, 1.0])
    return float((w * sums).sum()) + const, float((w * sums).abs().sum()), grads[0]


@pytest.mark.parametrize(
    "n,m,d,dtype,out_dtype",
    [
        (5, 7, 3, torch.float32, torch.float32),  # one program: the kernel writes the value
        (30, 34, 256, torch.float32, torch.float64),
        (9, 14, 1000, torch.float64, torch.float64),  # float64 read and differentiated in place
        (40, 31, 300, torch.float32, torch.float32),  # sweep, value formed on the device
        (33, 40, 127, torch.float64, torch.float32),  # flash
    ],
)
def test_mmd_loss_value_and_gradient(n, m, d, dtype, out_dtype):
    """``mmd_loss`` = coef · S + const in the requested dtype, on every route; rows strided
    differently in source and target (views into wider buffers) are read where they are."""
    torch.manual_seed(n + m + d)
    s = (torch.randn(n, d + 5, dtype=dtype) + 0.4)[:, 2:d + 2]
    t = 1.2 * torch.randn(m, 2 * d, dtype=dtype)[:, ::2]
    weights, const = UNBIASED(n, m), -0.37
    value, grads = TRITON.mmd_loss([s.to(DEVICE)], [t.to(DEVICE)], [ALPHAS], [True], weights,
                                   const, out_dtype, True)
    ref, scale, ref_grad = _reference_loss(s, t, ALPHAS, weights, const)
    assert value.shape == () and value.dtype == out_dtype and value.device.type == DEVICE
    assert abs(float(value) - ref) <= 1e-5 * scale
    (g,) = grads
    assert g.shape == (n + m, d) and g.dtype == dtype
    assert float((g.cpu().double() - ref_grad).norm()) <= 1e-4 * float(ref_grad.norm())


def test_small_batch_loss_is_one_launch_and_no_other_device_op(monkeypatch):
    """At DA batch sizes the forward is one kernel launch plus output allocations: no copy of
    the inputs, no memset, no ops combining the sums (each would be a launch on a GPU)."""
    from dapkernels.backends.triton import mmd_kernels

    s = torch.randn(32, 256, device=DEVICE)
    t = torch.randn(32, 256, device=DEVICE) + 0.3
    weights = UNBIASED(32, 32)
    TRITON.mmd_loss([s], [t], [ALPHAS], [True], weights, 0.0, torch.float32, True)  # plan cache
    names = ["mmd_small_kernel", "mmd_flash_kernel", "mmd_prep_kernel", "mmd_sweep_kernel",
             "mmd_wide_kernel", "mmd_finish_kernel"]
    with record_launches(monkeypatch, mmd_kernels, names) as record:
        value, (grad,) = TRITON.mmd_loss([s], [t], [ALPHAS], [True], weights, 0.0,
                                         torch.float32, True)
    assert record.launches == ["mmd_small_kernel"]
    assert record.ops and set(record.ops) <= {"empty.memory_format"}, record.ops
    ref, scale, ref_grad = _reference_loss(s, t, ALPHAS, weights, 0.0)
    assert abs(float(value) - ref) <= 1e-5 * scale
    assert float((grad.cpu().double() - ref_grad).norm()) <= 1e-4 * float(ref_grad.norm())


@pytest.mark.parametrize("rows", [(12, 10), (50, 40)])  # one program (value in-kernel); flash
def test_compiled_losses_on_the_triton_backend_match_eager(rows):
    """Under torch.compile(fullgraph=True) the custom ops reach the same Triton kernels
    (``mmd_loss`` writing a float64 value, ``coral_sweep``): values and gradients as in eager."""
    torch.manual_seed(sum(rows))
    net = torch.nn.Linear(6, 40).to(DEVICE)
    mmd, coral = dk.MMDLoss(backend="triton"), dk.CORALLoss(backend="triton")

    def step(xs, xt):
        fs, ft = net(xs), net(xt)
        return mmd(fs, ft) + coral(fs, ft)

    xs = torch.randn(rows[0], 6, device=DEVICE)
    xt = torch.randn(rows[1], 6, device=DEVICE) + 0.5
    eager = step(xs, xt)
    eager_grads = torch.autograd.grad(eager, list(net.parameters()))
    torch._dynamo.reset()
    value = torch.compile(step, fullgraph=True, backend="aot_eager")(xs, xt)
    grads = torch.autograd.grad(value, list(net.parameters()))
    torch.testing.assert_close(value, eager, rtol=1e-5, atol=1e-7)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_too_many_layers_is_an_error():
    z = torch.randn(6, 2, device=DEVICE)
    with pytest.raises(ValueError, match="at most 8 layers"):
        TRITON.mmd_sweep([z[:3]] * 9, [z[3:]] * 9, [ALPHAS] * 9, [True] * 9, UNBIASED(3, 3),
                         False)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_cuda_tensors_pick_triton_by_default():
    from dapkernels import backends

    assert backends.resolve(None, torch.device("cuda")) == "triton"
    s = torch.randn(32, 256, device="cuda", requires_grad=True)
    out = dk.mmd(s, torch.randn(32, 256, device="cuda"))
    out.backward()
    assert out.is_cuda and s.grad.is_cuda
