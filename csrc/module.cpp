// pybind11 entry point of dapkernels._C.  Each op family registers its functions from its own
// translation unit; this file only wires them together.
#include <pybind11/pybind11.h>

#include <cstring>

#include "isa.h"

namespace py = pybind11;

void register_mmd(py::module_& m);
void register_coral(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "dapkernels CPU core: fused MMD / JMMD and CORAL kernels (no libtorch dependency)";
  if (std::strlen(dk::isa_error()) != 0) throw py::value_error(dk::isa_error());
  m.attr("isa") = dk::isa_name(dk::active_isa());
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  register_mmd(m);
  register_coral(m);
}
