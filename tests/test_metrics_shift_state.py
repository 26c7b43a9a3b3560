"""DomainShift: estimates against direct float64 formulas, merging, state_dict, standard errors
against Monte-Carlo spread, bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch

import dapkernels as dk
from dapkernels.metrics import DomainShift, block_mmd_test


def _data(n, m, d, seed=0, dtype=torch.float64):
    """x ~ N(0, I); y = N(0, I)·A + 0.2 with A fixed per d (so replicates share one law)."""
    fixed = torch.Generator().manual_seed(d)
    a = torch.randn(d, d, generator=fixed, dtype=torch.float64) * 0.3 + torch.eye(d)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) @ a + 0.2
    return x.to(dtype), y.to(dtype)


def _feed(shift, x, y, sizes_x, sizes_y):
    """Feeds x and y in the given (cycled) batch sizes, source and target interleaved."""
    i = j = k = 0
    while i < x.shape[0] or j < y.shape[0]:
        bx, by = sizes_x[k % len(sizes_x)], sizes_y[k % len(sizes_y)]
        src = x[i:i + bx] if i < x.shape[0] else None
        tgt = y[j:j + by] if j < y.shape[0] else None
        shift.update(source=src, target=tgt)
        i, j, k = i + bx, j + by, k + 1
    return shift


def test_compute_matches_direct_formulas():
    x, y = _data(1500, 1300, 5, seed=1)
    out = _feed(DomainShift(block_size=50), x, y, [37, 120], [64, 9]).compute()
    n, m, d = 1500, 1300, 5
    mu_s, mu_t = x.mean(0), y.mean(0)
    cs = (x - mu_s).T @ (x - mu_s) / (n - 1)
    ct = (y - mu_t).T @ (y - mu_t) / (m - 1)
    assert out["num_source"] == n and out["num_target"] == m
    assert out["mean_shift"] == pytest.approx(float(((mu_s - mu_t) ** 2).sum()), rel=1e-12)
    assert out["coral"] == pytest.approx(float(dk.coral(x, y)), rel=1e-10)
    v = cs / n + ct / m
    delta = mu_s - mu_t
    ms_se = math.sqrt(4 * float(delta @ v @ delta) + 2 * float(torch.trace(v @ v)))
    assert out["mean_shift_se"] == pytest.approx(ms_se, rel=1e-10)
    diff = cs - ct
    q_s = torch.stack([(r - mu_s) @ diff @ (r - mu_s) for r in x[:1000]])
    q_t = torch.stack([(r - mu_t) @ diff @ (r - mu_t) for r in y[:1000]])
    coral_se = math.sqrt(float(q_s.var()) / n + float(q_t.var()) / m) / (2 * d * d)
    assert out["coral_se"] == pytest.approx(coral_se, rel=1e-10)
    ref = block_mmd_test(x, y, block_size=50)
    assert out["num_blocks"] == ref.num_blocks == 26
    assert out["mmd"] == pytest.approx(ref.statistic, rel=1e-12)
    assert out["mmd_se"] == pytest.approx(ref.std_error, rel=1e-10)
    assert out["mmd_p_value"] == pytest.approx(ref.p_value, rel=1e-8)
    # the blocks themselves, independently: dk.mmd of each 50-row block with the pilot bandwidths
    z = torch.cat([x[:1000], y[:1000]])
    mean_d2 = float(((z[:, None] - z[None]) ** 2).sum(-1).mean())
    bank = dk.GaussianKernels(sigmas=[math.sqrt(a * mean_d2) for a in (1 / 8, 1 / 4, 1 / 2, 1, 2)])
    etas = torch.stack([dk.mmd(x[i:i + 50], y[i:i + 50], bank) for i in range(0, 1300, 50)])
    assert out["mmd"] == pytest.approx(float(etas.mean()), rel=1e-10)


def _close(a: dict, b: dict, rel=1e-9):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-14), key


def test_merge_equals_single_pass_fixed_bank():
    x, y = _data(900, 700, 4, seed=2, dtype=torch.float32)
    bank = dk.GaussianKernels(sigmas=[1.0, 2.5])
    single = _feed(DomainShift(bank, block_size=25), x, y, [30], [70]).compute()
    # three workers; all but the last see a multiple of block_size rows per domain
    cuts_x, cuts_y = [0, 300, 600, 900], [0, 250, 500, 700]
    workers = [_feed(DomainShift(bank, block_size=25), x[a:b], y[c:e], [41], [13])
               for a, b, c, e in zip(cuts_x, cuts_x[1:], cuts_y, cuts_y[1:])]
    merged = DomainShift(bank, block_size=25)
    for w in workers:
        merged.merge(w)
    _close(merged.compute(), single)
    assert workers[1].compute()["num_source"] == 300  # merging left the others unchanged


def test_merge_equals_single_pass_relative_bank_when_first_pilot_complete():
    x, y = _data(1400, 1300, 3, seed=3)
    single = _feed(DomainShift(block_size=50), x, y, [100], [100]).compute()
    a = _feed(DomainShift(block_size=50), x[:1100], y[:1050], [100], [75])
    b = _feed(DomainShift(block_size=50), x[1100:], y[1050:], [60], [60])  # < 1000 rows: no pilot
    assert a.sigma2 is not None and b.sigma2 is None
    _close(a.merge(b).compute(), single)


def test_merge_refuses_different_bandwidths_and_settings():
    x, y = _data(1200, 1200, 3, seed=4)
    a = _feed(DomainShift(block_size=50), x, y, [200], [200])
    b = _feed(DomainShift(block_size=50), y, x, [200], [200])
    with pytest.raises(ValueError, match="bandwidths differ"):
        a.merge(b)
    with pytest.raises(ValueError, match="block_size"):
        a.merge(DomainShift(block_size=40).update(source=x[:5], target=y[:5]))
    with pytest.raises(TypeError, match="DomainShift"):
        a.merge(object())


def test_state_dict_round_trip_mid_stream():
    x, y = _data(800, 800, 4, seed=5, dtype=torch.float32)
    full = _feed(DomainShift(block_size=30), x, y, [70], [45]).compute()
    first = _feed(DomainShift(block_size=30), x[:430], y[:395], [70], [45])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = DomainShift(block_size=30)
    resumed.load_state_dict(torch.load(buf))
    _close(_feed(resumed, x[430:], y[395:], [70], [45]).compute(), full)
    with pytest.raises(ValueError, match="block_size"):
        DomainShift(block_size=31).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="kernels"):
        DomainShift(dk.GaussianKernels(sigmas=[1.0]), block_size=30).load_state_dict(
            first.state_dict())


def test_reset():
    x, y = _data(100, 100, 3, seed=6)
    s = DomainShift(block_size=10).update(source=x, target=y)
    s.reset()
    with pytest.raises(ValueError, match="at least 2 rows"):
        s.compute()
    s.update(source=x, target=y)
    assert s.compute()["num_source"] == 100


def test_standard_errors_match_monte_carlo_spread():
    """Over 120 independent replicates the reported SEs are within 30 % of the actual sd."""
    bank = dk.GaussianKernels(sigmas=[1.5, 3.0])
    outs = []
    for rep in range(120):
        x, y = _data(600, 600, 3, seed=1000 + rep)
        outs.append(DomainShift(bank, block_size=30).update(source=x, target=y).compute())
    for key in ("mmd", "coral", "mean_shift"):
        values = torch.tensor([o[key] for o in outs], dtype=torch.float64)
        mean_se = sum(o[key + "_se"] for o in outs) / len(outs)
        assert mean_se == pytest.approx(float(values.std()), rel=0.3), key


def test_bad_input_raises_naming_the_argument():
    x, y = _data(50, 50, 4, seed=7)
    s = DomainShift(block_size=10)
    with pytest.raises(ValueError, match="source has d=4, target has d=3"):
        s.update(source=x, target=y[:, :3])
    s.update(source=x, target=y)
    with pytest.raises(ValueError, match="target has d=5"):
        s.update(target=torch.randn(10, 5, dtype=torch.float64))
    bad = y.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="target contains non-finite"):
        s.update(source=x, target=bad)
    nan = x.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="source contains non-finite"):
        s.update(source=nan)
    assert s.compute()["num_source"] == 50  # failed updates left the state unchanged
    with pytest.raises(TypeError, match="source must be a torch.Tensor"):
        s.update(source=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="block_size"):
        DomainShift(block_size=0)


def test_state_dict_of_an_empty_state():
    x, y = _data(120, 120, 3, seed=8)
    fresh = DomainShift(block_size=20)
    fresh.load_state_dict(DomainShift(block_size=20).state_dict())
    direct = DomainShift(block_size=20).update(source=x, target=y).compute()
    _close(fresh.update(source=x, target=y).compute(), direct)
