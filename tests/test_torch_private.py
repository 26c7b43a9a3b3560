"""The private torch APIs of ``dapkernels._torch_private`` and the fallback of each: a torch
without one still gives the same results (the reason the upper torch pin can be raised)."""

from __future__ import annotations

import importlib

import pytest
import torch

import dapkernels as dk
from dapkernels import _torch_private
from dapkernels.ops import _autograd


@pytest.fixture
def bare_torch(monkeypatch):
    """``_torch_private`` reloaded on a torch that lacks every private name it uses."""
    monkeypatch.delattr(torch._C, "_are_functorch_transforms_active", raising=False)
    monkeypatch.delattr(torch._C._functorch, "unwrap_if_dead", raising=False)
    monkeypatch.delattr(torch._C, "_alert_not_deterministic", raising=False)
    import torch._prims_common as prims

    monkeypatch.delattr(prims, "alert_not_deterministic", raising=False)
    yield importlib.reload(_torch_private)
    monkeypatch.undo()
    importlib.reload(_torch_private)


def test_this_torch_has_the_private_apis():
    """On the pinned releases the fast paths are the ones taken (not the fallbacks)."""
    assert _torch_private.unwrap_if_dead is not None
    assert _torch_private.functorch_active is torch._C._are_functorch_transforms_active
    assert _torch_private._find_alert() is not _torch_private._alert_fallback


def test_fallbacks(bare_torch):
    assert bare_torch.unwrap_if_dead is None
    assert bare_torch.functorch_active() is True  # callers take their transform-safe path
    assert bare_torch._find_alert() is bare_torch._alert_fallback


def test_alert_fallback_raises_or_warns(bare_torch):
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match="route x"):
            bare_torch.alert_not_deterministic("route x")
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="route y"):
            bare_torch.alert_not_deterministic("route y")
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_direct_apply_without_unwrap_uses_the_public_apply(monkeypatch):
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    monkeypatch.setattr(_autograd, "unwrap_if_dead", None)
    assert _autograd.direct_apply(Double) == Double.apply
    monkeypatch.undo()
    fast = _autograd.direct_apply(Double)
    x = torch.ones(3, requires_grad=True)
    fast(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


def test_grad_reverse_on_the_transform_safe_path(monkeypatch):
    """With the probe missing, gradient reversal takes the functorch Function: same result."""
    from dapkernels.ops import grl

    monkeypatch.setattr(grl, "functorch_active", lambda: True)
    x = torch.randn(4, 3, requires_grad=True)
    dk.grad_reverse(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, -0.5))
