"""Edge cases of the public ops: second derivatives, half-precision CPU inputs, NaN / Inf on every
CPU entry point, custom-op metadata (opcheck) and ``torch.compile(dynamic=True)`` training.

Second derivatives: with ``create_graph=True`` the fused ops recompute the gradient with
differentiable float64 torch ops, the relative bandwidth recomputed from the inputs, so the
double backward is the exact derivative of the backward function (what ``gradgradcheck``
checks numerically).  The oracle of the gradient-penalty tests writes that backward function
with autograd on the dense definition: the gradient w.r.t. a copy ``z1`` of the features while
the bandwidth follows ``z`` itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradgradcheck

import dapkernels as dk
from dapkernels.ops.coral import coral_fused_op
from dapkernels.ops.mmd import mmd_fused_op

CPU_BACKENDS = ["cpu", "reference"]
FIXED = dk.GaussianKernels(sigmas=[0.8, 1.7])
RELATIVE = dk.GaussianKernels()


def _pair(n=5, m=4, d=3, dtype=torch.float64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, d, generator=g, dtype=dtype)
    t = 1.3 * torch.randn(m, d, generator=g, dtype=dtype) + 0.4
    return (s.requires_grad_(), t.requires_grad_()) if grad else (s, t)


# ---- second derivatives -------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("bank", ["relative", "fixed"])
def test_mmd_gradgradcheck(backend, estimator, bank):
    s, t = _pair()
    k = RELATIVE if bank == "relative" else FIXED
    assert gradgradcheck(lambda a, b: dk.mmd(a, b, k, estimator, backend), (s, t))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_jmmd_two_layers_mixed_banks_gradgradcheck(backend, estimator):
    s, t = _pair(seed=1)

    def loss(a, b):
        return dk.jmmd([a, a.tanh()], [b, b.tanh()], [RELATIVE, FIXED], estimator, backend)

    assert gradgradcheck(loss, (s, t))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(5, 6, 3), (3, 4, 9)])  # d×d path, Gram path (n_s+n_t < d)
def test_coral_gradgradcheck(backend, shape):
    s, t = _pair(*shape, seed=2)
    assert gradgradcheck(lambda a, b: dk.coral(a, b, backend=backend), (s, t))


def test_custom_ops_gradgradcheck():
    """The compiled path's custom ops share the eager backward helper."""
    s, t = _pair(seed=3)

    def mmd(a, b):
        return mmd_fused_op([a, a.tanh()], [b, b.tanh()], [0.5, 1.0, 2.0, 1.1], [3, 1],
                         [True, False], "unbiased", True, "cpu")[0]

    assert gradgradcheck(mmd, (s, t))
    assert gradgradcheck(lambda a, b: coral_fused_op(a, b, True, "reference")[0], (s, t))


def test_linear_estimator_double_backward_holds_the_bandwidth():
    """The linear estimator is plain autograd with the (detached) bandwidth fixed at both
    orders: exact second derivatives with fixed banks, not the derivative of the backward
    function with relative ones (documented in ``mmd_linear``)."""
    s, t = _pair(5, 5)
    assert gradgradcheck(lambda a, b: dk.mmd(a, b, FIXED, "linear"), (s, t))
    assert not gradgradcheck(lambda a, b: dk.mmd(a, b, RELATIVE, "linear"), (s, t),
                             raise_exception=False)


def _oracle_backward(s, t, k, estimator):
    """∂L/∂s, ∂L/∂t with the bandwidth held at σ(z), as a differentiable function of (s, t)."""
    z = torch.cat([s, t])
    z1 = z * 1.0  # the gradient is taken w.r.t. this copy; the bandwidth follows z
    n, m = s.shape[0], t.shape[0]
    if k.relative:
        mean = (z[:, None] - z[None]).square().sum(-1).mean()
        sigma2 = [a * mean for a in k.sigma2_factors]
    else:
        sigma2 = list(k.sigma2_factors)
    d1 = (z1[:, None] - z1[None]).square().sum(-1)
    kern = sum(torch.exp(-d1 / (2.0 * s2)) for s2 in sigma2)
    kss, kst, ktt = kern[:n, :n], kern[:n, n:], kern[n:, n:]
    if estimator == "biased":
        value = kss.sum() / n**2 + ktt.sum() / m**2 - 2 * kst.sum() / (n * m)
    else:
        value = (kss.sum() / (n * (n - 1)) + ktt.sum() / (m * (m - 1))
                 - 2 * kst.sum() / (n * m))
    (g,) = torch.autograd.grad(value, z1, create_graph=True)
    return g


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bank", ["relative", "fixed"])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_gradient_penalty_matches_dense_autograd(backend, bank, estimator):
    """‖∂L/∂z‖ backpropagated to the weight of the layer that makes the features."""
    k = RELATIVE if bank == "relative" else FIXED
    g = torch.Generator().manual_seed(4)
    xs = torch.randn(6, 4, generator=g, dtype=torch.float64)
    xt = torch.randn(5, 4, generator=g, dtype=torch.float64) + 0.5
    net = torch.nn.Linear(4, 3).double()

    def penalty(fused: bool) -> list:
        net.zero_grad()
        s, t = net(xs), net(xt)
        if fused:
            gs, gt = torch.autograd.grad(dk.mmd(s, t, k, estimator, backend), (s, t),
                                         create_graph=True)
            grad = torch.cat([gs, gt])
        else:
            grad = _oracle_backward(s, t, k, estimator)
        grad.norm().backward()
        return [p.grad.clone() for p in net.parameters()]

    for a, b in zip(penalty(True), penalty(False)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_coral_gradient_penalty_matches_dense_autograd(backend):
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(7, 5, generator=g, dtype=torch.float64)
    xt = 2.0 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    net = torch.nn.Linear(5, 12).double()  # d = 12 > n_s + n_t: the Gram path

    def cov(x):
        c = x - x.mean(0)
        return c.T @ c / (x.shape[0] - 1)

    def penalty(loss) -> list:
        net.zero_grad()
        s, t = net(xs), net(xt)
        gs, gt = torch.autograd.grad(loss(s, t), (s, t), create_graph=True)
        (gs.square().sum() + gt.square().sum()).backward()
        return [p.grad.clone() for p in net.parameters()]

    ours = penalty(lambda s, t: dk.coral(s, t, backend=backend))
    dense = penalty(lambda s, t: (cov(s) - cov(t)).square().sum() / (4 * 12 * 12))
    for a, b in zip(ours, dense):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-14)


