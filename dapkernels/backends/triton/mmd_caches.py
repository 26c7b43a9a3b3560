"""Device-side tables of the Triton MMD host, built once and cached.

A training loop calls the loss with the same banks, weights and shapes every step, so each
table is uploaded to the device once and later calls cost a dict lookup.  Four caches, each
cleared when it reaches 256 entries: one layer's bank (:func:`bank_table`), the layer / bank /
group tables of a JMMD sweep (:func:`layer_tables`), the loss coefficients
(:func:`coef_table`) and the launch plan of ``mmd_small_kernel`` (:func:`small_plan`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import triton

from . import mmd_kernels as K
from .configs import SMALL_BD, SMALL_BN, SMALL_STAGES, SMALL_WARPS

__all__ = ["squaring", "bank_list", "bank_table", "layer_tables", "coef_table", "small_plan"]

_MAX_ENTRIES = 256


def _cached(cache: dict, key: tuple, build: Callable[..., Any], *args: Any) -> Any:
    """``cache[key]``, built as ``build(*args)`` on a miss (the cache is emptied when full)."""
    hit = cache.get(key)
    if hit is None:
        if len(cache) >= _MAX_ENTRIES:
            cache.clear()
        hit = cache[key] = build(*args)
    return hit


def squaring(factors: Sequence[float]) -> bool:
    """True when the sorted factors form a geometric series of ratio 2 (γ_q = γ_0 · 2^q) short
    enough for the unrolled squaring chain."""
    f = sorted(factors, reverse=True)
    return len(f) <= K.MAX_SQUARINGS.value and all(
        math.isclose(a, 2.0 * b, rel_tol=1e-12) for a, b in zip(f, f[1:]))


def bank_list(factors: Sequence[float]) -> list[float]:
    """``[γ_max, γ_0, γ_1, …]`` with γ = 1/(2 factor); doubling banks sorted widest first."""
    gs = [0.5 / f for f in (sorted(factors, reverse=True) if squaring(factors) else factors)]
    return [max(gs)] + gs


_BANKS: dict[tuple, torch.Tensor] = {}


def _build_bank(factors: tuple, device: torch.device) -> torch.Tensor:
    return torch.tensor(bank_list(factors), dtype=torch.float32, device=device)


def bank_table(factors: tuple, device: torch.device) -> torch.Tensor:
    """One layer's bank (float32, ``[γ_max, γ_0, …, γ_{Q−1}]``) on ``device``."""
    return _cached(_BANKS, (factors, device), _build_bank, factors, device)


_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _build_layer_tables(key: tuple, device: torch.device) -> tuple:
    _, dims, factors, relative, bd, dg = key
    layers: list[int] = []
    bank: list[float] = []
    groups: list[int] = []
    col = stats = 0
    for l, (d, fs, rel) in enumerate(zip(dims, factors, relative)):
        dpad = triton.cdiv(d, bd) * bd
        layers += [col, dpad, d, stats, len(bank), len(fs), int(rel), int(squaring(fs))]
        bank += bank_list(fs)
        for c0 in range(col, col + dpad, dg):
            groups += [l, c0, min(c0 + dg, col + dpad)]
        col += dpad
        stats += d + 1
    return (
        torch.tensor(layers, dtype=torch.int32, device=device),
        torch.tensor(bank, dtype=torch.float32, device=device),
        torch.tensor(groups, dtype=torch.int32, device=device),
    )


def layer_tables(key: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                            torch.Tensor]:
    """Layer (``LAYER_FIELDS`` ints per layer), bank (float32) and gradient-group
    (``GROUP_FIELDS`` ints per group) tables of ``mmd_sweep_kernel`` on ``device``, for
    ``key = (device, dims, factors, relative, BD, DG)``."""
    return _cached(_TABLES, key, _build_layer_tables, key, device)


_COEFS: dict[tuple, torch.Tensor] = {}


def _build_coefs(weights: tuple, const: float, device: torch.device) -> torch.Tensor:
    w_ss, w_st, w_tt = weights
    return torch.tensor([w_ss, 2.0 * w_st, w_tt, const], dtype=torch.float64, device=device)


def coef_table(weights: tuple, const: float, device: torch.device) -> torch.Tensor:
    """float64 ``[w_ss, 2 w_st, w_tt, c]`` on ``device``: ``L = coef · S + c``.

    float64 on the device because Triton passes Python floats as float32, which would round
    the weights of a loss that is a small difference of large terms.
    """
    return _cached(_COEFS, (weights, const, device), _build_coefs, weights, const, device)


#: per (dtype, device, bank, gradient, precision, value or sums): the bank on the device and
#: the launch constants of ``mmd_small_kernel``.
_SMALL_PLANS: dict[tuple, tuple[torch.Tensor, dict[str, object]]] = {}


def _build_small_plan(key: tuple) -> tuple[torch.Tensor, dict[str, object]]:
    _, device, factors, need_grad, prec, out_value = key
    return (
        bank_table(factors, device),
        {"BN": SMALL_BN, "BD": SMALL_BD, "SQUARE": squaring(factors), "HAS_GRAD": need_grad,
         "OUT_VALUE": out_value, "DOT_PREC": prec, "num_warps": SMALL_WARPS,
         "num_stages": SMALL_STAGES},
    )


def small_plan(key: tuple) -> tuple[torch.Tensor, dict[str, object]]:
    """``(bank, launch constants)`` of ``mmd_small_kernel`` for ``key = (dtype, device,
    factors, need_grad, precision, out_value)``: after the first call, one dict lookup."""
    return _cached(_SMALL_PLANS, key, _build_small_plan, key)
