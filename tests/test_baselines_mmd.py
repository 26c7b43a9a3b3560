"""The naive baselines compute exactly dk.mmd / dk.jmmd (float64 reference backend)."""

from __future__ import annotations

import pytest
import torch

import dapkernels as dk
from dapkernels.baselines import PATTERNS, deepda_kernels, naive_jmmd, naive_mmd

BANKS = {
    "default": dk.GaussianKernels(),
    "alphas": dk.GaussianKernels(alphas=[0.3, 1.0, 7.0]),
    "sigmas": dk.GaussianKernels(sigmas=[0.7, 2.0, 5.0]),
}


def _grads(loss: torch.Tensor, inputs: list) -> list:
    return list(torch.autograd.grad(loss, inputs))


def _check(value, ref_value, grads, ref_grads) -> None:
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12 * max(1.0, float(r.abs().max())))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
@pytest.mark.parametrize("bank", sorted(BANKS))
def test_naive_mmd_matches_reference(pattern: str, estimator: str, bank: str) -> None:
    gen = torch.Generator().manual_seed(len(pattern) * 100 + len(estimator) * 10 + len(bank))
    n, m = (7, 7) if estimator == "linear" else (7, 11)
    s = torch.randn(n, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = (torch.randn(m, 2, 3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    kernels = BANKS[bank]
    ref = dk.mmd(s, t, kernels=kernels, estimator=estimator, backend="reference")
    out = naive_mmd(s, t, kernels, estimator, pattern=pattern)
    assert out.dtype == torch.float64 and out.dim() == 0
    _check(out, ref, _grads(out, [s, t]), _grads(ref, [s, t]))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
def test_naive_jmmd_matches_reference(pattern: str, estimator: str) -> None:
    gen = torch.Generator().manual_seed(3)
    n, m = (6, 6) if estimator == "linear" else (6, 9)
    layers_s = [torch.randn(n, d, generator=gen, dtype=torch.float64) for d in (5, 3)]
    layers_t = [torch.randn(m, d, generator=gen, dtype=torch.float64) * 1.5 for d in (5, 3)]
    inputs = [x.requires_grad_() for x in layers_s + layers_t]
    kernels = [BANKS["default"], BANKS["sigmas"]]
    ref = dk.jmmd(layers_s, layers_t, kernels=kernels, estimator=estimator, backend="reference")
    out = naive_jmmd(layers_s, layers_t, kernels, estimator, pattern=pattern)
    _check(out, ref, _grads(out, inputs), _grads(ref, inputs))


def test_tll_index_matrix_follows_size_changes() -> None:
    gen = torch.Generator().manual_seed(5)
    for n, m in [(4, 4), (5, 3), (4, 4), (3, 6)]:
        s = torch.randn(n, 4, generator=gen, dtype=torch.float64)
        t = torch.randn(m, 4, generator=gen, dtype=torch.float64)
        for est in ("unbiased", "biased"):
            ref = dk.mmd(s, t, estimator=est, backend="reference")
            torch.testing.assert_close(naive_mmd(s, t, estimator=est), ref, rtol=1e-10, atol=0)


def test_float32_agrees() -> None:
    gen = torch.Generator().manual_seed(8)
    s, t = torch.randn(32, 64, generator=gen), torch.randn(32, 64, generator=gen) + 0.1
    ref = dk.mmd(s.double(), t.double(), backend="reference")
    for pattern in PATTERNS:
        out = naive_mmd(s, t, pattern=pattern)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-6)


def test_deepda_kernels_is_the_default_bank() -> None:
    assert deepda_kernels(2.0, 5) == dk.GaussianKernels()
    assert deepda_kernels(3.0, 3).alphas == pytest.approx((0.5 / 3, 0.5, 1.5))


def test_bad_arguments() -> None:
    s, t = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="pattern"):
        naive_mmd(s, t, pattern="sklearn")
    with pytest.raises(ValueError, match="estimator"):
        naive_mmd(s, t, estimator="quadratic")
    with pytest.raises(ValueError, match="linear"):
        naive_mmd(s, t, estimator="linear")
    with pytest.raises(ValueError, match="unbiased"):
        naive_mmd(s[:1], t)
    with pytest.raises(ValueError, match="kernels"):
        naive_jmmd([s], [t], kernels=[dk.GaussianKernels()] * 2)
