"""Global-batch losses over gloo ranks: values and gradients against one process.

Every rank holds *different* rows (slices of one global batch, uneven counts, a rank with no
target rows), so a gradient that is not sum-reduced, off by the world size, or crossing ranks
wrongly shows up (a symmetric test would not catch it).  Convention checked: each rank's rows
receive ``W · ∂L_global/∂z_local``.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.distributed as dist

import dapkernels as dk
from dapkernels.distributed import DistributedInputError

from .distributed_utils import run_ranks

COUNTS = {2: ([3, 5], [4, 2]), 3: ([3, 5, 2], [4, 0, 6])}


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, what: str) -> None:
    scale = max(float(b.abs().max()), 1e-300)
    err = float((a.double() - b.double()).abs().max()) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


def _data(counts_s, counts_t, dims, dtype=torch.float64):
    g = torch.Generator().manual_seed(1234)
    S = [torch.randn(sum(counts_s), d, generator=g, dtype=dtype) * 1.5 + 3.0 for d in dims]
    T = [torch.randn(sum(counts_t), d, generator=g, dtype=dtype) + 3.5 for d in dims]
    return S, T


def _local(x: torch.Tensor, counts, rank):
    a = sum(counts[:rank])
    return x[a: a + counts[rank]]


def _compare(rank, world, fn, S, T, counts_s, counts_t, rtol_value, rtol_grad, what):
    """``fn(sources, targets, group)`` on the global batch (group None) vs on the slices."""
    Sg = [s.clone().requires_grad_() for s in S]
    Tg = [t.clone().requires_grad_() for t in T]
    ref = fn(Sg, Tg, None)
    ref.backward()
    sl = [_local(s, counts_s, rank).clone().requires_grad_() for s in S]
    tl = [_local(t, counts_t, rank).clone().requires_grad_() for t in T]
    out = fn(sl, tl, dist.group.WORLD)
    vals = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
    dist.all_gather(vals, out.detach().double().reshape(()).contiguous())
    assert all(float(v) == float(vals[0]) for v in vals), f"{what}: ranks differ {vals}"
    _close(out.detach(), ref.detach(), rtol_value, f"{what} value")
    out.backward()
    for x, xg, counts in [*zip(sl, Sg, [counts_s] * len(sl)), *zip(tl, Tg, [counts_t] * len(tl))]:
        if x.shape[0] == 0:
            continue
        _close(x.grad, world * _local(xg.grad, counts, rank), rtol_grad, f"{what} gradient")


def _mmd(s, t, g, kernels=None, est="unbiased", backend=None):
    return dk.mmd(s[0], t[0], kernels, est, backend, process_group=g)


def _jmmd(s, t, g, kernels=None, est="unbiased", backend=None):
    return dk.jmmd(s, t, kernels, est, backend, process_group=g)


def _mmd_module(s, t, g, est="unbiased", backend=None):
    return dk.MMDLoss(estimator=est, backend=backend, process_group=g)(s[0], t[0])


def _coral(s, t, g, backend=None):
    return dk.coral(s[0], t[0], backend=backend, process_group=g)


def _losses(rank: int, world: int) -> None:
    counts_s, counts_t = COUNTS[world]
    S, T = _data(counts_s, counts_t, (5, 3))
    banks = [dk.GaussianKernels(), dk.GaussianKernels(sigmas=[0.92, 2.0])]
    for backend in ("cpu", "reference"):
        for est in ("unbiased", "biased"):
            tag = f"W={world} {backend} {est}"
            losses = {
                "mmd": (partial(_mmd, est=est, backend=backend), 1),
                "mmd fixed sigmas": (partial(_mmd, kernels=banks[1], est=est,
                                             backend=backend), 1),
                "jmmd": (partial(_jmmd, kernels=banks, est=est, backend=backend), 2),
                "MMDLoss": (partial(_mmd_module, est=est, backend=backend), 1),
            }
            for name, (fn, layers) in losses.items():
                _compare(rank, world, fn, S[:layers], T[:layers], counts_s, counts_t, 1e-9,
                         1e-9, f"{name} {tag}")
        _compare(rank, world, partial(_coral, backend=backend), S[:1], T[:1], counts_s,
                 counts_t, 1e-9, 1e-9, f"coral W={world} {backend}")
    _compare(rank, world, lambda s, t, g: dk.coral(s[0], t[0], log=True, process_group=g),
             S[:1], T[:1], counts_s, counts_t, 1e-9, 1e-7, f"log coral W={world}")
    _compare(rank, world, lambda s, t, g: dk.JMMDLoss(banks, process_group=g)(s, t),
             S, T, counts_s, counts_t, 1e-9, 1e-9, f"JMMDLoss W={world}")
    _compare(rank, world, lambda s, t, g: dk.CORALLoss(process_group=g)(s[0], t[0]),
             S[:1], T[:1], counts_s, counts_t, 1e-9, 1e-9, f"CORALLoss W={world}")
    if world == 3:  # a rank without any row
        cs0, ct0 = [4, 0, 3], [2, 0, 5]
        S0, T0 = _data(cs0, ct0, (5, 3))
        for backend in ("cpu", "reference"):
            _compare(rank, world, partial(_jmmd, kernels=banks, backend=backend), S0, T0, cs0,
                     ct0, 1e-9, 1e-9, f"jmmd empty rank {backend}")
        _compare(rank, world, _coral, S0[:1], T0[:1], cs0, ct0, 1e-9, 1e-9, "coral empty rank")
    # linear estimator: equal global batches, pairs cross rank boundaries
    lin_t = [sum(counts_s) - sum(counts_t[1:])] + counts_t[1:]
    S1, T1 = _data(counts_s, lin_t, (4,))
    _compare(rank, world, lambda s, t, g: dk.mmd(s[0], t[0], estimator="linear",
                                                 process_group=g),
             S1, T1, counts_s, lin_t, 1e-9, 1e-9, f"linear W={world}")
    # float32 features: float32 sweep with float64 sums, against the float64 global value
    S32, T32 = [s.float() for s in S], [t.float() for t in T]
    for est in ("unbiased", "biased"):
        sl = _local(S32[0], counts_s, rank).clone().requires_grad_()
        tl = _local(T32[0], counts_t, rank).clone().requires_grad_()
        out = dk.mmd(sl, tl, estimator=est, process_group=dist.group.WORLD)
        assert out.dtype == torch.float32
        _close(out.detach(), dk.mmd(S[0], T[0], estimator=est, backend="reference"), 1e-5,
               f"float32 mmd {est}")
        out.backward()
        Sg = S[0].clone().requires_grad_()
        dk.mmd(Sg, T[0], estimator=est, backend="reference").backward()
        _close(sl.grad, world * _local(Sg.grad, counts_s, rank), 1e-4, "float32 gradient")
    out = dk.coral(_local(S32[0], counts_s, rank), _local(T32[0], counts_t, rank),
                   process_group=dist.group.WORLD)
    assert out.dtype == torch.float32
    _close(out, dk.coral(S[0], T[0], backend="reference"), 1e-5, "float32 coral")


def _dann(rank: int, world: int) -> None:
    counts_s, counts_t = COUNTS[world]
    S, T = _data(counts_s, counts_t, (4,))
    torch.manual_seed(0)
    disc = dk.DomainDiscriminator(4, 8, batch_norm=False).double().eval()
    grl = dk.GradientReversal(1.0)
    local_loss = dk.DomainAdversarialLoss(disc, grl)
    global_loss = dk.DomainAdversarialLoss(disc, grl, process_group=dist.group.WORLD)
    _compare(rank, world, lambda s, t, g: (local_loss if g is None else global_loss)(s[0], t[0]),
             S, T, counts_s, counts_t, 1e-12, 1e-10, f"dann W={world}")
    local_loss(S[0], T[0])
    acc = global_loss.domain_accuracy
    assert abs(float(acc) - float(local_loss.domain_accuracy)) < 1e-12
    # under no_grad: same value, no graph, no gradient work
    x = _local(S[0], counts_s, rank).clone().requires_grad_()
    y = _local(T[0], counts_t, rank).clone().requires_grad_()
    for fn in (dk.mmd, dk.coral):
        with torch.no_grad():
            a = fn(x, y, process_group=dist.group.WORLD)
        b = fn(x, y, process_group=dist.group.WORLD)
        assert not a.requires_grad and b.requires_grad
        assert float(a) == float(b.detach())


def _bad_rank(rank: int, world: int) -> None:
    """Invalid input on rank 1 only: every rank raises naming rank 1; nothing hangs, and the
    group still works afterwards."""
    group = dist.group.WORLD
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(5, 3, dtype=torch.float64)
    bad_nan = x.clone()
    bad_nan[0, 0] = float("nan")
    cases = [
        ("nan", lambda: dk.mmd(bad_nan if rank == 1 else x, y, process_group=group)),
        ("width", lambda: dk.mmd(torch.randn(4, 2 if rank == 1 else 3, dtype=torch.float64),
                                 torch.randn(5, 2 if rank == 1 else 3, dtype=torch.float64),
                                 process_group=group)),
        ("mismatch", lambda: dk.mmd(x, torch.randn(5, 2 if rank == 1 else 3,
                                                   dtype=torch.float64), process_group=group)),
        ("coral nan", lambda: dk.coral(bad_nan if rank == 1 else x, y, process_group=group)),
        ("coral width", lambda: dk.coral(x[:, : 2 if rank == 1 else 3],
                                         y[:, : 2 if rank == 1 else 3], process_group=group)),
        ("jmmd layers", lambda: dk.jmmd([x] * (2 if rank == 1 else 1),
                                        [y] * (2 if rank == 1 else 1), process_group=group)),
    ]
    for name, call in cases:
        with pytest.raises(DistributedInputError) as info:
            call()
        assert 1 in info.value.ranks, (name, info.value.ranks)
        assert "rank 1" in str(info.value), name
    # estimator checks on the global sizes raise on every rank alike
    with pytest.raises(ValueError, match="unbiased"):
        dk.mmd(x[:1] if rank == 0 else x[:0], y, process_group=group)
    value = dk.mmd(x, y, process_group=group)
    assert torch.isfinite(value)


@pytest.mark.parametrize("world", [2, 3])
def test_global_losses_match_one_process(world):
    run_ranks(_losses, world)


def test_dann_global_means():
    run_ranks(_dann, 2)


def test_bad_input_on_one_rank_raises_everywhere():
    run_ranks(_bad_rank, 2, timeout=60.0)


def test_no_group_keeps_local_behaviour():
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.randn(7, 4)
    assert torch.equal(dk.mmd(x, y, process_group=None), dk.mmd(x, y))
    assert torch.equal(dk.coral(x, y, process_group=None), dk.coral(x, y))
    assert torch.equal(dk.jmmd([x], [y], process_group=None), dk.jmmd([x], [y]))


def test_rectangular_sweep_chunks_and_plans():
    """rows_vs_cols against the dense float64 formula: chunking, the exp-squaring plan
    (2^k-spaced γ) and plain γ, self pairs, two layers."""
    from dapkernels.distributed.mmd import exp_plan, rows_vs_cols

    assert [k for k, _ in exp_plan([1.0, 2.0, 8.0, 3.0], torch.float64)] == [0, 1, 0, 0]
    assert [k for k, _ in exp_plan([0.5, 1.0, 2.0, 4.0, 8.0], torch.float32)] == [0, 1, 1, 1, 1]
    g = torch.Generator().manual_seed(3)
    z = [torch.randn(9, 4, generator=g, dtype=torch.float64),
         torch.randn(9, 2, generator=g, dtype=torch.float64)]
    gams = [[0.05, 0.1, 0.2, 0.4], [0.3, 0.7]]
    weights = (0.3, -0.2, 0.5)
    n = 4
    rows = torch.tensor([1, 5, 6])
    dense = []
    for zl, gl in zip(z, gams):
        d2 = ((zl[:, None] - zl[None]) ** 2).sum(-1)
        dense.append(sum(torch.exp(-gq * d2) for gq in gl))
    k = dense[0] * dense[1]
    dom = torch.arange(9) < n
    wv = torch.tensor(weights, dtype=torch.float64)
    w = torch.where(dom[:, None] & dom[None], wv[0],
                    torch.where(~dom[:, None] & ~dom[None], wv[2], wv[1]))
    expect = torch.stack([k[rows][:, :n][dom[rows]].sum(),
                          k[rows][:, n:][dom[rows]].sum() + k[rows][:, :n][~dom[rows]].sum(),
                          k[rows][:, n:][~dom[rows]].sum()])
    zz = [zl.clone().requires_grad_() for zl in z]
    d2s = [((zl[:, None] - zl[None]) ** 2).sum(-1) for zl in zz]
    kk = [sum(torch.exp(-gq * d2) for gq in gl) for d2, gl in zip(d2s, gams)]
    (w * kk[0] * kk[1]).sum().backward()
    for chunk, col_chunk in ((1, 1), (2, 3), (2, None), (None, 5), (None, None)):
        part, grads = rows_vs_cols([zl[rows] for zl in z], rows < n, z, n, gams, weights, True,
                                   self_col=rows, chunk=chunk, col_chunk=col_chunk)
        assert torch.allclose(part, expect, rtol=1e-12, atol=0)
        for gr, zl in zip(grads, zz):
            err = float((gr - zl.grad[rows]).abs().max())
            assert err <= 1e-12, err
