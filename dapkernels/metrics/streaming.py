"""Linear-time two-sample tests that stream: the B-test and Gretton's linear-time test.

Both read the source and target rows once, in order, and keep O(B·d) rows in memory (B the
block size), so they run on sets that do not fit in memory.  Both have a Gaussian null.

**Units.**  Rows are paired by index: unit ``k`` holds source rows ``[kU, (k+1)U)`` and target
rows ``[kU, (k+1)U)`` (``U`` = B for the block test, 2 for the linear test).  Only
``K = ⌊min(n, m) / U⌋`` complete units are used; the rows past them are ignored (the result
reports ``num_blocks`` = K).  The unit boundaries depend on the row index only, never on how the
input is chunked, so a tensor, a memory-mapped ``.npy`` and a DataLoader over the same rows
give the same statistic (up to the order of floating-point sums).

* **Block test** (B-test, Zaremba, Gretton & Blaschko 2013): with ``X_k``, ``Y_k`` the B rows of
  block k and ``k = Σ_q k_q`` the bank,
  ``η_k = Σ_{i≠j} k(x_i,x_j)/(B(B−1)) + Σ_{i≠j} k(y_i,y_j)/(B(B−1)) − 2 Σ_{i,j} k(x_i,y_j)/B²``,
  the unbiased MMD² of the block, i.e. ``dk.mmd(X_k, Y_k, bank, "unbiased")`` (each block is one
  fused call).  Cost O(min(n, m)·B·d).
* **Linear test** (Gretton et al. 2012, §6): over consecutive pairs of rows,
  ``h_k = k(x_{2k}, x_{2k+1}) + k(y_{2k}, y_{2k+1}) − k(x_{2k}, y_{2k+1}) − k(x_{2k+1}, y_{2k})``
  (float64).  This is *not* ``dk.mmd(..., estimator="linear")``, which averages over the
  overlapping pairs (i, i+1 mod n) of DAN: those terms are dependent, and the variance of their
  mean does not follow from their spread.  Cost O(min(n, m)·d).

**Null.**  Statistic ``T = mean_k v_k`` (v = η or h), standard error
``se = sd(v) / √K`` (sd with ddof = 1), p-value ``1 − Φ(T / se)`` (one-sided: MMD² > 0 under the
alternative), critical value ``z_{1−α} · se``.  When every unit gives the same value (se = 0),
p = 1 if T ≤ 0 else 0.  The per-unit values are accumulated as (count, mean, M2) with Chan's
pairwise update in float64, so a state can be merged.

**Bandwidths.**  A fixed bank (``GaussianKernels(sigmas=...)``) is used as is.  A relative bank
(``alphas``, the default) gets ``σ_q² = α_q · D`` with D the mean squared distance over all
ordered pairs (diagonal included, as ``GaussianKernels`` does) of the **pilot sample**: the first
``min(1000, n)`` source rows and the first ``min(1000, m)`` target rows, pooled.  D is computed
exactly in float64 as ``2 Σ_i ‖z_i − z̄‖² / P``.  The data need not fit in memory, so the
bandwidths cannot come from the whole pooled set as in ``dk.mmd``; shuffle a loader whose first
rows are not representative.  The pilot rows also enter the test; under H0 the pilot is
exchangeable and the bandwidth a symmetric function of it, so E[v_k] stays 0.

**Inputs** of each domain: a (n, …) tensor (any device; sliced, never copied whole), a NumPy
array or memory-mapped ``.npy`` (``np.load(path, mmap_mode="r")``; read in chunks of
O(B) rows, copied to CPU tensors), or any iterable of batches such as a DataLoader (items are
tensors / arrays, or tuples whose first element is, like ``(x, y)``).  Source and target
iterables are consumed in lock-step, each only as far as the other needs.  Rows are flattened
to (rows, d); every chunk is checked for non-finite values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from statistics import NormalDist

import numpy as np
import torch

from .._validation import as_features
from ..functional import mmd
from ..kernels import GaussianKernels
from .result import TestResult

__all__ = [
    "block_mmd_test",
    "linear_mmd_test",
    "default_block_size",
    "PILOT_ROWS",
    "BlockStream",
]

#: Rows per domain of the pilot sample that fixes the bandwidths of a relative bank.
PILOT_ROWS = 1000
#: Block size when the number of rows is not known in advance (unsized iterables).
UNSIZED_BLOCK_SIZE = 256
_DEFAULT_KERNELS = GaussianKernels()
_STEP_ROWS = 4096  # rows per domain per compute step (a multiple of the unit)


def default_block_size(n: int | None, m: int | None) -> int:
    """Block size of the B-test: ``max(2, ⌊√min(n, m)⌋)``, or 256 when a size is unknown.

    ``B = √n`` (Zaremba et al.) balances the variance of each block (shrinks with B) against the
    number of blocks the normal approximation averages (√n of them); cost O(n·B·d) = O(n^1.5·d).
    """
    if n is None or m is None:
        return UNSIZED_BLOCK_SIZE
    return max(2, math.isqrt(min(n, m)))


def _normal_sf(z: float) -> float:
    """``1 − Φ(z)``, accurate in the upper tail."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


