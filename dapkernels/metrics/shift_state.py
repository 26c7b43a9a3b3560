"""``DomainShift``: a mergeable streaming estimate of how far apart two feature distributions are.

Fed batch by batch (``update(source=..., target=...)``), like a torchmetrics ``Metric``, it keeps
in float64, per domain: the row count, the mean and the centred scatter
``M2 = Σ (x − μ)(x − μ)ᵀ`` (Chan's pairwise update), the first ≤ 1000 rows (the pilot), and the
block-MMD state of :class:`~dapkernels.metrics.streaming.BlockStream`.  Memory is O(d² + (1000 +
block_size)·d), whatever the number of rows (rows of one domain wait for the other domain's rows
of the same block, so feed both at similar rates).

``compute()`` returns, with ``C = M2/(n − 1)`` (as ``dk.coral``), ``δ = μ_s − μ_t``,
``Δ = C_s − C_t``:

* ``mean_shift = ‖δ‖²`` and ``mean_shift_se = √(4 δᵀVδ + 2 tr(V²))``, ``V = C_s/n + C_t/m``: the
  exact standard deviation of ``‖z‖²`` for ``z ~ N(δ, V)``, the CLT law of ``μ̂_s − μ̂_t`` (so it
  stays positive at δ = 0, where a first-order delta method gives 0).
* ``coral = ‖Δ‖_F² / (4d²)`` (equals ``dk.coral`` on the same rows, in float64) and
  ``coral_se = √(Var(q_s)/n + Var(q_t)/m) / (2d²)``: the first-order delta method, since
  ``dF = ⟨Δ, dC_s − dC_t⟩/(2d²)`` and ``Var⟨Δ, Ĉ_s⟩ ≈ Var(q_s)/n`` with
  ``q_s(x) = (x − μ_s)ᵀ Δ (x − μ_s)``.  ``Var(q)`` needs fourth moments (d⁴ numbers), so it is
  estimated (ddof = 1) on the pilot rows, with the final μ and Δ.  It is 0 when C_s = C_t, where
  the first-order approximation does not hold (the estimate is then dominated by its O(d²/n)
  positive bias, which is not subtracted: ``coral`` is the plug-in value).
* ``mmd``, ``mmd_se``, ``mmd_p_value``: the B-test of :func:`~dapkernels.metrics.block_mmd_test`
  on the same rows (same pilot rule, same blocks): ``mmd`` is the mean of the blocks' unbiased
  MMD², ``mmd_se`` = sd/√K, ``mmd_p_value = 1 − Φ(mmd / mmd_se)``; ``num_blocks`` = K.
* ``num_source``, ``num_target``: rows seen.

**Merging** (:meth:`DomainShift.merge`) adds another worker's state as if its rows had come
after ours.  Means / covariances merge exactly (Chan).  The block MMD equals one pass over our
rows then theirs when our row count per domain is a multiple of ``block_size`` (our leftover rows
otherwise meet theirs in a block that one pass would not form) and, for a relative bank, when both
states have the same bandwidths, e.g. we completed the pilot first and theirs has not resolved
its own, or — what to do across workers — when the bank is fixed,
``GaussianKernels(sigmas=...)``; states with different bandwidths refuse to merge.
"""

from __future__ import annotations

import math

import torch

from .._validation import as_features
from ..kernels import GaussianKernels
from .streaming import PILOT_ROWS, UNSIZED_BLOCK_SIZE, BlockStream

__all__ = ["DomainShift"]

_STATE_VERSION = 1


