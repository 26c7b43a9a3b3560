"""dk.metrics.mmd_test ("permutation", "wild", "aggregated") and its quadratic-forms engine.

Every engine route is checked against the dense float64 oracle, and every test against a dense
float64 recomputation written here independently (full kernel matrix, the documented
``torch.randperm`` / ``torch.randint`` draws from a same-seed generator).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dapkernels as dk
from dapkernels.backends import reference_quadratic_forms as oracle
from dapkernels.backends import torch_quadratic_forms as tiled
from dapkernels.kernels import GaussianKernels
from dapkernels.metrics import engine, mmd_test, two_sample

try:
    from dapkernels.backends import cpu_quadratic_forms as core
except ImportError:  # the C++ core is not built
    core = None


def _tiled(z, g, v, sum_bank, tile):
    return tiled.quadratic_forms(z, g, v, sum_bank, tile=tile)


def _core(z, g, v, sum_bank, tile):
    return core.quadratic_forms(z, g, v, sum_bank, tile=tile, threads=2)


ROUTES = [pytest.param(_tiled, id="torch")]
if core is not None:
    ROUTES.append(pytest.param(_core, id="cpu"))
BACKENDS = ["torch"] + (["cpu"] if core is not None else [])


# ----------------------------------------------------------------------------- engine vs oracle
@st.composite
def engine_inputs(draw):
    n_rows = draw(st.integers(2, 70))
    d = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["random", "duplicates", "constant_feature", "constant"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    z = torch.randn(n_rows, d, generator=gen, dtype=torch.float64)
    if kind == "duplicates":
        z = z[torch.randint(0, max(1, n_rows // 3), (n_rows,), generator=gen)]
    elif kind == "constant_feature":
        z[:, 0] = 3.0
    elif kind == "constant":
        z[:] = 1.5
    num_kernels = draw(st.integers(1, 4))
    gammas = torch.rand(num_kernels, generator=gen, dtype=torch.float64) / d + 1e-3
    b = draw(st.integers(1, 9))
    v = torch.randint(-1, 2, (n_rows, b), generator=gen).to(torch.int8)
    return z, gammas, v, draw(st.booleans()), draw(st.sampled_from([8, 32, 64, 512]))


@pytest.mark.parametrize("route", ROUTES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=engine_inputs())
def test_engine_matches_dense_oracle(route, case):
    z, gammas, v, sum_bank, tile = case
    want = oracle.quadratic_forms(z, gammas, v, sum_bank)
    got64 = route(z, gammas, v, sum_bank, tile)
    for w, g in zip(want, got64):
        assert g.dtype == torch.float64 and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-9)
    got32 = route(z.float(), gammas, v, sum_bank, tile)
    scale = float(want[2].abs().max()) + 1.0
    for w, g in zip(want, got32):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * scale)


def test_engine_outputs_shapes_and_sum_bank():
    z = torch.randn(40, 3, dtype=torch.float64)
    g = torch.tensor([0.1, 0.4, 2.0], dtype=torch.float64)
    v = torch.randint(-1, 2, (40, 6)).to(torch.int8)
    q1, r1, t1 = oracle.quadratic_forms(z, g, v, True)
    q3, r3, t3 = oracle.quadratic_forms(z, g, v, False)
    assert q1.shape == (1, 6) and r1.shape == (1, 40) and t1.shape == (1,)
    assert q3.shape == (3, 6) and r3.shape == (3, 40) and t3.shape == (3,)
    torch.testing.assert_close(q1[0], q3.sum(0))
    torch.testing.assert_close(r1[0], r3.sum(0))


# ------------------------------------------------------------------ dense float64 recomputation
def _dense_kernels(x, y, kernels):
    """(L, N, N) float64 kernel matrices of the pooled sample, bandwidths computed here."""
    z = torch.cat([x, y]).to(torch.float64)
    d2 = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
    factors = torch.tensor(kernels.sigma2_factors, dtype=torch.float64)
    sigma2 = factors * d2.mean() if kernels.relative else factors
    return torch.exp(-d2[None] / (2.0 * sigma2[:, None, None]))


def _mmd_split(k, s, t, estimator):
    """dk.mmd's estimator with source rows s and target rows t of the pooled matrix k."""
    n, m = len(s), len(t)
    kss, ktt, kst = k[s][:, s], k[t][:, t], k[s][:, t]
    if estimator == "unbiased":
        return ((kss.sum() - kss.trace()) / (n * (n - 1))
                + (ktt.sum() - ktt.trace()) / (m * (m - 1)) - 2 * kst.sum() / (n * m))
    return kss.sum() / n**2 + ktt.sum() / m**2 - 2 * kst.sum() / (n * m)


