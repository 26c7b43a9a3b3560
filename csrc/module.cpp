// pybind11 entry point of dapkernels._C.  Each op family registers its functions from its own
// translation unit; this file only wires them together.
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>
#include <vector>

#include "isa.h"
#include "parallel.h"

namespace py = pybind11;

void register_mmd(py::module_& m);
void register_coral(py::module_& m);
void register_quadratic_forms(py::module_& m);

// Test hook: calls fn(i) once from each thread i of an OpenMP region of `threads` threads,
// each call holding the GIL, so that tests can run the core nested inside an outer parallel
// region.  Returns the results in thread order; a Python error in any call is re-raised after
// the region (nothing may propagate out of it).
static py::list call_from_parallel_region(const py::function& fn, int threads) {
  if (threads < 1) throw py::value_error("threads: must be at least 1");
  std::vector<py::object> results(static_cast<std::size_t>(threads));
  std::string error;
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(threads)
    {
      const int t = dk::thread_index();
      py::gil_scoped_acquire acquire;
      try {
        results[static_cast<std::size_t>(t)] = fn(t);
      } catch (const std::exception& e) {
        if (error.empty()) error = e.what();
      }
    }
  }
  if (!error.empty()) throw std::runtime_error("call_from_parallel_region: " + error);
  py::list out;
  for (const py::object& r : results) out.append(r ? r : py::none());
  return out;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "dapkernels CPU core: fused MMD / JMMD and CORAL kernels (no libtorch dependency)";
  if (std::strlen(dk::isa_error()) != 0) throw py::value_error(dk::isa_error());
  m.attr("isa") = dk::isa_name(dk::active_isa());
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.def("call_from_parallel_region", &call_from_parallel_region, py::arg("fn"),
        py::arg("threads"), "Test hook: fn(i) from each thread i of an OpenMP region.");
  register_mmd(m);
  register_coral(m);
  register_quadratic_forms(m);
}
