"""The eager autograd glue of the fused ops (``dapkernels/ops/_autograd.py``).

Backward hands back the stored gradient itself when ``grad_output`` is exactly 1 and scales
it otherwise; these tests pin down that every route gives the right numbers and that reusing
a retained graph after an in-place change of a returned gradient is an error, not garbage.
"""

from __future__ import annotations

import pytest
import torch

import dapkernels as dk

LOSSES = {
    "mmd": lambda s, t: dk.mmd(s, t, backend="cpu"),
    "jmmd": lambda s, t: dk.jmmd([s, s.tanh()], [t, t.tanh()], backend="cpu"),
    "coral": lambda s, t: dk.coral(s, t, backend="cpu"),
}


def _inputs(dtype=torch.float64):
    gen = torch.Generator().manual_seed(11)
    s = torch.randn(9, 6, generator=gen, dtype=dtype).requires_grad_()
    t = (torch.randn(7, 6, generator=gen, dtype=dtype) + 0.5).requires_grad_()
    return s, t


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("scale", [1.0, 2.5, -0.75, 0.0])
def test_gradient_scales_with_grad_output(name, scale):
    s, t = _inputs()
    loss = LOSSES[name]
    g1 = torch.autograd.grad(loss(s, t), (s, t))
    gk = torch.autograd.grad(loss(s, t), (s, t), grad_outputs=torch.tensor(scale,
                                                                           dtype=s.dtype))
    for a, b in zip(g1, gk):
        torch.testing.assert_close(b, scale * a, rtol=1e-12, atol=1e-15)
    # the same through a scalar multiple of the loss, and into .grad (AccumulateGrad)
    (scale * loss(s, t)).backward()
    for x, a in zip((s, t), g1):
        torch.testing.assert_close(x.grad, scale * a, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_accumulating_twice_adds(name):
    s, t = _inputs()
    loss = LOSSES[name]
    g1 = torch.autograd.grad(loss(s, t), (s, t))
    loss(s, t).backward()
    loss(s, t).backward()
    for x, a in zip((s, t), g1):
        torch.testing.assert_close(x.grad, 2 * a, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_changed_gradient_then_retained_backward_is_never_silent(name):
    """A returned gradient may share storage with what the node saved (``grad_output = 1``).

    Changing it in place and then backpropagating through the retained graph again must either
    raise autograd's in-place error or give the original gradient, never the changed values.
    (For MMD and CORAL the direct return is shared and the second pass raises; JMMD's
    gradient w.r.t. ``s`` is a sum over its two layers, a fresh tensor, so it just works.)
    """
    s, t = _inputs()
    value = LOSSES[name](s, t)
    gs, _ = torch.autograd.grad(value, (s, t), retain_graph=True)
    expected = gs.clone()
    gs.mul_(3.0)
    try:
        again, _ = torch.autograd.grad(value, (s, t))
    except RuntimeError as err:
        assert "modified by an inplace operation" in str(err)
        assert name in ("mmd", "coral")
    else:
        torch.testing.assert_close(again, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_retained_graph_gives_the_same_gradient_twice(name):
    s, t = _inputs()
    value = LOSSES[name](s, t)
    first = [g.clone() for g in torch.autograd.grad(value, (s, t), retain_graph=True)]
    second = torch.autograd.grad(value, (s, t))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_grad_output_in_a_graph_keeps_its_edge(name):
    """With create_graph=True and a grad_output that needs grad, d(Σ ∂L/∂s · v)/dv = Σ ∂L/∂s."""
    s, t = _inputs()
    g_plain = torch.autograd.grad(LOSSES[name](s, t), s)[0]
    v = torch.ones((), dtype=s.dtype, requires_grad=True)
    gs = torch.autograd.grad(LOSSES[name](s, t), s, grad_outputs=v, create_graph=True)[0]
    (dv,) = torch.autograd.grad(gs.sum(), v)
    torch.testing.assert_close(dv, g_plain.sum(), rtol=1e-12, atol=1e-15)
