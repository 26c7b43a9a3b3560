"""Naive baselines that the reference trainers and benchmarks can swap in (``--impl naive``)."""

from .mmd import PATTERNS, deepda_kernels, naive_jmmd, naive_mmd

__all__ = ["PATTERNS", "deepda_kernels", "naive_jmmd", "naive_mmd"]