def test_log_coral_second_derivative_raises_instead_of_being_wrong():
    s, t = _pair(8, 9, 3)
    gs, _ = torch.autograd.grad(dk.coral(s, t, log=True), (s, t), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate"):
        gs.sum().backward()


# ---- half-precision CPU inputs -----------------------------------------------------------


HALF = [torch.bfloat16, torch.float16]


def _half_loss(name, s, t):
    if name == "mmd":
        return dk.mmd(s, t)
    if name == "mmd_linear":
        return dk.mmd(s, t, estimator="linear")
    if name == "jmmd":
        return dk.jmmd([s, 0.5 * s], [t, 0.5 * t], [RELATIVE, FIXED])
    if name == "coral":
        return dk.coral(s, t)
    return dk.coral(s, t, log=True)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", ["mmd", "mmd_linear", "jmmd", "coral", "coral_log"])
def test_half_cpu_inputs_match_float64_reference_on_rounded_inputs(dtype, name):
    s, t = _pair(8, 8, 6, dtype=torch.float32, seed=6, grad=False)
    s, t = s.to(dtype).requires_grad_(), t.to(dtype).requires_grad_()
    value = _half_loss(name, s, t)
    assert value.dtype == torch.float32
    gs, gt = torch.autograd.grad(value, (s, t))
    assert gs.dtype == dtype and gt.dtype == dtype
    s64, t64 = s.detach().double().requires_grad_(), t.detach().double().requires_grad_()
    ref = _half_loss(name, s64, t64)  # 0.5·x is exact in every dtype
    rs, rt = torch.autograd.grad(ref, (s64, t64))
    assert abs(value.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    for a, b in ((gs, rs), (gt, rt)):
        assert float((a.double() - b).norm() / b.norm()) <= 1e-2  # the gradient is rounded


@pytest.mark.parametrize("name", ["mmd", "coral"])
def test_modules_take_half_cpu_inputs(name):
    s, t = _pair(6, 7, 5, dtype=torch.bfloat16, grad=False)
    module = dk.MMDLoss() if name == "mmd" else dk.CORALLoss()
    functional = dk.mmd if name == "mmd" else dk.coral
    assert module(s, t).dtype == torch.float32
    assert torch.equal(module(s, t), functional(s, t))
    assert dk.JMMDLoss()([s], [t]).dtype == torch.float32


@pytest.mark.parametrize("loss", ["mmd", "coral"])
def test_under_cpu_autocast(loss):
    torch.manual_seed(0)
    net = torch.nn.Linear(10, 6)
    xs, xt = torch.randn(12, 10), torch.randn(9, 10) + 0.5
    fn = dk.mmd if loss == "mmd" else dk.coral
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fs, ft = net(xs), net(xt)
        assert fs.dtype == torch.bfloat16
        fs.retain_grad()
        ft.retain_grad()
        value = fn(fs, ft)
    assert value.dtype == torch.float32
    value.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    s64 = fs.detach().double().requires_grad_()
    t64 = ft.detach().double().requires_grad_()
    ref = fn(s64, t64, backend="reference")
    ref.backward()
    assert abs(value.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    assert fs.grad.dtype == torch.bfloat16
    assert float((fs.grad.double() - s64.grad).norm() / s64.grad.norm()) <= 1e-2


# ---- NaN / Inf on every CPU entry point ---------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("call", [
    lambda s, t: dk.mmd(s, t, estimator="linear"),
    lambda s, t: dk.jmmd([s, s], [t, t], estimator="linear"),
    lambda s, t: dk.coral(s, t, log=True),
    lambda s, t: dk.mmd(s, t),
    lambda s, t: dk.coral(s, t, backend="reference"),  # the C++ CORAL check: another branch
    lambda s, t: dk.mmd(s.bfloat16(), t.bfloat16(), estimator="linear"),
])
@pytest.mark.parametrize("side", ["source", "target"])
def test_non_finite_cpu_features_raise(bad, call, side):
    s, t = _pair(6, 6, 4, dtype=torch.float32, grad=False)
    (s if side == "source" else t)[2, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        call(s, t)


# ---- custom ops: opcheck and torch.compile(dynamic=True) ---------------------------------


def _layouts(n: int, d: int, seed: int):
    """(name, tensor (n, d)) in several layouts."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    yield "contiguous", draw(n, d)
    yield "transposed", draw(d, n).t()  # y.t() of a (d, n) tensor: stride (1, n)
    yield "column_major", draw(n, d).T.contiguous().T  # same layout, made from (n, d)
    yield "rows_sliced", draw(2 * n, d)[::2]
    yield "cols_sliced", draw(n, d + 1)[:, 1:]


LAYOUTS = ["contiguous", "transposed", "column_major", "rows_sliced", "cols_sliced"]


def _inputs(layout: str, grad: bool):
    s = dict(_layouts(5, 4, 0))[layout]
    t = dict(_layouts(6, 4, 1))[layout]
    if grad:
        s, t = s.requires_grad_(), t.requires_grad_()
    return s, t


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("need_grad", [True, False])
def test_opcheck_every_custom_op(backend, layout, need_grad):
    # need_grad=False is what the ops pass when no input requires grad
    s, t = _inputs(layout, need_grad)
    torch.library.opcheck(mmd_fused_op, ([s], [t], [0.5, 1.0], [2], [True], "unbiased",
                                      need_grad, backend))
    torch.library.opcheck(mmd_fused_op, ([s, s], [t, t], [0.5, 1.0, 1.3], [2, 1], [True, False],
                                      "biased", need_grad, backend))
    torch.library.opcheck(coral_fused_op, (s, t, need_grad, backend))
    wide_s, wide_t = (x.repeat(1, 3) for x in (s.detach(), t.detach()))  # Gram path: N < d
    if need_grad:
        wide_s, wide_t = wide_s.requires_grad_(), wide_t.requires_grad_()
    torch.library.opcheck(coral_fused_op, (wide_s, wide_t, need_grad, backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_outputs_have_the_real_shapes_and_strides(backend, layout):
    from torch._subclasses.fake_tensor import FakeTensorMode

    s, t = _inputs(layout, False)
    calls = [
        lambda a, b: mmd_fused_op([a, a], [b, b], [0.5, 1.0], [1, 1], [True, False], "unbiased",
                               True, backend),
        lambda a, b: coral_fused_op(a, b, True, backend),
        lambda a, b: coral_fused_op(a.repeat(1, 4), b.repeat(1, 4), True, backend),
    ]
    for call in calls:
        real = call(s, t)
        with FakeTensorMode() as mode:
            fake = call(mode.from_tensor(s), mode.from_tensor(t))
        assert [(r.shape, r.stride(), r.dtype) for r in real] == \
            [(f.shape, f.stride(), f.dtype) for f in fake]


@pytest.mark.parametrize("loss", ["mmd", "coral"])
def test_compiled_dynamic_training_matches_eager(loss):
    """Linear → loss → backward → SGD over batch sizes that change between steps."""
    torch.manual_seed(0)
    fn = dk.mmd if loss == "mmd" else dk.coral
    batches = [16, 24, 32, 20]
    data = [(torch.randn(b, 8), torch.randn(b + 2, 8) + 0.3) for b in batches]

    def make():
        torch.manual_seed(1)
        net = torch.nn.Linear(8, 5)
        return net, torch.optim.SGD(net.parameters(), lr=0.5)

    def step(net, xs, xt):
        value = fn(net(xs), net(xt))
        value.backward()
        return value

    eager_net, eager_opt = make()
    comp_net, comp_opt = make()
    torch._dynamo.reset()
    compiled = torch.compile(step, dynamic=True, backend="aot_eager")
    for xs, xt in data:
        for net, opt, run in ((eager_net, eager_opt, step), (comp_net, comp_opt, compiled)):
            opt.zero_grad()
            run(net, xs, xt)
            opt.step()
        for a, b in zip(eager_net.parameters(), comp_net.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_dense_oracle_agrees_with_first_derivative():
    """Sanity check of the gradient-penalty oracle: its first derivative is the op's."""
    s, t = _pair(seed=8)
    for k in (RELATIVE, FIXED):
        g = _oracle_backward(s, t, k, "unbiased")
        ours = torch.cat(torch.autograd.grad(dk.mmd(s, t, k), (s, t)))
        torch.testing.assert_close(g, ours, rtol=1e-10, atol=1e-13)
