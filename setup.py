"""Builds the pybind11 extension ``dapkernels._C`` from ``csrc/``.

The extension takes raw pointers, sizes and strides from Python and never links against
libtorch, so one wheel works with every torch version the package supports.  It is built with
``-O3`` and OpenMP for the baseline ISA of the target; on x86-64 the kernels carry AVX2/FMA and
AVX-512 copies selected at run time (``csrc/isa.h``), so a wheel built here still imports and
runs on a CPU without AVX2.

Build switches (environment variables, read at build time):

* ``DAPKERNELS_NO_OPENMP=1``: no OpenMP (single-threaded core; also what Apple clang gets).
* ``DAPKERNELS_PORTABLE=1``: only the generic 16-byte-vector copy, no x86 intrinsics or
  target attributes: the code an aarch64 build compiles, testable on x86.
* ``DAPKERNELS_SANITIZE=1``: AddressSanitizer + UndefinedBehaviorSanitizer, ``-O1 -g`` (load
  with ``LD_PRELOAD=$(g++ -print-file-name=libasan.so)``; see ``.ci/sanitize``).
* ``DAPKERNELS_DEBUG=1``: ``-O0 -g``.
"""

import glob
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _args() -> tuple[list, list]:
    """(compile, link) arguments for the switches above."""
    openmp = not _flag("DAPKERNELS_NO_OPENMP") and sys.platform != "darwin"
    compile_args = ["-O3", "-fno-math-errno", "-ffp-contract=fast", "-fvisibility=hidden"]
    link_args = []
    if _flag("DAPKERNELS_DEBUG"):
        compile_args = ["-O0", "-g"]
    if _flag("DAPKERNELS_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
               "-fno-omit-frame-pointer"]
        compile_args = ["-O1", "-g", *san]
        link_args += san
    if _flag("DAPKERNELS_PORTABLE"):
        compile_args.append("-DDK_PORTABLE")
    if openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    return compile_args, link_args


_compile, _link = _args()
ext = Pybind11Extension(
    "dapkernels._C",
    sorted(glob.glob(os.path.join("csrc", "*.cpp"))),
    include_dirs=["csrc"],
    extra_compile_args=_compile,
    extra_link_args=_link,
    cxx_std=17,
    depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
