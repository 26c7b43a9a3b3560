"""Fixtures of the pytest-benchmark suite (how to run it: ``benchmarks/test_bench_mmd.py``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


@pytest.fixture
def fwd_bwd() -> Callable:
    """``fwd_bwd(loss_fn, n, m, d)`` → a zero-argument forward+backward step on float32 inputs.

    The inputs are drawn once (seed 0); the step returns nothing, so each round frees its
    gradients.
    """

    def make(loss_fn: Callable, n: int, m: int, d: int) -> Callable[[], None]:
        gen = torch.Generator().manual_seed(0)
        s = torch.randn(n, d, generator=gen).requires_grad_()
        t = (torch.randn(m, d, generator=gen) * 1.1 + 0.1).requires_grad_()

        def step() -> None:
            torch.autograd.grad(loss_fn(s, t), (s, t))

        return step

    return make
