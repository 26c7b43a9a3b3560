"""Proxy A-distance: known optimum, separable / identical domains, determinism, clipping, CI."""

from __future__ import annotations

from statistics import NormalDist

import pytest
import torch

from dapkernels.metrics import PADResult, proxy_a_distance


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_gaussian_pair_matches_bayes_error():
    """N(0, 1) vs N(3, 1): the best linear rule errs Φ(−1.5) per side: PAD = 2(1 − 2Φ(−1.5))."""
    g = _gen(0)
    x = torch.randn(20000, 1, generator=g, dtype=torch.float64)
    y = torch.randn(20000, 1, generator=g, dtype=torch.float64) + 3.0
    res = proxy_a_distance(x, y, generator=_gen(1))
    bayes = NormalDist().cdf(-1.5)
    assert res.error == pytest.approx(bayes, abs=0.006)
    assert res.value == pytest.approx(2 * (1 - 2 * bayes), abs=0.025)
    assert res.ci_low < 2 * (1 - 2 * bayes) < res.ci_high
    assert res.ci_high - res.ci_low < 0.1
    assert res.num_test == 12000 and res.num_train == 28000
    assert res.error == pytest.approx(0.5 * (res.source_error + res.target_error))


def test_separable_domains_near_two():
    g = _gen(2)
    x = torch.randn(600, 16, generator=g)
    y = torch.randn(400, 16, generator=g) + 4.0
    res = proxy_a_distance(x, y, generator=_gen(3))
    assert isinstance(res, PADResult)
    assert res.value == 2.0 and res.error == 0.0 and res.ci_low == 2.0 and res.ci_high == 2.0


def test_identical_distributions_near_zero():
    g = _gen(4)
    x = torch.randn(3000, 8, generator=g)
    y = torch.randn(3000, 8, generator=g)
    res = proxy_a_distance(x, y, generator=_gen(5))
    assert res.value < 0.2 and res.ci_low == 0.0
    assert abs(res.error - 0.5) < 0.05


def test_deterministic_with_generator_and_seed_dependent():
    g = _gen(6)
    x = torch.randn(500, 10, generator=g)
    y = torch.randn(500, 10, generator=g) * 1.3 + 0.2
    a = proxy_a_distance(x, y, generator=_gen(7))
    b = proxy_a_distance(x, y, generator=_gen(7))
    assert a == b
    c = proxy_a_distance(x, y, generator=_gen(8))
    assert (c.error, c.ci_low) != (a.error, a.ci_low)


def test_clipped_to_zero_when_worse_than_chance():
    g = _gen(9)
    x = torch.randn(200, 4, generator=g)
    y = torch.randn(200, 4, generator=g)
    results = [proxy_a_distance(x, y, generator=_gen(s), num_bootstrap=50) for s in range(10)]
    for r in results:
        assert r.raw == pytest.approx(2 * (1 - 2 * r.error))
        assert r.value == min(2.0, max(0.0, r.raw))
        assert 0.0 <= r.ci_low <= r.ci_high <= 2.0
    assert any(r.raw < 0 and r.value == 0.0 for r in results)


def test_errors_name_the_argument():
    x = torch.randn(20, 3)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        proxy_a_distance(x, torch.randn(20, 4))
    with pytest.raises(ValueError, match="y needs at least 2 rows"):
        proxy_a_distance(x, torch.randn(1, 3))
    bad = x.clone()
    bad[2, 2] = float("nan")
    with pytest.raises(ValueError, match="x contains non-finite"):
        proxy_a_distance(bad, x)
    with pytest.raises(ValueError, match="test_fraction"):
        proxy_a_distance(x, x, test_fraction=1.0)
    with pytest.raises(ValueError, match="epochs"):
        proxy_a_distance(x, x, epochs=0)