class _Moments:
    """count, mean and M2 = Σ (v − mean)² of a stream of float64 values (Chan's merge)."""

    def __init__(self, count: int = 0, mean: float = 0.0, m2: float = 0.0) -> None:
        self.count, self.mean, self.m2 = int(count), float(mean), float(m2)

    def add(self, values: torch.Tensor) -> None:
        v = values.detach().to(device="cpu", dtype=torch.float64)
        if v.numel():
            mean = float(v.mean())
            self.merge(_Moments(v.numel(), mean, float(((v - mean) ** 2).sum())))

    def merge(self, other: _Moments) -> None:
        if other.count == 0:
            return
        n_a, n = self.count, self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / n
        self.m2 += other.m2 + delta * delta * n_a * other.count / n
        self.count = n

    def std_error(self) -> float:
        """``sd / √count`` with ddof = 1 (needs count ≥ 2)."""
        return math.sqrt(max(self.m2, 0.0) / (self.count - 1) / self.count)


def _as_chunk(item: object, name: str) -> torch.Tensor:
    """One batch of one domain as a detached (rows, d) tensor (a copy for NumPy input)."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError(f"{name} is an empty tuple; expected features first")
        item = item[0]
    if isinstance(item, np.ndarray):
        if item.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating-point features, got dtype {item.dtype}")
        arr = np.ascontiguousarray(item)
        if not arr.flags.writeable:  # a read-only memmap: copy the chunk (torch needs writable)
            arr = arr.copy()
        item = torch.from_numpy(arr)
    if not isinstance(item, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or a NumPy array, got {type(item).__name__}")
    if not item.is_floating_point():
        raise TypeError(f"{name} must hold floating-point features, got dtype {item.dtype}")
    return as_features(item.detach(), name)


def _sized_rows(data: object) -> int | None:
    """Rows of an array / tensor, or of a DataLoader's dataset; None when unknown."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return int(data.shape[0]) if data.ndim else None
    dataset = getattr(data, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def _chunks(data: object, name: str, rows: int) -> Iterator[torch.Tensor]:
    """Yields (rows, d) tensors of one domain; arrays and tensors are sliced ``rows`` at a time."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        if data.ndim < 2:
            raise ValueError(
                f"{name} must have shape (rows, features...), got shape {tuple(data.shape)}"
            )
        if data.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(data.shape)})")
        for i in range(0, data.shape[0], rows):
            yield _as_chunk(data[i : i + rows], name)
        return
    if isinstance(data, (str, bytes, dict)):
        raise TypeError(
            f"{name} must be a tensor, an array or an iterable of batches, got "
            f"{type(data).__name__}"
        )
    try:
        batches = iter(data)
    except TypeError:
        raise TypeError(
            f"{name} must be a tensor, an array or an iterable of batches, got "
            f"{type(data).__name__}"
        ) from None
    for i, item in enumerate(batches):
        yield _as_chunk(item, f"{name} (batch {i})")


def _check_finite(chunk: torch.Tensor, name: str, offset: int) -> None:
    ok = torch.isfinite(chunk).all(dim=1)
    if not bool(ok.all()):
        row = offset + int((~ok).nonzero()[0, 0])
        raise ValueError(f"{name} contains non-finite values (NaN or Inf), first at row {row}")


def _bank_sigma2(kernels: GaussianKernels, pilot: torch.Tensor | None) -> tuple:
    """σ_q² of the bank: fixed, or ``α_q · 2 Σ‖z_i − z̄‖² / P`` over the (P, d) float64 pilot."""
    if not kernels.relative:
        return kernels.sigma2_factors
    centred = pilot - pilot.mean(dim=0)
    mean_d2 = float(2.0 * (centred * centred).sum() / pilot.shape[0])
    if mean_d2 == 0.0:  # every row identical: as GaussianKernels, any bandwidth gives k = 1
        mean_d2 = 1.0
    return tuple(a * mean_d2 for a in kernels.alphas)


def _linear_h(xs: torch.Tensor, ys: torch.Tensor, sigma2: tuple) -> torch.Tensor:
    """Gretton's h over consecutive row pairs, float64: (r, d), (r, d) → (r/2,)."""
    xs, ys = xs.to(torch.float64), ys.to(torch.float64)
    x1, x2, y1, y2 = xs[0::2], xs[1::2], ys[0::2], ys[1::2]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = ((a - b) ** 2).sum(dim=1)
        return sum(torch.exp(d2 * (-0.5 / s2)) for s2 in sigma2)

    return k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)


