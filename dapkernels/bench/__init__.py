"""Benchmarks: ``dapkernels bench <name>`` (see :mod:`dapkernels.bench.cli`) and the measurement
framework they share (:mod:`.runner`, :mod:`.measure`, :mod:`.timing`, :mod:`.memory`,
:mod:`.subprocess_protocol`, :mod:`.report`, :mod:`.machine`, :mod:`.plots`)."""

from .mmd import quick_mmd_comparison
from .plots import write_bar_chart
from .report import format_table, write_json
from .runner import Case, run_cases

__all__ = ["Case", "format_table", "quick_mmd_comparison", "run_cases", "write_bar_chart",
           "write_json"]
