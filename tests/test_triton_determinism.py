"""Triton routes under ``torch.use_deterministic_algorithms(True)``.

Routes whose float atomics are added by several programs (the MMD flash / wide / sweep kernels
with more than one row block) raise as torch's own nondeterministic kernels do (a warning with
``warn_only=True``); the one-launch small routes have no atomics and run; the pack kernel runs
as one program; CORAL's two-kernel Gram split takes the torch formula instead.  Under the
interpreter on CPU tensors (or compiled on a GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

import dapkernels as dk  # noqa: E402
from dapkernels.backends import get  # noqa: E402
from dapkernels.backends.triton import coral as triton_coral  # noqa: E402

from .launches import record_launches  # noqa: E402

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = "cuda" if ON_GPU else "cpu"
TRITON = get("triton")


@pytest.fixture
def deterministic():
    before, warn = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn)


def _batch(n, m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, d, generator=g).to(DEVICE).requires_grad_()
    t = (torch.randn(m, d, generator=g) + 0.3).to(DEVICE).requires_grad_()
    return s, t


def _run_twice(loss, s, t):
    out = []
    for _ in range(2):
        value = loss(s, t)
        out.append((value.detach().clone(), *torch.autograd.grad(value, (s, t))))
    return out


def _bitwise_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("n,m,d,layers", [
    (70, 60, 17, 1),    # flash: 3 row blocks
    (40, 31, 300, 1),   # wide: row blocks × column splits
    (50, 40, 5, 2),     # JMMD sweep: 2 row blocks
])
def test_atomic_mmd_routes_raise(deterministic, n, m, d, layers):
    s, t = _batch(n, m, d)
    with pytest.raises(RuntimeError, match="dapkernels.*triton .* route"):
        dk.jmmd([s] * layers, [t] * layers, backend="triton")


def test_atomic_route_warns_with_warn_only():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        s, t = _batch(70, 60, 17)
        with pytest.warns(UserWarning, match="flash route"):
            value = dk.mmd(s, t, backend="triton")
        assert torch.isfinite(value)
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("n,m,d,layers", [
    (20, 24, 33, 1),   # one mmd_small_kernel launch
    (9, 14, 1000, 1),  # mmd_small_kernel, wide rows
    (20, 30, 5, 2),    # JMMD: one row block of mmd_sweep_kernel, one pack program
])
def test_one_program_mmd_routes_run_and_repeat_bitwise(deterministic, n, m, d, layers):
    s, t = _batch(n, m, d)

    def loss(a, b):
        return dk.jmmd([a] * layers, [b] * layers, backend="triton")

    first, second = _run_twice(loss, s, t)
    assert _bitwise_equal(first, second)
    ref = dk.jmmd([s.detach().cpu().double()] * layers, [t.detach().cpu().double()] * layers,
                  backend="reference")
    assert abs(float(first[0]) - float(ref)) < 1e-4


def test_pack_kernel_is_one_program_when_deterministic(deterministic, monkeypatch):
    """mmd_prep_kernel's column statistics: one program under the flag (atomic adds onto zeros,
    each once), several without it."""
    from dapkernels.backends.triton import mmd as host
    from dapkernels.backends.triton.configs import PREP_BLOCK_R

    grids = []
    real = host.K.mmd_prep_kernel

    class Spy:
        def __getitem__(self, grid):
            grids.append(grid)
            return real[grid]

    monkeypatch.setattr(host.K, "mmd_prep_kernel", Spy())
    z = torch.randn(150, 3, device=DEVICE)
    zp = torch.empty(150, 32, device=DEVICE)
    sq = torch.empty(150, device=DEVICE)
    stats = torch.zeros(4, dtype=torch.float64, device=DEVICE)
    host._prep(z, zp, sq, stats, 3, 32, 0)
    torch.use_deterministic_algorithms(False)
    host._prep(z, zp, sq, torch.zeros_like(stats), 3, 32, 0)
    assert grids == [(1,), (-(-150 // PREP_BLOCK_R),)]  # one program; one per row block
    torch.testing.assert_close(stats[:3], z.double().sub(z[:1].double()).sum(0), rtol=1e-6,
                               atol=1e-5)


@pytest.mark.parametrize("d", [40, 2100])  # one-launch kernel; the Gram split's replacement
def test_coral_routes_run_and_repeat_bitwise(deterministic, d, monkeypatch):
    s, t = _batch(12, 10, d, seed=3)
    split = []
    monkeypatch.setattr(triton_coral, "_split_columns",
                        lambda *a: split.append(1) or pytest.fail("atomic Gram split launched"))
    first, second = _run_twice(lambda a, b: dk.coral(a, b, backend="triton"), s, t)
    assert _bitwise_equal(first, second) and not split
    ref = dk.coral(s.detach().cpu().double(), t.detach().cpu().double(), backend="reference")
    assert abs(float(first[0]) - float(ref)) <= 1e-5 * float(ref)


def test_coral_split_still_used_without_the_flag(monkeypatch):
    from dapkernels.backends.triton import coral_kernels

    s, t = _batch(12, 10, 2100, seed=3)
    with record_launches(monkeypatch, coral_kernels, ["coral_gram_kernel"]) as record:
        dk.coral(s, t, backend="triton")
    assert record.launches == ["coral_gram_kernel"]
