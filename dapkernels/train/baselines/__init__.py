"""Naive baselines that the reference trainers and benchmarks can swap in (``--impl naive``)."""

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