class BlockStream:
    """Mergeable streaming state of the block / linear statistic (see the module docstring).

    Rows of each domain wait in a buffer until the other domain's rows of the same units
    arrive, and (relative bank) until the pilot fixes the bandwidths; memory is O(step·d) when
    both domains arrive at similar rates, plus the float64 pilot (≤ 1000 rows per domain).

    Args:
        kernels: the bank (default ``GaussianKernels()``).
        kind: ``"block"`` (units of ``block_size`` rows) or ``"linear"`` (units of 2 rows).
        block_size: B of the block test; for the linear test, rows per compute step.
        pilot_rows: rows per domain of the pilot sample.
    """

    def __init__(
        self,
        kernels: GaussianKernels | None = None,
        kind: str = "block",
        block_size: int = UNSIZED_BLOCK_SIZE,
        pilot_rows: int = PILOT_ROWS,
    ) -> None:
        if kernels is None:
            kernels = _DEFAULT_KERNELS
        if not isinstance(kernels, GaussianKernels):
            raise TypeError(f"kernels must be GaussianKernels, got {type(kernels).__name__}")
        if kind not in ("block", "linear"):
            raise ValueError(f"kind must be 'block' or 'linear', got {kind!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
            raise ValueError(f"block_size must be an integer >= 2, got {block_size!r}")
        if isinstance(pilot_rows, bool) or not isinstance(pilot_rows, int) or pilot_rows < 2:
            raise ValueError(f"pilot_rows must be an integer >= 2, got {pilot_rows!r}")
        self.kernels, self.kind = kernels, kind
        self.block_size, self.pilot_rows = block_size, pilot_rows
        if kind == "block":
            self.unit = block_size
            self.step = block_size * max(1, _STEP_ROWS // block_size)
        else:
            self.unit, self.step = 2, block_size - block_size % 2
        self.sigma2: tuple | None = None if kernels.relative else kernels.sigma2_factors
        self.moments = _Moments()
        self.rows = [0, 0]  # rows seen per domain
        self.pilot: list[torch.Tensor | None] = [None, None]  # float64, ≤ pilot_rows each
        self.pending: list[list[torch.Tensor]] = [[], []]
        self.pending_rows = [0, 0]
        self.d: int | None = None
        self.device: torch.device | None = None

    # ---------------------------------------------------------------- feeding

    def add(self, domain: int, chunk: torch.Tensor, name: str) -> int:
        """Appends validated (rows, d) ``chunk`` to ``domain`` (0 source, 1 target).

        Returns the number of rows per domain that entered complete units in this call.
        """
        self.check(domain, chunk, name)
        if self.d is None:
            self.d, self.device = chunk.shape[1], chunk.device
        self.rows[domain] += chunk.shape[0]
        pilot = self.pilot[domain]
        have = 0 if pilot is None else pilot.shape[0]
        if have < self.pilot_rows:
            extra = chunk[: self.pilot_rows - have].to(torch.float64)
            self.pilot[domain] = extra if pilot is None else torch.cat([pilot, extra])
        self.pending[domain].append(chunk)
        self.pending_rows[domain] += chunk.shape[0]
        if self.sigma2 is None and all(
            p is not None and p.shape[0] >= self.pilot_rows for p in self.pilot
        ):
            self._resolve()
        return self._drain(final=False)

    def check(self, domain: int, chunk: torch.Tensor, name: str) -> None:
        """Raises ValueError naming ``name`` if ``chunk`` cannot be added (width, device, NaN)."""
        if self.d is not None and chunk.shape[1] != self.d:
            raise ValueError(
                f"feature dimensions differ: {name} has d={chunk.shape[1]}, earlier rows have "
                f"d={self.d}"
            )
        if self.device is not None and chunk.device != self.device:
            raise ValueError(f"{name} is on {chunk.device} but earlier rows are on {self.device}")
        _check_finite(chunk, name, self.rows[domain])

    def needs(self, domain: int) -> bool:
        """Whether more rows of ``domain`` are needed before the next compute step."""
        if self.sigma2 is None:
            p = self.pilot[domain]
            if p is None or p.shape[0] < self.pilot_rows:
                return True
        return self.pending_rows[domain] < self.step

    def _resolve(self) -> None:
        if self.sigma2 is not None:
            return
        parts = [p for p in self.pilot if p is not None]
        if not parts:
            raise ValueError("no rows to estimate the bandwidths from")
        self.sigma2 = _bank_sigma2(self.kernels, torch.cat(parts))

    def finalize(self) -> int:
        """Fixes the bandwidths (from the pilot seen so far) and uses every complete unit.

        Further rows may still be added afterwards: unit boundaries depend only on row indices.
        """
        self._resolve()
        return self._drain(final=True)

    def _take(self, domain: int, rows: int) -> torch.Tensor:
        buf = torch.cat(self.pending[domain]) if len(self.pending[domain]) > 1 else \
            self.pending[domain][0]
        head, tail = buf[:rows], buf[rows:]
        self.pending[domain] = [tail] if tail.shape[0] else []
        self.pending_rows[domain] -= rows
        return head

    def _drain(self, final: bool) -> int:
        if self.sigma2 is None:
            return 0
        used = 0
        while True:
            ready = min(self.pending_rows)
            if ready >= self.step:
                rows = self.step
            elif final and ready >= self.unit:
                rows = ready - ready % self.unit
            else:
                return used
            xs, ys = self._take(0, rows), self._take(1, rows)
            self.moments.add(self._values(xs, ys))
            used += rows

    def _values(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Per-unit statistics of ``rows`` paired rows (a multiple of the unit)."""
        if xs.dtype != ys.dtype:
            dtype = torch.promote_types(xs.dtype, ys.dtype)
            xs, ys = xs.to(dtype), ys.to(dtype)
        if self.kind == "linear":
            return _linear_h(xs, ys, self.sigma2)
        bank = GaussianKernels(sigmas=[math.sqrt(s2) for s2 in self.sigma2])
        b = self.block_size
        values = [mmd(xs[i : i + b], ys[i : i + b], bank, "unbiased")
                  for i in range(0, xs.shape[0], b)]
        return torch.stack(values)

    # ---------------------------------------------------------------- merging and state

    def _check_compatible(self, other: BlockStream) -> None:
        if not isinstance(other, BlockStream):
            raise TypeError(f"other must be a BlockStream, got {type(other).__name__}")
        for attr in ("kind", "block_size", "pilot_rows", "kernels"):
            if getattr(self, attr) != getattr(other, attr):
                raise ValueError(
                    f"cannot merge states with different {attr}: {getattr(self, attr)!r} vs "
                    f"{getattr(other, attr)!r}"
                )

    def merge(self, other: BlockStream) -> None:
        """Adds ``other`` (left unchanged) as if its rows had come after ours.

        Exact (up to float sums) when our rows per domain are a multiple of the unit and our
        pilot is complete, or the bank is fixed: see :class:`~dapkernels.metrics.DomainShift`.
        """
        self._check_compatible(other)
        if other.d is None:
            return
        if self.d is not None and other.d != self.d:
            raise ValueError(f"feature dimensions differ: d={self.d} here, d={other.d} in other")
        if self.device is None:
            self.d, self.device = other.d, other.device
        if self.sigma2 is not None and other.sigma2 is not None and self.sigma2 != other.sigma2:
            raise ValueError(
                "cannot merge states whose bandwidths differ (a relative bank resolved from "
                "different pilot samples); give the workers a fixed bank, "
                "GaussianKernels(sigmas=...)"
            )
        if self.sigma2 is None:
            self.sigma2 = other.sigma2
        for dom in (0, 1):
            self.rows[dom] += other.rows[dom]
            theirs = other.pilot[dom]
            if theirs is not None:
                mine = self.pilot[dom]
                room = self.pilot_rows - (0 if mine is None else mine.shape[0])
                if room > 0:
                    extra = theirs[:room].to(self.device)
                    self.pilot[dom] = extra if mine is None else torch.cat([mine, extra])
            self.pending[dom] += [p.to(self.device) for p in other.pending[dom]]
            self.pending_rows[dom] += other.pending_rows[dom]
        self.moments.merge(other.moments)
        if self.sigma2 is None and all(
            p is not None and p.shape[0] >= self.pilot_rows for p in self.pilot
        ):
            self._resolve()
        self._drain(final=False)

    def state_dict(self) -> dict:
        """Plain tensors and numbers (pending rows concatenated); see :meth:`load_state_dict`."""
        return {
            "kind": self.kind, "block_size": self.block_size, "pilot_rows": self.pilot_rows,
            "sigma2": None if self.sigma2 is None else list(self.sigma2),
            "moments": [self.moments.count, self.moments.mean, self.moments.m2],
            "rows": list(self.rows), "d": self.d,
            "pilot": [None if p is None else p.clone() for p in self.pilot],
            "pending": [torch.cat(p) if p else None for p in self.pending],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores a :meth:`state_dict` of a stream with the same kind, block size and pilot."""
        for key in ("kind", "block_size", "pilot_rows"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"state_dict has {key}={state[key]!r}, this state has {getattr(self, key)!r}"
                )
        self.sigma2 = None if state["sigma2"] is None else tuple(state["sigma2"])
        self.moments = _Moments(*state["moments"])
        self.rows = list(state["rows"])
        self.d = state["d"]
        self.pilot = [None if p is None else p.clone() for p in state["pilot"]]
        self.pending = [[p.clone()] if p is not None else [] for p in state["pending"]]
        self.pending_rows = [0 if p is None else p.shape[0] for p in state["pending"]]
        tensors = [t for t in self.pilot if t is not None] + [p for ps in self.pending for p in ps]
        self.device = tensors[0].device if tensors else None

    # ---------------------------------------------------------------- result

    def result(self, alpha: float, method: str) -> TestResult:
        """The Gaussian-null test on the units accumulated so far (call :meth:`finalize` first)."""
        k = self.moments.count
        if k < 2:
            raise ValueError(
                f"too few samples for the {method} test: {k} complete unit(s) of {self.unit} "
                f"rows (source rows {self.rows[0]}, target rows {self.rows[1]}); it needs at "
                f"least 2 (give more rows or a smaller block_size)"
            )
        stat, se = self.moments.mean, self.moments.std_error()
        if se > 0.0:
            p = _normal_sf(stat / se)
        else:
            p = 1.0 if stat <= 0.0 else 0.0
        return TestResult(
            statistic=stat, p_value=p, reject=p <= alpha,
            threshold=NormalDist().inv_cdf(1.0 - alpha) * se, null=None, method=method,
            num_permutations=0, alpha=alpha, estimator="unbiased", std_error=se,
            num_blocks=k, block_size=self.unit, sigma2=tuple(self.sigma2),
        )


def _check_common(estimator: str, alpha: float, method: str) -> None:
    if estimator != "unbiased":
        raise ValueError(
            f"estimator must be 'unbiased' for the {method} test, got {estimator!r}: its null is "
            f"Gaussian with mean 0, which a biased (V-statistic) unit value does not have"
        )
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _stream(x: object, y: object, state: BlockStream, progress: bool, desc: str) -> None:
    """Feeds both domains into ``state`` in lock-step, each only as far as the other needs."""
    n, m = _sized_rows(x), _sized_rows(y)
    streams = [_chunks(x, "x", state.step), _chunks(y, "y", state.step)]
    names = ("x", "y")
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:  # optional dependency (the "train" extra)
            raise ImportError("progress=True needs tqdm (pip install tqdm)") from exc
        total = None if n is None or m is None else min(n, m) // state.unit * state.unit
        bar = tqdm(total=total, desc=desc, unit="row", unit_scale=True)
    done = [False, False]
    try:
        pulled = True
        while pulled:  # stops when each domain is exhausted or has all the rows it needs
            pulled = False
            for dom in (0, 1):
                if done[dom] or not state.needs(dom):
                    continue
                chunk = next(streams[dom], None)
                if chunk is None:
                    done[dom] = True
                    continue
                pulled = True
                used = state.add(dom, chunk, names[dom])
                if bar is not None and used:
                    bar.update(used)
        for dom in (0, 1):
            if state.rows[dom] == 0:
                raise ValueError(f"{names[dom]} yielded no rows")
        used = state.finalize()
        if bar is not None and used:
            bar.update(used)
    finally:
        if bar is not None:
            bar.close()


def _run(x, y, kernels, kind, estimator, alpha, block_size, progress, method) -> TestResult:
    _check_common(estimator, alpha, method)
    if block_size is None:
        block_size = (default_block_size(_sized_rows(x), _sized_rows(y)) if kind == "block"
                      else _STEP_ROWS)
    state = BlockStream(kernels, kind, block_size)
    _stream(x, y, state, progress, f"{method} MMD test")
    return state.result(alpha, method)


def block_mmd_test(
    x: object,
    y: object,
    kernels: GaussianKernels | None = None,
    *,
    estimator: str = "unbiased",
    alpha: float = 0.05,
    block_size: int | None = None,
    progress: bool = False,
) -> TestResult:
    """B-test: the mean of the unbiased MMD² of B-row blocks, with a Gaussian null.

    ``T = (1/K) Σ_k η_k``, ``se = sd(η)/√K``, ``p = 1 − Φ(T/se)``, threshold ``z_{1−α}·se``, with
    ``η_k = dk.mmd(x[kB:(k+1)B], y[kB:(k+1)B], bank, "unbiased")`` and ``K = ⌊min(n, m)/B⌋``
    (see the module docstring for the bandwidths of a relative bank, the inputs and the rows
    left out).  Time O(min(n, m)·B·d); memory O(B·d) beyond the inputs, whatever n and m.

    Args:
        x: source rows, (n, …): tensor, NumPy array / memmap, or iterable of batches.
        y: target rows, (m, …), same kinds and feature size.
        kernels: the bank (default ``GaussianKernels()``; relative banks use the pilot sample).
        estimator: ``"unbiased"`` (the only one whose block values have mean 0 under H0).
        alpha: level of the test.
        block_size: B (default ``max(2, ⌊√min(n, m)⌋)``, or 256 for iterables without a sized
            ``.dataset``).
        progress: show a tqdm bar of the rows used.

    Returns:
        :class:`~dapkernels.metrics.TestResult` with ``method="block"``, ``null=None``,
        ``std_error`` = se, ``num_blocks`` = K, ``block_size`` = B and ``sigma2`` the bandwidths.
    """
    return _run(x, y, kernels, "block", estimator, alpha, block_size, progress, "block")


def linear_mmd_test(
    x: object,
    y: object,
    kernels: GaussianKernels | None = None,
    *,
    estimator: str = "unbiased",
    alpha: float = 0.05,
    block_size: int | None = None,
    progress: bool = False,
) -> TestResult:
    """Gretton's linear-time test over consecutive row pairs, with a Gaussian null.

    ``T = (1/K) Σ_k h_k`` with
    ``h_k = k(x_{2k}, x_{2k+1}) + k(y_{2k}, y_{2k+1}) − k(x_{2k}, y_{2k+1}) − k(x_{2k+1}, y_{2k})``,
    ``K = ⌊min(n, m)/2⌋``, ``se = sd(h)/√K``, ``p = 1 − Φ(T/se)`` (module docstring for the
    bandwidths, inputs and rows left out).  Time O(min(n, m)·d), memory O(block_size·d).

    Args:
        x: source rows, (n, …): tensor, NumPy array / memmap, or iterable of batches.
        y: target rows, (m, …).
        kernels: the bank (default ``GaussianKernels()``).
        estimator: ``"unbiased"`` (h is an unbiased estimate of MMD²).
        alpha: level of the test.
        block_size: rows per domain read and evaluated per step (default 4096; rounded down to
            an even number).  It bounds memory and does not change the result.
        progress: show a tqdm bar of the rows used.

    Returns:
        :class:`~dapkernels.metrics.TestResult` with ``method="linear"``, ``block_size`` = 2
        (rows per unit) and ``num_blocks`` = K.
    """
    return _run(x, y, kernels, "linear", estimator, alpha, block_size, progress, "linear")
