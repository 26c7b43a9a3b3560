"""Public API contract (README "Use"): argument checking, estimator definitions, modules,
compile."""

import math
import os
import subprocess
import sys

import pytest
import torch

import dapkernels as dk
from dapkernels import backends

from .oracle import oracle_jmmd


def _pair(n=8, m=8, d=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=dtype),
            torch.randn(m, d, generator=g, dtype=dtype) + 0.5)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda s, t: dk.mmd(s, t[:, :3]), ValueError, "feature dimensions"),
        (lambda s, t: dk.mmd(s[:0], t), ValueError, "source is an empty batch"),
        (lambda s, t: dk.mmd(s, t[:0]), ValueError, "target is an empty batch"),
        (lambda s, t: dk.mmd(s[:1], t, estimator="unbiased"), ValueError, "at least 2"),
        (lambda s, t: dk.mmd(s, t[:5], estimator="linear"), ValueError, "equal batches"),
        (lambda s, t: dk.mmd(s, t, estimator="quadratic"), ValueError, "estimator"),
        (lambda s, t: dk.mmd(s, t.double()), TypeError, "dtype"),
        (lambda s, t: dk.mmd(s.to(torch.complex64), t.to(torch.complex64)), TypeError,
         "source has dtype"),
        (lambda s, t: dk.mmd(s.long(), t.long()), TypeError, "source has dtype"),
        (lambda s, t: dk.mmd(s[:, 0], t[:, 0]), ValueError, "source must have shape"),
        (lambda s, t: dk.mmd(s.numpy(), t), TypeError, "source must be a torch.Tensor"),
        (lambda s, t: dk.mmd(s, t.to("meta")), ValueError, "target is on meta"),
        (lambda s, t: dk.mmd(s, t, kernels=[1.0]), TypeError, "GaussianKernels"),
        (lambda s, t: dk.mmd(s, t, backend="cuda"), ValueError, "backend"),
        (lambda s, t: dk.jmmd([s], [t, t]), ValueError, "number of layers"),
        (lambda s, t: dk.jmmd(s, t), TypeError, "sequences"),
        (lambda s, t: dk.jmmd([s, s[:4]], [t, t]), ValueError, "share the batch"),
        (lambda s, t: dk.jmmd([s], [t], kernels=[dk.GaussianKernels()] * 2), ValueError,
         "one bank per layer"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, words):
    s, t = _pair()
    with pytest.raises(exc, match=words):
        call(s, t)