def _dense_permutation_null(k, n, m, num, seed, estimator):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        idx = torch.randperm(n + m, generator=gen)
        out.append(float(_mmd_split(k, idx[:n], idx[n:], estimator)))
    return torch.tensor(out, dtype=torch.float64)


def _dense_wild(k, n, num, seed, estimator):
    """Observed (ε = 1) and wild statistics (1/(n(n−1))) Σ_{i≠j} ε_i ε_j h_ij (biased: all i, j)."""
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    h = kxx + kyy - kxy - kxy.T
    if estimator == "unbiased":
        h = h - torch.diag(torch.diag(h))
        norm = n * (n - 1)
    else:
        norm = n * n
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        eps = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(torch.float64)
        out.append(float(eps @ h @ eps) / norm)
    return float(h.sum()) / norm, torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_permutation_exact_against_dense(backend, estimator):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(150, 6, generator=gen, dtype=torch.float64)
    y = 1.05 * torch.randn(230, 6, generator=gen, dtype=torch.float64) + 0.04
    kernels = GaussianKernels()
    res = mmd_test(x, y, kernels, num_permutations=300, estimator=estimator,
                   generator=torch.Generator().manual_seed(11), backend=backend)
    k = _dense_kernels(x, y, kernels).sum(0)
    null = _dense_permutation_null(k, 150, 230, 300, 11, estimator)
    obs = float(_mmd_split(k, torch.arange(150), torch.arange(150, 380), estimator))
    assert res.statistic == float(dk.mmd(x, y, kernels, estimator))
    assert res.observed == pytest.approx(obs, rel=1e-10, abs=1e-13)
    assert res.statistic == pytest.approx(obs, rel=1e-9, abs=1e-12)
    assert res.null.dtype == torch.float64 and res.null.device.type == "cpu"
    torch.testing.assert_close(res.null, null, rtol=1e-9, atol=1e-12)
    count = int((null >= obs).sum())
    assert 0 < count < 300  # the count is informative, not 0 or B
    assert res.p_value == (1 + count) / 301
    assert res.reject == (res.p_value <= 0.05)
    assert (res.method, res.num_permutations, res.estimator, res.alpha) == (
        "permutation", 300, estimator, 0.05)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_wild_exact_against_dense(backend, estimator):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(160, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(160, 5, generator=gen, dtype=torch.float64) + 0.05
    kernels = GaussianKernels(alphas=(0.5, 1.0, 2.0))
    res = mmd_test(x, y, kernels, method="wild", num_permutations=250, estimator=estimator,
                   generator=torch.Generator().manual_seed(2), backend=backend)
    k = _dense_kernels(x, y, kernels).sum(0)
    obs, null = _dense_wild(k, 160, 250, 2, estimator)
    torch.testing.assert_close(res.null, null, rtol=1e-9, atol=1e-12)
    assert res.observed == pytest.approx(obs, rel=1e-10, abs=1e-13)
    count = int((null >= obs).sum())
    assert 0 < count < 250
    assert res.p_value == (1 + count) / 251
    assert res.statistic == float(dk.mmd(x, y, kernels, estimator))
    if estimator == "biased":  # at ε = 1 the biased wild statistic is dk.mmd's
        assert res.observed == pytest.approx(res.statistic, rel=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_input_matches_dense_count(backend, monkeypatch):
    """Up to EXACT_ROWS rows float32 input is computed in float64: the count is exact; beyond,
    in float32 (forced here by EXACT_ROWS = 0) the null agrees to float32 rounding."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(120, 4, generator=gen)
    y = torch.randn(140, 4, generator=gen) + 0.1
    k = _dense_kernels(x, y, GaussianKernels()).sum(0)
    null = _dense_permutation_null(k, 120, 140, 200, 4, "unbiased")
    obs = float(_mmd_split(k, torch.arange(120), torch.arange(120, 260), "unbiased"))
    res = mmd_test(x, y, num_permutations=200, generator=torch.Generator().manual_seed(4),
                   backend=backend)
    torch.testing.assert_close(res.null, null, rtol=1e-9, atol=1e-12)
    assert res.p_value == (1 + int((null >= obs).sum())) / 201
    assert res.statistic == float(dk.mmd(x, y))  # the statistic stays dk.mmd's float32 value
    monkeypatch.setattr(two_sample, "EXACT_ROWS", 0)
    res32 = mmd_test(x, y, num_permutations=200, generator=torch.Generator().manual_seed(4),
                     backend=backend)
    torch.testing.assert_close(res32.null, null, rtol=0, atol=2e-6)


def test_threshold_is_the_documented_order_statistic():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 3, generator=gen), torch.randn(40, 3, generator=gen)
    for alpha in (0.05, 0.2, 0.5):
        res = mmd_test(x, y, num_permutations=99, alpha=alpha,
                       generator=torch.Generator().manual_seed(0))
        both = torch.sort(torch.cat([res.null, torch.tensor([res.observed])])).values
        assert res.threshold == float(both[math.ceil((1 - alpha) * 100) - 1])


# ------------------------------------------------------------------------------- aggregated
def _dense_aggregated(x, y, kernels, num, seed, estimator, alpha):
    k = _dense_kernels(x, y, kernels)
    n, m = x.shape[0], y.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n + m, generator=gen) for _ in range(2 * num)]
    ident = torch.arange(n + m)
    stats = torch.tensor([[float(_mmd_split(kl, p[:n], p[n:], estimator)) for p in [ident] + perms]
                          for kl in k], dtype=torch.float64)
    obs, set1, set2 = stats[:, 0], stats[:, 1:num + 1], stats[:, num + 1:]

    def pval(lam, t):
        return (1 + sum(1 for s in set1[lam].tolist() if s >= t)) / (1 + num)

    big_l = k.shape[0]
    p_obs = [pval(lam, float(obs[lam])) for lam in range(big_l)]
    m_obs = big_l * min(p_obs)
    m_null = [big_l * min(pval(lam, float(set2[lam, b])) for lam in range(big_l))
              for b in range(num)]
    p = (1 + sum(1 for v in m_null if v <= m_obs)) / (1 + num)
    u = max([c for c in m_null + [m_obs]
             if (1 + sum(1 for v in m_null if v <= c)) / (1 + num) <= alpha], default=0.0)
    return obs, set1, p_obs, p, u


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_aggregated_against_dense(backend, estimator):
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(70, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    y[:, 0] += 0.5
    kernels = GaussianKernels(alphas=(0.25, 1.0, 4.0))
    res = mmd_test(x, y, kernels, method="aggregated", num_permutations=60, estimator=estimator,
                   generator=torch.Generator().manual_seed(6), backend=backend, alpha=0.1)
    obs, set1, p_obs, p, u = _dense_aggregated(x, y, kernels, 60, 6, estimator, 0.1)
    assert res.method == "aggregated" and len(res.per_kernel) == 3
    assert res.null.shape == (3, 60)
    torch.testing.assert_close(res.null, set1, rtol=1e-9, atol=1e-12)
    assert res.p_value == p
    assert res.statistic == float(dk.mmd(x, y, kernels, estimator))
    assert res.statistic == pytest.approx(float(obs.sum()), rel=1e-9)
    for kr, pk, st_ in zip(res.per_kernel, p_obs, obs.tolist()):
        assert kr.p_value == pk
        assert kr.statistic == pytest.approx(st_, rel=1e-9, abs=1e-13)
        assert kr.level == pytest.approx(u / 3)
        assert kr.reject == (pk * 3 <= u)
    assert res.reject == any(kr.reject for kr in res.per_kernel) == (res.p_value <= 0.1)
    md = float(torch.cat([x, y]).var(0, unbiased=False).sum()) * 2
    assert [kr.sigma2 for kr in res.per_kernel] == pytest.approx([0.25 * md, md, 4 * md])


def test_aggregated_default_collection_and_power():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(80, 3, generator=gen)
    y = torch.randn(80, 3, generator=gen) + 0.8
    res = mmd_test(x, y, method="aggregated", num_permutations=100,
                   generator=torch.Generator().manual_seed(1))
    assert len(res.per_kernel) == 10
    assert res.reject and res.p_value <= 0.05
    assert min(k.p_value for k in res.per_kernel) == 1 / 101
    assert res.statistic == pytest.approx(sum(k.statistic for k in res.per_kernel), rel=1e-5)


# ------------------------------------------------------------------------ behaviour and API
def test_chunked_labels_match_one_sweep(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    for method, yy in (("permutation", y), ("wild", x.flip(0) + 0.1)):
        one = mmd_test(x, yy, method=method, num_permutations=40,
                       generator=torch.Generator().manual_seed(3))
        monkeypatch.setattr(engine, "LABEL_BYTES", 90 * 7)  # 7 columns per sweep
        many = mmd_test(x, yy, method=method, num_permutations=40,
                        generator=torch.Generator().manual_seed(3))
        monkeypatch.undo()
        torch.testing.assert_close(many.null, one.null, rtol=1e-12, atol=1e-14)
        assert many.p_value == one.p_value


def test_reproducible_and_reference_route_agrees():
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(25, 2, generator=gen), torch.randn(30, 2, generator=gen)
    a = mmd_test(x, y, num_permutations=50, generator=torch.Generator().manual_seed(9))
    b = mmd_test(x, y, num_permutations=50, generator=torch.Generator().manual_seed(9))
    r = mmd_test(x, y, num_permutations=50, generator=torch.Generator().manual_seed(9),
                 backend="reference")
    assert torch.equal(a.null, b.null) and a.p_value == b.p_value
    torch.testing.assert_close(r.null, a.null, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    c = mmd_test(x, y, num_permutations=10)  # torch's default generator
    assert c.null.shape == (10,)


def test_tiny_samples_and_flattening(capsys):
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(2, 1, 2)
    y = torch.tensor([[5.0, 5.0], [5.0, 6.0], [6.0, 5.0]]).reshape(3, 2, 1)
    res = mmd_test(x, y, num_permutations=20, generator=torch.Generator().manual_seed(0),
                   progress=True)
    assert res.null.shape == (20,)
    assert res.p_value == (1 + int((res.null >= res.observed).sum())) / 21
    assert res.statistic == pytest.approx(float(dk.mmd(x, y)))
    assert "mmd_test" in capsys.readouterr().err


def test_fixed_bandwidths():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(45, 3, generator=gen, dtype=torch.float64)
    kernels = GaussianKernels(sigmas=(0.5, 2.0))
    res = mmd_test(x, y, kernels, num_permutations=30, generator=torch.Generator().manual_seed(1))
    k = _dense_kernels(x, y, kernels).sum(0)
    torch.testing.assert_close(res.null, _dense_permutation_null(k, 40, 45, 30, 1, "unbiased"))


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(method="bootstrap"), ValueError, "method"),
        (dict(estimator="linear"), ValueError, "estimator"),
        (dict(alpha=0.0), ValueError, "alpha"),
        (dict(alpha=1.0), ValueError, "alpha"),
        (dict(alpha=True), ValueError, "alpha"),
        (dict(num_permutations=0), ValueError, "num_permutations"),
        (dict(num_permutations=10.0), ValueError, "num_permutations"),
        (dict(backend="gpu"), ValueError, "backend"),
        (dict(kernels="gaussian"), TypeError, "kernels"),
        (dict(generator=1), TypeError, "generator"),
        (dict(method="wild"), ValueError, "n = m"),
        (dict(x=torch.randn(1, 3)), ValueError, "2 rows"),
        (dict(y=torch.randn(5, 4)), ValueError, "feature dimensions"),
        (dict(x=torch.randn(5)), ValueError, "x"),
        (dict(y=torch.tensor([[0.0, 1.0, float("nan")]] * 3)), ValueError, "y contains"),
        (dict(x=[[1.0, 2.0, 3.0]] * 3), TypeError, "x"),
    ],
)
def test_invalid_arguments(kwargs, exc, word):
    args = dict(x=torch.randn(5, 3), y=torch.randn(6, 3), num_permutations=5)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        mmd_test(**args)


def test_engine_routes_by_device_and_dtype(monkeypatch):
    """CUDA float32 work goes to the Triton kernel when Triton imports; float64 (every problem
    up to EXACT_ROWS) and CPU work never does; forcing a route the data cannot take raises."""
    from dapkernels import backends
    from dapkernels.metrics import engine

    cuda = torch.device("cuda")
    monkeypatch.setattr(backends, "available", lambda name: True)
    assert engine.resolve(None, cuda, torch.float32) == "triton"
    assert engine.resolve(None, cuda, torch.float64) == "torch"
    assert engine.resolve(None, torch.device("cpu"), torch.float32) == "cpu"
    monkeypatch.setattr(backends, "available", lambda name: name != "triton")
    assert engine.resolve(None, cuda, torch.float32) == "torch"
    with pytest.raises(ValueError, match="triton"):
        engine.resolve("triton", torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="triton"):
        engine.resolve("triton", cuda, torch.float64)
