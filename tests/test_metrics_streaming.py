"""Block (B-test) and linear-time MMD tests: values against float64 references written here,
streaming from memmaps / DataLoaders / generators, bounded buffering, calibration, errors."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

import dapkernels as dk
from dapkernels.metrics import BlockStream, block_mmd_test, linear_mmd_test

ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)


def _data(n, m, d, shift=0.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + shift
    return x.to(dtype), y.to(dtype)


def _ref_sigma2(x, y, pilot=1000):
    z = torch.cat([x[:pilot], y[:pilot]]).double()
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    return [a * float(d2.mean()) for a in ALPHAS]


def _ref_k(a, b, sigma2):
    d2 = ((a.double()[:, None, :] - b.double()[None, :, :]) ** 2).sum(-1)
    return sum(torch.exp(-d2 / (2 * s2)) for s2 in sigma2)


def _ref_block(x, y, b, sigma2):
    k = min(x.shape[0], y.shape[0]) // b
    etas = []
    for i in range(k):
        xs, ys = x[i * b:(i + 1) * b], y[i * b:(i + 1) * b]
        kxx, kyy, kxy = _ref_k(xs, xs, sigma2), _ref_k(ys, ys, sigma2), _ref_k(xs, ys, sigma2)
        off = ~torch.eye(b, dtype=torch.bool)
        etas.append(kxx[off].sum() / (b * (b - 1)) + kyy[off].sum() / (b * (b - 1))
                    - 2 * kxy.sum() / b**2)
    etas = torch.stack(etas)
    return float(etas.mean()), float(etas.std() / math.sqrt(k)), k


def _ref_linear(x, y, sigma2):
    k = min(x.shape[0], y.shape[0]) // 2
    h = []
    for i in range(k):
        x1, x2, y1, y2 = (t[None] for t in (x[2 * i], x[2 * i + 1], y[2 * i], y[2 * i + 1]))
        h.append(_ref_k(x1, x2, sigma2) + _ref_k(y1, y2, sigma2) - _ref_k(x1, y2, sigma2)
                 - _ref_k(x2, y1, sigma2))
    h = torch.cat([v.reshape(1) for v in h])
    return float(h.mean()), float(h.std() / math.sqrt(k)), k


def _check_gaussian_null(res):
    z = res.statistic / res.std_error
    assert res.p_value == pytest.approx(1 - NormalDist().cdf(z), rel=1e-9, abs=1e-15)
    assert res.threshold == pytest.approx(NormalDist().inv_cdf(1 - res.alpha) * res.std_error)
    assert res.reject == (res.p_value <= res.alpha)
    assert res.null is None and res.num_permutations == 0


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_block_statistic_and_se_match_float64_reference(dtype, rel):
    x, y = _data(230, 205, 6, shift=0.3, seed=1)
    res = block_mmd_test(x.to(dtype), y.to(dtype), block_size=20)
    sigma2 = _ref_sigma2(x, y)
    stat, se, k = _ref_block(x, y, 20, sigma2)
    assert res.method == "block" and res.num_blocks == k == 10 and res.block_size == 20
    assert res.sigma2 == pytest.approx(sigma2, rel=1e-6 if dtype == torch.float32 else 1e-12)
    assert res.statistic == pytest.approx(stat, rel=rel)
    assert res.std_error == pytest.approx(se, rel=rel * 10)
    _check_gaussian_null(res)


def test_block_pilot_is_first_1000_rows_and_fixed_bank_is_used_as_is():
    x, y = _data(1300, 1250, 3, shift=0.2, seed=2)
    res = block_mmd_test(x, y, block_size=250)
    sigma2 = _ref_sigma2(x, y, pilot=1000)
    assert res.sigma2 == pytest.approx(sigma2, rel=1e-12)
    stat, se, _ = _ref_block(x, y, 250, sigma2)
    assert res.statistic == pytest.approx(stat, rel=1e-10)
    bank = dk.GaussianKernels(sigmas=[0.7, 1.9])
    fixed = block_mmd_test(x, y, bank, block_size=250)
    assert fixed.sigma2 == pytest.approx((0.49, 3.61))
    assert fixed.statistic == pytest.approx(_ref_block(x, y, 250, [0.49, 3.61])[0], rel=1e-10)


def test_block_values_are_dk_mmd_of_each_block():
    x, y = _data(64, 64, 5, shift=0.5, seed=3)
    bank = dk.GaussianKernels(sigmas=[1.0, 3.0])
    res = block_mmd_test(x, y, bank, block_size=16)
    etas = torch.stack([dk.mmd(x[i:i + 16], y[i:i + 16], bank) for i in range(0, 64, 16)])
    assert res.statistic == pytest.approx(float(etas.mean()), rel=1e-12)
    assert res.std_error == pytest.approx(float(etas.std() / 2), rel=1e-10)


def test_default_block_size_is_floor_sqrt_min_n_m():
    x, y = _data(410, 150, 2, seed=4)
    assert block_mmd_test(x, y).block_size == 12  # isqrt(150)


def test_linear_statistic_and_se_match_float64_reference():
    x, y = _data(301, 257, 4, shift=0.4, seed=5)
    res = linear_mmd_test(x, y, block_size=30)
    stat, se, k = _ref_linear(x, y, _ref_sigma2(x, y))
    assert res.method == "linear" and res.num_blocks == k == 128
    assert res.statistic == pytest.approx(stat, rel=1e-10)
    assert res.std_error == pytest.approx(se, rel=1e-9)
    _check_gaussian_null(res)
    # the step size only bounds memory
    assert linear_mmd_test(x, y, block_size=4096).statistic == pytest.approx(stat, rel=1e-10)


@pytest.mark.parametrize("test", [block_mmd_test, linear_mmd_test])
def test_large_mean_shift_is_detected(test):
    x, y = _data(2000, 2000, 4, shift=3.0, seed=6, dtype=torch.float32)
    res = test(x, y)
    assert res.p_value < 1e-6 and res.reject and res.statistic > res.threshold


@pytest.mark.parametrize("test,n", [(block_mmd_test, 400), (linear_mmd_test, 400)])
def test_null_rejection_rate_over_fixed_seeds(test, n):
    pvals = [test(*_data(n, n, 3, seed=100 + s, dtype=torch.float32)).p_value
             for s in range(150)]
    rate = sum(p <= 0.05 for p in pvals) / len(pvals)
    assert 0.01 <= rate <= 0.11, rate
    z = [NormalDist().inv_cdf(1 - p) for p in pvals if 0 < p < 1]
    assert abs(float(np.mean(z))) < 0.3  # centred: statistic has mean 0 under H0


def test_memmap_dataloader_generator_equal_tensor(tmp_path):
    x, y = _data(1100, 1037, 8, shift=0.1, seed=7, dtype=torch.float32)
    ref = block_mmd_test(x, y, block_size=32)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    mx = np.load(tmp_path / "x.npy", mmap_mode="r")
    my = np.load(tmp_path / "y.npy", mmap_mode="r")
    via_mmap = block_mmd_test(mx, my, block_size=32)
    dl_x = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(1100)),
                                       batch_size=77)
    dl_y = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(y), batch_size=130)
    via_loader = block_mmd_test(dl_x, dl_y)  # default B from len(dataset): isqrt(1037) = 32
    via_gen = block_mmd_test((x[i:i + 50].numpy() for i in range(0, 1100, 50)),
                             (y[i:i + 333] for i in range(0, 1037, 333)), block_size=32)
    for res in (via_mmap, via_loader, via_gen):
        assert res.num_blocks == ref.num_blocks == 32 and res.block_size == 32
        assert res.sigma2 == pytest.approx(ref.sigma2, rel=1e-12)
        assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
        assert res.std_error == pytest.approx(ref.std_error, rel=1e-10)
    lin = linear_mmd_test(x, y, block_size=64)
    assert linear_mmd_test(mx, dl_y, block_size=64).statistic == pytest.approx(
        lin.statistic, rel=1e-12)


def test_lock_step_consumption_keeps_buffers_bounded():
    """Neither iterable runs ahead of the other by more than the pilot plus one step."""
    x, y = _data(6000, 6000, 4, seed=8, dtype=torch.float32)
    pulled = {"x": 0, "y": 0}
    worst = [0]

    def batches(t, name):
        for i in range(0, t.shape[0], 100):
            pulled[name] += 100
            worst[0] = max(worst[0], abs(pulled["x"] - pulled["y"]))
            yield t[i:i + 100]

    state_step = BlockStream(block_size=50).step
    res = block_mmd_test(batches(x, "x"), batches(y, "y"), block_size=50)
    assert res.num_blocks == 120
    assert worst[0] <= max(1000, state_step) + 100


def test_progress_bar(capsys):
    x, y = _data(400, 400, 3, seed=9, dtype=torch.float32)
    block_mmd_test(x, y, block_size=20, progress=True)
    err = capsys.readouterr().err
    assert "block MMD test" in err and "400/400" in err


def test_constant_data_gives_p_one():
    x = torch.ones(40, 3)
    res = block_mmd_test(x, x.clone(), block_size=10)
    assert abs(res.statistic) < 1e-12 and res.std_error == 0.0 and res.p_value == 1.0
    assert not res.reject


def test_errors_name_the_argument():
    x, y = _data(100, 100, 4, seed=10)
    with pytest.raises(ValueError, match="y has d=5"):
        block_mmd_test(x, torch.randn(100, 5, dtype=torch.float64))
    bad = x.clone()
    bad[37, 2] = float("nan")
    with pytest.raises(ValueError, match="x contains non-finite .* row 37"):
        block_mmd_test(bad, y, block_size=10)
    with pytest.raises(ValueError, match="y contains non-finite .* row 77"):
        linear_mmd_test(x, [y[:50], bad[10:]])
    with pytest.raises(ValueError, match="too few samples for the block test"):
        block_mmd_test(x, y, block_size=60)
    with pytest.raises(ValueError, match="estimator must be 'unbiased'"):
        block_mmd_test(x, y, estimator="biased")
    with pytest.raises(ValueError, match="alpha"):
        linear_mmd_test(x, y, alpha=1.5)
    with pytest.raises(ValueError, match="block_size"):
        block_mmd_test(x, y, block_size=1)
    with pytest.raises(TypeError, match="x must be a tensor"):
        block_mmd_test("features.npy", y)
    with pytest.raises(ValueError, match="y yielded no rows"):
        block_mmd_test([x], iter([]), block_size=10)
    with pytest.raises(TypeError, match="floating-point"):
        block_mmd_test(np.zeros((10, 2), dtype=np.int64), y)
