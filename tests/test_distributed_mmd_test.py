"""``dk.metrics.mmd_test(..., process_group=...)`` on gloo ranks against one process.

Every rank holds a *different*, uneven shard of x and of y (one rank without y rows); the
result must be the one of a single process on the concatenations (rank order) with the same
generator seed: the same p-value and counts, the null within 1e-12 (float64), the statistic
within 1e-12 of ``dk.mmd``.  The collectives are counted: one status exchange, one gather of the
rows, one all-reduce of the statistics' ingredients per label chunk.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import dapkernels as dk
from dapkernels.distributed import DistributedInputError

from .distributed_utils import run_ranks

#: x and y row counts per rank (global n = 13, m = 11; wild: n = m = 16).
COUNTS = {2: ([5, 8], [11, 0]), 3: ([4, 0, 9], [3, 6, 2])}
WILD = {2: ([9, 7], [3, 13]), 3: ([6, 6, 4], [0, 10, 6])}
B = 60


def _data(n: int, m: int, d: int = 3, dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(m, d, generator=g, dtype=dtype) * 1.2 + 0.3
    return x, y


def _shard(t: torch.Tensor, counts, rank: int) -> torch.Tensor:
    a = sum(counts[:rank])
    return t[a:a + counts[rank]]


class _Count:
    """Counts the collectives ``torch.distributed`` is asked for while active."""

    NAMES = ("all_reduce", "all_gather", "all_gather_object", "broadcast")

    def __enter__(self):
        self.calls = {k: 0 for k in self.NAMES}
        self.saved = {k: getattr(dist, k) for k in self.NAMES}
        for k in self.NAMES:
            def wrap(*a, _k=k, **kw):
                self.calls[_k] += 1
                return self.saved[_k](*a, **kw)
            setattr(dist, k, wrap)
        return self

    def __exit__(self, *exc):
        for k, f in self.saved.items():
            setattr(dist, k, f)


def _same(res, ref, what: str) -> None:
    assert res.p_value == ref.p_value, (what, res.p_value, ref.p_value)
    assert res.reject == ref.reject, what
    assert res.null.shape == ref.null.shape, what
    assert float((res.null - ref.null).abs().max()) <= 1e-12 * float(ref.null.abs().max()), what
    assert int((res.null >= res.observed).sum()) == int((ref.null >= ref.observed).sum()), what
    assert abs(res.observed - ref.observed) <= 1e-12 * abs(ref.observed), what
    assert abs(res.statistic - ref.statistic) <= 1e-12 * abs(ref.statistic), (
        what, res.statistic, ref.statistic)
    if ref.per_kernel:
        for a, b in zip(res.per_kernel, ref.per_kernel):
            assert a.p_value == b.p_value and a.reject == b.reject, what
            assert abs(a.statistic - b.statistic) <= 1e-12 * abs(b.statistic), what


def _run(x, y, cx, cy, rank, method, **kw):
    """(sharded result on this rank, one-process result), the same generator seed."""
    group = dist.group.WORLD
    res = dk.metrics.mmd_test(_shard(x, cx, rank), _shard(y, cy, rank), method=method,
                              num_permutations=B, generator=torch.Generator().manual_seed(11),
                              process_group=group, **kw)
    ref = dk.metrics.mmd_test(x, y, method=method, num_permutations=B,
                              generator=torch.Generator().manual_seed(11), **kw)
    # every rank holds the same result
    vals = torch.tensor([res.p_value, res.statistic, float(res.null.sum())], dtype=torch.float64)
    allv = [torch.empty_like(vals) for _ in range(dist.get_world_size())]
    dist.all_gather(allv, vals)
    assert all(torch.equal(v, allv[0]) for v in allv), (method, allv)
    return res, ref


def _tests(rank: int, world: int) -> None:
    cx, cy = COUNTS[world]
    x, y = _data(sum(cx), sum(cy))
    for est in ("unbiased", "biased"):
        with _Count() as count:
            res, ref = _run(x, y, cx, cy, rank, "permutation", estimator=est)
        _same(res, ref, f"permutation {est} W={world}")
        # status exchange + rows + one all-reduce of the statistics (+ the check above)
        assert count.calls == {"all_reduce": 1, "all_gather": 3, "all_gather_object": 0,
                               "broadcast": 0}, count.calls
    res, ref = _run(x, y, cx, cy, rank, "permutation",
                    kernels=dk.GaussianKernels(sigmas=[0.7, 1.9]))
    _same(res, ref, f"fixed sigmas W={world}")
    res, ref = _run(x, y, cx, cy, rank, "aggregated")
    _same(res, ref, f"aggregated W={world}")
    wx, wy = WILD[world]
    xw, yw = _data(sum(wx), sum(wy))
    for est in ("unbiased", "biased"):
        res, ref = _run(xw, yw, wx, wy, rank, "wild", estimator=est)
        _same(res, ref, f"wild {est} W={world}")
    # float32 shards: the engine runs in float64 up to EXACT_ROWS, so the counts still match
    res, ref = _run(x.float(), y.float(), cx, cy, rank, "permutation")
    assert res.p_value == ref.p_value
    assert abs(res.statistic - ref.statistic) <= 1e-5 * abs(ref.statistic)


def _bad(rank: int, world: int) -> None:
    group = dist.group.WORLD
    x, y = _data(8, 8)
    xs, ys = x[4 * rank:4 * rank + 4], y[4 * rank:4 * rank + 4]
    nan = xs.clone()
    nan[0, 0] = float("nan")

    def call(xx, yy, **kw):
        kw.setdefault("generator", torch.Generator().manual_seed(0))
        return dk.metrics.mmd_test(xx, yy, num_permutations=5, process_group=group, **kw)

    cases = [
        ("nan", lambda: call(nan if rank == 1 else xs, ys)),
        ("width", lambda: call(xs[:, :2] if rank == 1 else xs, ys[:, :2] if rank == 1 else ys)),
        ("seed", lambda: call(xs, ys, generator=torch.Generator().manual_seed(rank))),
        ("method", lambda: call(xs, ys, method="wild" if rank == 1 else "permutation")),
        ("block on one rank", lambda: call(xs, ys, method="block" if rank == 1 else
                                           "permutation")),
    ]
    for name, fn in cases:
        with pytest.raises(DistributedInputError) as info:
            fn()
        assert 1 in info.value.ranks, (name, info.value.ranks)
        assert "rank 1" in str(info.value), name
    for method in ("block", "linear"):  # on every rank: the message names process_group
        with pytest.raises(ValueError, match="not supported with process_group"):
            call(xs, ys, method=method)
    with pytest.raises(ValueError, match="not supported with process_group"):
        call(xs, ys, backend="cpu")
    # global sizes: wild needs n = m over all ranks; ≥ 2 rows per sample over all ranks
    with pytest.raises(ValueError, match="n = m"):
        call(xs, ys[:3], method="wild")
    with pytest.raises(ValueError, match="at least 2 rows"):
        call(xs, ys[:1] if rank == 0 else ys[:0])
    res = call(xs, ys)  # the group still works
    assert 0.0 < res.p_value <= 1.0


def _all(rank: int, world: int) -> None:
    _tests(rank, world)
    if world == 2:  # one spawn fewer: the error cases on the same two ranks
        _bad(rank, world)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_mmd_test_matches_one_process(world):
    """W = 3 checks the results; W = 2 the results, then bad input on one rank raising on
    every rank, block / linear / backend 'cpu' with a group raising, global size checks."""
    run_ranks(_all, world, timeout=60.0)


def test_rows_against_all_rows_adds_up_to_the_contract():
    """quadratic_forms_rows over a partition of the rows = the dense oracle."""
    from dapkernels.backends import reference_quadratic_forms as ref
    from dapkernels.backends.torch_quadratic_forms import quadratic_forms_rows

    g = torch.Generator().manual_seed(0)
    z = torch.randn(23, 3, dtype=torch.float64, generator=g)
    v = (torch.randint(0, 2, (23, 7), generator=g) * 2 - 1).to(torch.int8)
    gam = torch.tensor([0.1, 0.3, 0.9], dtype=torch.float64)
    for sum_bank in (True, False):
        q0, r0, _ = ref.quadratic_forms(z, gam, v, sum_bank)
        qa, ra = quadratic_forms_rows([z[:10], z[10:]], [(0, 5), (9, 9), (12, 23)], gam, v,
                                      sum_bank, tile=4)
        qb, rb = quadratic_forms_rows([z], [(5, 12)], gam, v, sum_bank, tile=3)
        assert torch.allclose(qa + qb, q0, rtol=1e-13, atol=1e-13)
        rows = torch.cat([ra[:, :5], rb, ra[:, 5:]], 1)
        assert torch.allclose(rows, r0, rtol=1e-13, atol=1e-13)
