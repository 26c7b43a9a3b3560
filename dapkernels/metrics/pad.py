"""Proxy A-distance (Ben-David et al. 2007): how well a linear classifier tells the domains apart.

Procedure of :func:`proxy_a_distance`:

1. Split each domain at random (``generator``) into a training part and a held-out part of
   ``round(test_fraction · rows)`` rows (at least 1 row in each part), so both parts keep the
   domains' proportions.
2. Standardize every feature with the mean and standard deviation of the pooled training rows
   (a constant feature is left centred, not divided).
3. Train a logistic regression ``p(target | z) = σ(wᵀz + b)`` in float64 on the data's device,
   full batch, with L-BFGS (strong-Wolfe line search, ``epochs`` iterations) from w = 0, b = 0
   on the *balanced* cross-entropy ``½ CE_source + ½ CE_target + ½ λ‖w‖²`` (λ =
   ``weight_decay``).  Nothing is random in the training, so a fixed ``generator`` gives the same
   result every time.
4. Held-out balanced error ``ε = ½ (ε_source + ε_target)`` (predict "target" when wᵀz + b > 0),
   and ``PAD = 2(1 − 2ε)`` clipped to [0, 2] (0: the classifier does no better than chance on
   the held-out rows; 2: it separates them perfectly).
5. Percentile bootstrap CI: resampling each domain's held-out predictions with replacement
   gives a number of errors distributed Binomial(n_test, ε̂_domain), which is drawn directly
   (``num_bootstrap`` times, ``generator``); each replicate's clipped PAD enters the
   ``confidence`` interval.  The CI covers the held-out sampling only, not the training split.

Differences from Transfer-Learning-Library's ``tllib.utils.analysis.a_distance``: there, one
``Linear + Sigmoid`` on raw features is trained with SGD (lr 0.01, batch size 2) for 10 epochs
on a random 80/20 split of the pooled rows, and the value is ``2(1 − 2ε)`` from the *last*
epoch's validation accuracy, *unbalanced* (the larger domain dominates ε) and *unclipped* (it
is negative when ε > 0.5), without a confidence interval.  Here the classifier is trained to
convergence on standardized features, the error is balanced, the value is clipped to [0, 2] and
it comes with a CI; ``raw`` keeps the unclipped value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import as_features, check_same_space

__all__ = ["PADResult", "proxy_a_distance"]


@dataclass(frozen=True)
class PADResult:
    """Outcome of :func:`proxy_a_distance`.

    Attributes:
        value: ``2(1 − 2ε)`` clipped to [0, 2].
        error: held-out balanced error ε.
        ci_low, ci_high: bootstrap percentile interval of ``value`` at level ``confidence``.
        raw: ``2(1 − 2ε)`` unclipped (negative when ε > 0.5).
        source_error, target_error: held-out error on each domain.
        num_train, num_test: rows (source + target) used to train and to evaluate.
        confidence: level of the interval.
    """

    value: float
    error: float
    ci_low: float
    ci_high: float
    raw: float
    source_error: float
    target_error: float
    num_train: int
    num_test: int
    confidence: float


def _split(n: int, test_fraction: float, generator: torch.Generator | None) -> tuple:
    perm = torch.randperm(n, generator=generator)
    n_test = min(n - 1, max(1, round(test_fraction * n)))
    return perm[n_test:], perm[:n_test]


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def proxy_a_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    test_fraction: float = 0.3,
    epochs: int = 100,
    weight_decay: float = 1e-3,
    generator: torch.Generator | None = None,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
) -> PADResult:
    """Proxy A-distance ``2(1 − 2ε)`` of a held-out balanced domain-classification error ε.

    See the module docstring for the split, the classifier, the bootstrap and how this differs
    from Transfer-Learning-Library's version.

    Args:
        x: (n, …) source features, n ≥ 2 (flattened to (n, d)).
        y: (m, …) target features, m ≥ 2; same d, dtype and device.
        test_fraction: share of each domain held out, in (0, 1).
        epochs: L-BFGS iterations over the full training split.
        weight_decay: λ of the ``½ λ‖w‖²`` penalty (≥ 0).
        generator: CPU ``torch.Generator`` for the split and the bootstrap (None: global RNG).
        num_bootstrap: bootstrap replicates of the CI.
        confidence: level of the CI, in (0, 1).

    Returns:
        :class:`PADResult`.
    """
    xs = as_features(x, "x").detach()
    ys = as_features(y, "y").detach()
    check_same_space(xs, ys, "x", "y")
    for t, name in ((xs, "x"), (ys, "y")):
        if t.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 rows (one to train, one to test), "
                             f"got {t.shape[0]}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    epochs = _positive_int(epochs, "epochs")
    num_bootstrap = _positive_int(num_bootstrap, "num_bootstrap")

    device = xs.device
    tr_s, te_s = _split(xs.shape[0], test_fraction, generator)
    tr_t, te_t = _split(ys.shape[0], test_fraction, generator)
    xs, ys = xs.to(torch.float64), ys.to(torch.float64)
    train_s, test_s = xs[tr_s.to(device)], xs[te_s.to(device)]
    train_t, test_t = ys[tr_t.to(device)], ys[te_t.to(device)]
    pooled = torch.cat([train_s, train_t])
    mean = pooled.mean(dim=0)
    std = pooled.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))

    def standardize(z: torch.Tensor) -> torch.Tensor:
        return (z - mean) / std

    train_s, train_t = standardize(train_s), standardize(train_t)
    w = torch.zeros(xs.shape[1], dtype=torch.float64, device=device, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=epochs, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ls, lt = train_s @ w + b, train_t @ w + b
        loss = 0.5 * (bce(ls, torch.zeros_like(ls)) + bce(lt, torch.ones_like(lt)))
        loss = loss + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        wrong_s = int(((standardize(test_s) @ w + b) > 0).sum())
        wrong_t = int(((standardize(test_t) @ w + b) <= 0).sum())
    n_s, n_t = test_s.shape[0], test_t.shape[0]
    err_s, err_t = wrong_s / n_s, wrong_t / n_t
    error = 0.5 * (err_s + err_t)
    raw = 2.0 * (1.0 - 2.0 * error)

    def pad(eps: torch.Tensor) -> torch.Tensor:
        return (2.0 * (1.0 - 2.0 * eps)).clamp(0.0, 2.0)

    draws = []
    for count, err in ((n_s, err_s), (n_t, err_t)):
        counts = torch.full((num_bootstrap,), float(count), dtype=torch.float64)
        probs = torch.full((num_bootstrap,), err, dtype=torch.float64)
        draws.append(torch.binomial(counts, probs, generator=generator) / count)
    boot = pad(0.5 * (draws[0] + draws[1]))
    tail = (1.0 - confidence) / 2.0
    lo, hi = torch.quantile(boot, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return PADResult(
        value=min(2.0, max(0.0, raw)), error=error, ci_low=float(lo), ci_high=float(hi),
        raw=raw, source_error=err_s, target_error=err_t,
        num_train=train_s.shape[0] + train_t.shape[0], num_test=n_s + n_t,
        confidence=confidence,
    )
