"""Naive baselines: the MMD / CORAL / gradient-reversal code people copy today, written from the
formulas.  The benchmarks time them against the fused ops and the reference trainers swap them
in (``--impl naive``); see docs/design.md §Layers and naming."""

from .coral import naive_coral
from .grl import NaiveGradReverse, naive_grad_reverse
from .mmd import PATTERNS, deepda_kernels, naive_jmmd, naive_mmd

__all__ = [
    "PATTERNS",
    "deepda_kernels",
    "naive_jmmd",
    "naive_mmd",
    "naive_coral",
    "NaiveGradReverse",
    "naive_grad_reverse",
]
