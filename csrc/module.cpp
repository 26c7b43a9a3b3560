// pybind11 entry point of dapkernels._C.  Each op family registers its functions from its own
// translation unit; this file only wires them together.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_mmd(py::module_& m);
void register_coral(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "dapkernels CPU core: fused MMD / JMMD and CORAL kernels (no libtorch dependency)";
  register_mmd(m);
  register_coral(m);
}