@pytest.mark.parametrize("backend", ["reference", None])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_features_raise(backend, bad):
    s, t = _pair()
    t[3, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        dk.mmd(s, t, backend=backend)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"alphas": [1.0, -2.0]}, "positive"),
        ({"sigmas": [0.0]}, "positive"),
        ({"sigmas": [math.nan]}, "finite"),
        ({"alphas": []}, "empty"),
        ({"alphas": [1.0], "sigmas": [1.0]}, "not both"),
        ({"alphas": "ab"}, "number"),
    ],
)
def test_bad_kernel_bank_raises(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        dk.GaussianKernels(**kwargs)


def test_kernel_bank_defaults_and_fields():
    k = dk.GaussianKernels()
    assert k.alphas == (0.125, 0.25, 0.5, 1.0, 2.0) and k.sigmas is None
    assert k.relative and k.num_kernels == 5
    fixed = dk.GaussianKernels(sigmas=[1.0, 2.0])
    assert not fixed.relative and fixed.sigma2_factors == (1.0, 4.0)
    assert hash(fixed) == hash(dk.GaussianKernels(sigmas=(1.0, 2.0)))


_ENV_CHILD = """
import torch, dapkernels as dk
from dapkernels import backends
s, t = torch.randn(8, 3), torch.randn(8, 3)
try:
    dk.mmd(s, t)
    print("ran", backends.resolve(None, s.device))
except ValueError as e:
    print("ValueError", e)
"""


@pytest.mark.parametrize("value, expected", [("nonsense", "ValueError backend must be one of"),
                                             ("reference", "ran reference"),
                                             ("", None)])
def test_backend_environment_variable(value, expected):
    """DAPKERNELS_BACKEND is read when dapkernels is imported, in a fresh process; unset (or
    empty), CPU tensors take the C++ core when it is built."""
    if expected is None:
        expected = "ran cpu" if backends.available("cpu") else "ran reference"
    out = subprocess.run([sys.executable, "-c", _ENV_CHILD], capture_output=True, text=True,
                         env={**os.environ, "DAPKERNELS_BACKEND": value}, check=True)
    assert out.stdout.startswith(expected), out.stdout + out.stderr


def test_forced_cpu_backend_refuses_other_devices():
    with pytest.raises(ValueError, match="CPU tensors only"):
        backends.resolve("cpu", torch.device("meta"))


@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
@pytest.mark.parametrize("layers", [1, 2])
def test_estimators_match_their_definitions(estimator, layers):
    g = torch.Generator().manual_seed(3)
    n = 10
    m = n if estimator == "linear" else 13
    src = [torch.randn(n, 3 + l, generator=g, dtype=torch.float64, requires_grad=True)
           for l in range(layers)]
    tgt = [torch.randn(m, 3 + l, generator=g, dtype=torch.float64) + 0.7 for l in range(layers)]
    banks = [((0.5, 1.0, 2.0), None), (None, (0.92,))][:layers]
    kernels = [dk.GaussianKernels(alphas=a) if a else dk.GaussianKernels(sigmas=s)
               for a, s in banks]
    want = oracle_jmmd(src, tgt, banks, estimator)
    got = dk.jmmd(src, tgt, kernels, estimator)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    gw = torch.autograd.grad(want, src)
    gg = torch.autograd.grad(got, src)
    for a, b in zip(gg, gw):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


def test_features_are_flattened_and_output_dtype_follows_input():
    s, t = _pair(d=12)
    flat = dk.mmd(s, t)
    shaped = dk.mmd(s.view(8, 3, 4), t.view(8, 2, 6))
    assert flat.dtype == torch.float32 and flat.dim() == 0
    torch.testing.assert_close(flat, shaped)
    assert dk.mmd(s.double(), t.double()).dtype == torch.float64


def test_modules_match_functional():
    s, t = _pair()
    k = dk.GaussianKernels(sigmas=[1.0, 3.0])
    torch.testing.assert_close(dk.MMDLoss(k, "biased")(s, t), dk.mmd(s, t, k, "biased"))
    torch.testing.assert_close(
        dk.JMMDLoss([k, k])([s, s.tanh()], [t, t.tanh()]),
        dk.jmmd([s, s.tanh()], [t, t.tanh()], [k, k]),
    )
    with pytest.raises(ValueError, match="estimator"):
        dk.MMDLoss(estimator="nope")
    assert "biased" in repr(dk.MMDLoss(k, "biased"))


def test_no_grad_inputs_give_plain_value():
    s, t = _pair()
    value = dk.mmd(s, t)
    assert not value.requires_grad
    with torch.no_grad():
        assert not dk.mmd(s.requires_grad_(), t).requires_grad


@pytest.mark.parametrize("backend", ["reference", None])
def test_compiled_model_with_mmd_loss_has_no_graph_break(backend):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    loss_fn = dk.MMDLoss(backend=backend)

    def step(xs, xt):
        return loss_fn(net(xs), net(xt))

    xs, xt = torch.randn(12, 6), torch.randn(10, 6) + 1.0
    eager = step(xs, xt)
    eager_grads = torch.autograd.grad(eager, list(net.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    value = compiled(xs, xt)
    grads = torch.autograd.grad(value, list(net.parameters()))
    torch.testing.assert_close(value, eager, rtol=1e-5, atol=1e-7)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
