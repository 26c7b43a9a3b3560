"""Gradient reversal: eager, functorch transforms, double backward, compile, schedule, DDP."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import dapkernels as dk
from dapkernels.baselines import naive_grad_reverse


@pytest.mark.parametrize("coeff", [1.0, 0.37, -2.0, torch.tensor(0.37), torch.tensor(-2.0)])
def test_backward_is_minus_coeff_grad(coeff):
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    (dk.grad_reverse(x, coeff) * w).sum().backward()
    c = float(coeff)
    assert torch.equal(x.grad, w * -c)
    x2 = x.detach().clone().requires_grad_()
    (naive_grad_reverse(x2, c) * w).sum().backward()
    assert torch.equal(x.grad, x2.grad)


def test_forward_is_a_view_without_copy():
    x = torch.randn(4, 6, requires_grad=True)
    y = dk.grad_reverse(x, 0.5)
    assert y.data_ptr() == x.data_ptr() and y.shape == x.shape and torch.equal(y, x)
    assert y.requires_grad and y.grad_fn is not None


def test_tensor_coeff_gets_no_grad():
    c = torch.tensor(0.5, requires_grad=True)
    x = torch.randn(3, requires_grad=True)
    dk.grad_reverse(x, c).sum().backward()
    assert c.grad is None and torch.equal(x.grad, torch.full((3,), -0.5))


@pytest.mark.parametrize(
    "coeff, exc", [(torch.ones(2), ValueError), ("1", TypeError), (None, TypeError)]
)
def test_bad_coeff(coeff, exc):
    with pytest.raises(exc, match="coeff"):
        dk.grad_reverse(torch.randn(2), coeff)


def test_func_grad_and_vmap_are_exact():
    x = torch.randn(7)
    w = torch.randn(7)
    for coeff in (0.3, torch.tensor(1.7)):
        g = torch.func.grad(lambda v, c=coeff: (dk.grad_reverse(v, c) * w).sum())(x)
        assert torch.equal(g, -float(coeff) * w)
    xs = torch.randn(4, 7)
    per_sample = torch.func.vmap(
        torch.func.grad(lambda v: (dk.grad_reverse(v, 0.3) * w).square().sum())
    )(xs)
    assert torch.allclose(per_sample, -0.3 * 2 * (xs * w) * w, rtol=0, atol=1e-6)
    jac = torch.func.jacrev(lambda v: dk.grad_reverse(v, 2.0))(x)
    assert torch.equal(jac, -2.0 * torch.eye(7))


def test_double_backward():
    """∂/∂x of the reversed gradient: the factor −coeff is applied once per backward pass."""
    x = torch.randn(5, requires_grad=True)
    y = dk.grad_reverse(x, 0.5)
    (g,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    assert torch.allclose(g, -0.5 * 3 * x.detach() ** 2)
    (h,) = torch.autograd.grad(g.sum(), x)
    # g = −0.5 · 3 y², and y is the reversal of x again on this second pass
    assert torch.allclose(h, (-0.5) * (-0.5) * 6 * x.detach())


def test_modules():
    x = torch.randn(3, 2, requires_grad=True)
    layer = dk.GradientReversal(torch.tensor(0.25))
    assert "coeff" in dict(layer.named_buffers())
    layer(x).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, -0.25))
    assert "coeff=1.0" in repr(dk.GradientReversal())


def _schedule(i, alpha, lo, hi, max_iters):
    return 2.0 * (hi - lo) / (1.0 + math.exp(-alpha * i / max_iters)) - (hi - lo) + lo


def test_warm_start_schedule_step_and_state_dict():
    grl = dk.WarmStartGradientReversal(alpha=10.0, lo=0.1, hi=0.9, max_iters=50)
    assert grl.coeff == pytest.approx(0.1)
    values = []
    for i in range(120):
        assert grl.coeff == pytest.approx(_schedule(i, 10.0, 0.1, 0.9, 50), abs=1e-15)
        x = torch.randn(3, requires_grad=True)
        grl(x).sum().backward()
        assert torch.allclose(x.grad, torch.full((3,), -grl.coeff), rtol=1e-6)
        values.append(grl.coeff)
        grl.step()
    assert all(b > a for a, b in zip(values, values[1:])) and values[-1] < 0.9
    state = grl.state_dict()
    assert int(state["num_iters"]) == 120
    fresh = dk.WarmStartGradientReversal(alpha=10.0, lo=0.1, hi=0.9, max_iters=50)
    fresh.load_state_dict(state)
    assert int(fresh.num_iters) == 120 and fresh.coeff == grl.coeff


def test_warm_start_clamp_and_auto_step():
    clamped = dk.WarmStartGradientReversal(alpha=1.0, max_iters=10, clamp=True, auto_step=True)
    x = torch.randn(2, requires_grad=True)
    for i in range(25):
        x.grad = None
        clamped(x).sum().backward()  # auto_step: call i uses coeff(i), then steps
        assert torch.allclose(x.grad, torch.full((2,), -clamped.coeff_at(i)), rtol=1e-6)
    assert int(clamped.num_iters) == 25
    assert clamped.coeff == pytest.approx(_schedule(10, 1.0, 0.0, 1.0, 10))
    assert clamped.coeff_at(1000) == clamped.coeff_at(10)
    free = dk.WarmStartGradientReversal(alpha=1.0, max_iters=10)
    assert free.coeff_at(25) > free.coeff_at(10)
    with pytest.raises(ValueError, match="max_iters"):
        dk.WarmStartGradientReversal(max_iters=0)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))


def test_compile_fullgraph_tensor_coeff_no_recompile():
    torch._dynamo.reset()
    net = _mlp()
    coeff = torch.tensor(0.1)

    def step(x, c):
        return net(dk.grad_reverse(x, c)).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 6, requires_grad=True)
    compiled(x, coeff).backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for v in (0.2, 0.7, -1.5):
            coeff.fill_(v)
            x.grad = None
            compiled(x, coeff).backward()
            g_c = x.grad.clone()
            x.grad = None
            step(x, coeff).backward()
            assert torch.allclose(g_c, x.grad, rtol=1e-6, atol=1e-7)


def test_compile_warm_start_step_outside_no_recompile():
    torch._dynamo.reset()
    torch.manual_seed(0)
    grl = dk.WarmStartGradientReversal(max_iters=5)
    model = nn.Sequential(nn.Linear(6, 8), grl, nn.Linear(8, 1))
    plain = nn.Sequential(model[0], model[2])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 6)
    compiled(x).sum().backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(4):
            grl.step()
            model.zero_grad()
            compiled(x).sum().backward()
            reversed_grad = model[0].weight.grad.clone()
            model.zero_grad()
            plain(x).sum().backward()
            assert torch.allclose(reversed_grad, -grl.coeff * model[0].weight.grad, rtol=1e-5)


def test_compile_refuses_auto_step():
    grl = dk.WarmStartGradientReversal(auto_step=True)
    with pytest.raises(Exception, match="auto_step"):
        torch.compile(grl, fullgraph=True, backend="eager")(torch.randn(3, requires_grad=True))


# ---- DDP (gloo, 2 processes) -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    head = nn.Linear(6, 1)
    body = nn.Linear(4, 6)
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(body, dk.GradientReversal(torch.tensor(0.5)), head)
    )
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(rank))
    model(x).square().sum().backward()
    queue.put((rank, body.weight.grad.tolist(), head.weight.grad.tolist()))
    dist.destroy_process_group()


def test_ddp_gloo_two_processes():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(
        _ddp_worker, args=(2, _free_port(), queue), nprocs=2, join=True, start_method="spawn"
    )
    grads = {r: (torch.tensor(b), torch.tensor(h)) for r, b, h in (queue.get() for _ in range(2))}
    # expected: the all-reduced (mean) gradient of the plain network, body part times −0.5
    torch.manual_seed(0)
    head, body = nn.Linear(6, 1), nn.Linear(4, 6)
    for rank in range(2):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(rank))
        (head(body(x)).square().sum() / 2).backward()
    for b, h in grads.values():
        assert torch.allclose(b, -0.5 * body.weight.grad, rtol=1e-5, atol=1e-6)
        assert torch.allclose(h, head.weight.grad, rtol=1e-5, atol=1e-6)
