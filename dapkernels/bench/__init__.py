"""Benchmarks: ``dapkernels bench <name>`` (see :mod:`dapkernels.bench.cli`) and the shared
measurement framework (:mod:`dapkernels.bench.common`)."""

from .common import Case, format_table, run_cases, write_bar_chart, write_json
from .mmd import quick_mmd_comparison

__all__ = ["Case", "format_table", "quick_mmd_comparison", "run_cases", "write_bar_chart",
           "write_json"]