class _Moments2:
    """Row count, float64 mean and scatter M2 of one domain (Chan's pairwise update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def combine(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean.clone(), m2.clone()
            return
        n = self.count + count
        delta = mean.to(self.mean.device) - self.mean
        self.mean = self.mean + delta * (count / n)
        self.m2 = self.m2 + m2.to(self.m2.device) + torch.outer(delta, delta) * (
            self.count * count / n)
        self.count = n

    def add(self, rows: torch.Tensor) -> None:
        x = rows.to(torch.float64)
        mean = x.mean(dim=0)
        centred = x - mean
        self.combine(x.shape[0], mean, centred.T @ centred)


class DomainShift:
    """Streaming mean shift, CORAL distance and block MMD between a source and a target stream.

    Example::

        shift = dk.metrics.DomainShift()
        for (xs, _), (xt, _) in zip(source_loader, target_loader):
            shift.update(source=backbone(xs), target=backbone(xt))
        shift.compute()   # {"mmd": …, "mmd_se": …, "coral": …, "coral_se": …, …}

    Args:
        kernels: bank of the block MMD (default ``GaussianKernels()``; a relative bank gets its
            bandwidths from the first ≤ ``pilot_rows`` rows of each domain, as
            :func:`~dapkernels.metrics.block_mmd_test`).  Give a fixed bank to workers whose
            states will be merged.
        block_size: rows per domain in one MMD block (default 256; cost O(rows·B·d)).
        pilot_rows: rows per domain kept for the bandwidths and for ``coral_se`` (default 1000).

    See the module docstring for the formulas, the standard errors and the merge rule.
    """

    def __init__(
        self,
        kernels: GaussianKernels | None = None,
        block_size: int = UNSIZED_BLOCK_SIZE,
        pilot_rows: int = PILOT_ROWS,
    ) -> None:
        self._blocks = BlockStream(kernels, "block", block_size, pilot_rows)
        self.kernels, self.block_size, self.pilot_rows = (
            self._blocks.kernels, block_size, pilot_rows)
        self._moments = (_Moments2(), _Moments2())

    def reset(self) -> None:
        """Forgets every row seen."""
        self._blocks = BlockStream(self.kernels, "block", self.block_size, self.pilot_rows)
        self._moments = (_Moments2(), _Moments2())

    @torch.no_grad()
    def update(
        self, source: torch.Tensor | None = None, target: torch.Tensor | None = None
    ) -> DomainShift:
        """Adds a (rows, …) batch of either domain or both (detached); returns ``self``.

        Raises ValueError naming ``source`` / ``target`` on a width that differs from earlier
        rows or the other domain, a device change, or non-finite values (the state is then
        unchanged).
        """
        batches = []
        for dom, (name, batch) in enumerate((("source", source), ("target", target))):
            if batch is None:
                continue
            if not isinstance(batch, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(batch).__name__}")
            batches.append((dom, name, as_features(batch.detach(), name)))
        if not batches:
            raise ValueError("give source, target or both")
        if len(batches) == 2 and batches[0][2].shape[1] != batches[1][2].shape[1]:
            raise ValueError(
                f"feature dimensions differ: source has d={batches[0][2].shape[1]}, target has "
                f"d={batches[1][2].shape[1]}"
            )
        for dom, name, rows in batches:
            self._blocks.check(dom, rows, name)  # width, device and finiteness
        for dom, name, rows in batches:
            self._blocks.add(dom, rows, name)
            self._moments[dom].add(rows)
        return self

    def merge(self, other: DomainShift) -> DomainShift:
        """Adds the state of ``other`` (left unchanged); returns ``self``.

        Raises ValueError on a different block size, pilot size, bank, feature size, or
        bandwidths resolved from different pilots (module docstring: when it equals one pass).
        """
        if not isinstance(other, DomainShift):
            raise TypeError(f"other must be a DomainShift, got {type(other).__name__}")
        self._blocks.merge(other._blocks)
        for mine, theirs in zip(self._moments, other._moments):
            if theirs.count:
                mine.combine(theirs.count, theirs.mean, theirs.m2)
        return self

    def compute(self) -> dict:
        """The estimates as a dict of floats (module docstring for each formula).

        Uses every complete block so far and, for a relative bank whose pilot is not complete
        yet, fixes its bandwidths from the rows seen (later updates keep them).  Needs at least
        2 rows per domain; the MMD entries are NaN with fewer than 2 complete blocks.
        """
        src, tgt = self._moments
        if src.count < 2 or tgt.count < 2:
            raise ValueError(
                f"DomainShift needs at least 2 rows per domain, got {src.count} source and "
                f"{tgt.count} target rows"
            )
        self._blocks.finalize()
        n, m, d = src.count, tgt.count, src.mean.shape[0]
        cov_s, cov_t = src.m2 / (n - 1), tgt.m2 / (m - 1)
        delta_mu = src.mean - tgt.mean
        v = cov_s / n + cov_t / m
        mean_shift_var = 4.0 * float(delta_mu @ v @ delta_mu) + 2.0 * float((v * v).sum())
        diff = cov_s - cov_t
        pilots = self._blocks.pilot
        q_var = []
        for pilot, mom in zip(pilots, self._moments):
            centred = pilot.to(diff.device) - mom.mean
            q = ((centred @ diff) * centred).sum(dim=1)
            q_var.append(float(q.var()) if q.shape[0] > 1 else math.nan)
        out = {
            "mean_shift": float(delta_mu @ delta_mu),
            "mean_shift_se": math.sqrt(max(mean_shift_var, 0.0)),
            "coral": float((diff * diff).sum()) / (4.0 * d * d),
            "coral_se": math.sqrt(q_var[0] / n + q_var[1] / m) / (2.0 * d * d),
            "num_source": n,
            "num_target": m,
        }
        if self._blocks.moments.count >= 2:
            res = self._blocks.result(0.05, "block")
            out.update(mmd=res.statistic, mmd_se=res.std_error, mmd_p_value=res.p_value,
                       num_blocks=res.num_blocks)
        else:
            out.update(mmd=math.nan, mmd_se=math.nan, mmd_p_value=math.nan,
                       num_blocks=self._blocks.moments.count)
        return out

    @property
    def sigma2(self) -> tuple | None:
        """Bandwidths σ_q² of the block MMD, or None while a relative bank awaits its pilot."""
        return self._blocks.sigma2

    def state_dict(self) -> dict:
        """Everything needed to resume or merge elsewhere: tensors, numbers and the settings."""
        return {
            "version": _STATE_VERSION,
            "block_size": self.block_size,
            "pilot_rows": self.pilot_rows,
            "kernels": {"alphas": self.kernels.alphas, "sigmas": self.kernels.sigmas},
            "moments": [
                None if mom.mean is None else
                {"count": mom.count, "mean": mom.mean.clone(), "m2": mom.m2.clone()}
                for mom in self._moments
            ],
            "blocks": self._blocks.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict` output; the settings must match this object's."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown DomainShift state version {state.get('version')!r}")
        bank = GaussianKernels(**state["kernels"])
        if bank != self.kernels:
            raise ValueError(f"state_dict has kernels {bank}, this DomainShift has {self.kernels}")
        self._blocks.load_state_dict(state["blocks"])
        moments = (_Moments2(), _Moments2())
        for mom, saved in zip(moments, state["moments"]):
            if saved is not None:
                mom.combine(saved["count"], saved["mean"], saved["m2"])
        self._moments = moments
