"""Builds the pybind11 extension ``dapkernels._C`` from ``csrc/``.

The extension takes raw pointers, sizes and strides from Python and never links against
libtorch, so one wheel works with every torch version the package supports.  It is built with
``-O3`` and OpenMP for the baseline x86-64 ISA; the hot loops carry AVX2/FMA (and AVX-512)
copies selected at run time (see ``csrc/mmd.cpp``), so a wheel built here still imports and runs
on a CPU without AVX2.
"""

import glob
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def _compile_args() -> list:
    args = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=fast", "-fvisibility=hidden"]
    if os.environ.get("DAPKERNELS_DEBUG"):
        args = ["-O0", "-g", "-fopenmp"]
    return args


ext = Pybind11Extension(
    "dapkernels._C",
    sorted(glob.glob(os.path.join("csrc", "*.cpp"))),
    include_dirs=["csrc"],
    extra_compile_args=_compile_args(),
    extra_link_args=["-fopenmp"],
    cxx_std=17,
    depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),
)

if sys.platform == "darwin":  # Apple clang has no -fopenmp; build single-threaded there
    ext.extra_compile_args = [a for a in ext.extra_compile_args if a != "-fopenmp"]
    ext.extra_link_args = []

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
