// Quadratic-forms engine of the two-sample tests on the CPU (dapkernels.metrics.mmd_test):
// Q[l, b] = Σ_{i≠j} K_l[i, j] v[i, b] v[j, b], rowsums[l, i] = Σ_{j≠i} K_l[i, j] over the pooled
// rows z = [part 0; part 1; …], K_l = e^{−γ_l‖z_i − z_j‖²} (summed over l when sum_bank), in one
// tiled sweep that never stores a kernel matrix (contract:
// dapkernels/backends/reference_quadratic_forms.py; tile kernels: qf_kernel.h).
//
// Memory beyond the caller's inputs and int8 labels: N row pointers and norms, per thread a few
// tile × tile, tile × d and tile × B tiles, Q partials per row tile (N/tile × L' × B doubles)
// and the fixed-point row sums (L' × N int64); all allocated before the parallel region (no
// centred copy of the sample: tiles are centred as they are loaded).  Allocation failures are
// std::bad_alloc → MemoryError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "isa.h"
#include "parallel.h"

namespace dk {
namespace qf {

#define DK_KERNEL_HEADER "qf_kernel.h"
#include "isa_copies.h"

template <typename T>
struct Kernels {
  void (*sweep)(std::int64_t, std::int64_t, const T* const*, const double*, const T*, const T*,
                int, bool, const std::int8_t*, std::int64_t, std::int64_t, std::int64_t, double,
                double*, std::int64_t*, int);
  int lanes;
};

#define DK_QF_KERNELS(ns, T) \
  Kernels<T> { &ns::qf_sweep<T>, ns::kLanes<T> }

template <typename T>
Kernels<T> kernels() {
  DK_SELECT_ISA(DK_QF_KERNELS, T);
}

// Row pointers of the pooled sample, its column means (float64) and the norms ‖c_i‖² of the
// centred rows c_i = (T)(z_i − mu) (zero past row N − 1, up to `norm_rows`).  Raises ValueError
// for non-finite input.
template <typename T>
void center(const std::vector<Matrix>& parts, std::int64_t N, std::int64_t d,
            std::vector<const T*>& rows, std::vector<double>& mu, T* norms,
            std::int64_t norm_rows) {
  mu.assign(static_cast<std::size_t>(d), 0.0);
  rows.clear();
  for (const Matrix& p : parts)
    for (std::int64_t i = 0; i < p.rows; ++i) {
      const T* row = p.data<T>() + i * p.row_stride;
      rows.push_back(row);
      for (std::int64_t k = 0; k < d; ++k) mu[k] += static_cast<double>(row[k]);
    }
  for (std::int64_t k = 0; k < d; ++k) {
    if (!std::isfinite(mu[k])) throw py::value_error("parts: contain non-finite values");
    mu[k] /= static_cast<double>(N);
  }
  for (std::int64_t r = 0; r < N; ++r) {
    double s = 0.0;
    for (std::int64_t k = 0; k < d; ++k) {
      const double c = static_cast<double>(static_cast<T>(static_cast<double>(rows[r][k]) - mu[k]));
      s += c * c;
    }
    norms[r] = static_cast<T>(s);
  }
  for (std::int64_t i = N; i < norm_rows; ++i) norms[i] = T(0);
}

template <typename T>
void run(const std::vector<Matrix>& parts, std::int64_t N, std::int64_t d,
         const std::vector<double>& gammas, bool sum_bank, const std::int8_t* v,
         std::int64_t ldv, std::int64_t B, double* q, double* rowsums, std::int64_t tile,
         int threads) {
  const Kernels<T> k = kernels<T>();
  const int L = static_cast<int>(gammas.size());
  const int Lp = sum_bank ? 1 : L;
  const std::int64_t nb = (N + tile - 1) / tile;
  const std::int64_t pan = 2 * k.lanes;
  const std::int64_t Bp = (B + pan - 1) / pan * pan;
  const std::int64_t norm_rows = nb * tile + pan;
  std::vector<const T*> rows;
  std::vector<double> mu;
  std::unique_ptr<T[]> norms(new T[static_cast<std::size_t>(norm_rows)]);
  std::vector<double> qpart(static_cast<std::size_t>(nb * Lp * Bp));
  std::vector<std::int64_t> rs(static_cast<std::size_t>(Lp * N), 0);
  std::vector<T> gam(gammas.begin(), gammas.end());
  for (T g : gam)
    if (!std::isfinite(g) || !(g > T(0)))
      throw py::value_error("gammas: out of range of the compute dtype");
  center<T>(parts, N, d, rows, mu, norms.get(), norm_rows);
  // Fixed point of the row sums: each is at most (N − 1)·L, keep 2 bits of headroom in int64.
  const double bound = static_cast<double>(N) * static_cast<double>(sum_bank ? L : 1) + 1.0;
  const double fscale = std::ldexp(1.0, 61 - static_cast<int>(std::ceil(std::log2(bound))));
  // Threads pay off from a few hundred microseconds of work and two row tiles.
  const double work = static_cast<double>(N) * static_cast<double>(N) * (d + B * Lp);
  const int nt = threads > 1 && nb > 1 && work > 1e7
                     ? static_cast<int>(std::min<std::int64_t>(threads, nb)) : 1;
  k.sweep(N, d, rows.data(), mu.data(), norms.get(), gam.data(), L, sum_bank, v, ldv, B, tile,
          fscale, qpart.data(), rs.data(), nt);
  for (int l = 0; l < Lp; ++l) {
    for (std::int64_t b = 0; b < B; ++b) {
      double s = 0.0;
      for (std::int64_t I = 0; I < nb; ++I) s += qpart[(I * Lp + l) * Bp + b];
      q[l * B + b] = s;
    }
    for (std::int64_t i = 0; i < N; ++i)
      rowsums[l * N + i] = static_cast<double>(rs[l * N + i]) / fscale;
  }
}

void quadratic_forms(const std::vector<std::uintptr_t>& part_ptrs,
                     const std::vector<std::int64_t>& part_rows,
                     const std::vector<std::int64_t>& part_row_strides,
                     const std::vector<std::int64_t>& part_col_strides, std::int64_t cols,
                     const std::string& dtype, const std::vector<double>& gammas,
                     std::uintptr_t v_ptr, std::int64_t v_row_stride, std::int64_t B,
                     bool sum_bank, std::uintptr_t q_ptr, std::uintptr_t rowsums_ptr,
                     std::int64_t tile, int threads) {
  if (threads < 1) throw py::value_error("threads: must be at least 1");
  if (tile < 1 || tile > 4096) throw py::value_error("tile: must be in [1, 4096]");
  if (part_ptrs.empty() || part_rows.size() != part_ptrs.size() ||
      part_row_strides.size() != part_ptrs.size() || part_col_strides.size() != part_ptrs.size())
    throw py::value_error("parts: expected matching, non-empty lists of pointers and sizes");
  if (cols < 1) throw py::value_error("cols: must be at least 1");
  if (gammas.empty() || gammas.size() > 64)
    throw py::value_error("gammas: expected 1 to 64 kernels");
  for (double g : gammas)
    if (!std::isfinite(g) || !(g > 0.0)) throw py::value_error("gammas: must be finite and > 0");
  if (B < 1) throw py::value_error("B: must be at least 1");
  std::vector<Matrix> parts;
  std::int64_t N = 0;
  for (std::size_t p = 0; p < part_ptrs.size(); ++p) {
    parts.push_back(make_matrix(part_ptrs[p], part_rows[p], cols, part_row_strides[p],
                                part_col_strides[p], dtype, "parts"));
    N += part_rows[p];
  }
  if (N < 1) throw py::value_error("parts: no rows");
  if (v_ptr == 0) throw py::value_error("v: null data pointer");
  if (v_row_stride < B || v_row_stride > (std::int64_t(1) << 40) / N)
    throw py::value_error("v: row stride must be at least B and the size must not overflow");
  const std::int64_t Lp = sum_bank ? 1 : static_cast<std::int64_t>(gammas.size());
  make_matrix(q_ptr, Lp, B, B, 1, "float64", "q");
  make_matrix(rowsums_ptr, Lp, N, N, 1, "float64", "rowsums");
  const auto* vp = reinterpret_cast<const std::int8_t*>(v_ptr);
  auto* qp = reinterpret_cast<double*>(q_ptr);
  auto* rp = reinterpret_cast<double*>(rowsums_ptr);
  const DType dt = parts[0].dtype;
  py::gil_scoped_release release;
  if (dt == DType::f32)
    run<float>(parts, N, cols, gammas, sum_bank, vp, v_row_stride, B, qp, rp, tile, threads);
  else
    run<double>(parts, N, cols, gammas, sum_bank, vp, v_row_stride, B, qp, rp, tile, threads);
}

}  // namespace qf
}  // namespace dk

void register_quadratic_forms(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("quadratic_forms", &dk::qf::quadratic_forms, py::arg("part_ptrs"), py::arg("part_rows"),
        py::arg("part_row_strides"), py::arg("part_col_strides"), py::arg("cols"),
        py::arg("dtype"), py::arg("gammas"), py::arg("v_ptr"), py::arg("v_row_stride"),
        py::arg("B"), py::arg("sum_bank"), py::arg("q_ptr"), py::arg("rowsums_ptr"),
        py::arg("tile") = 256, py::arg("threads") = 1,
        "Quadratic forms of the two-sample tests over the pooled rows of the parts (each "
        "rows × cols, float32 or float64): writes Q (L' × B float64, Q[l, b] = Σ_{i≠j} K_l[i, j] "
        "v[i, b] v[j, b]) and rowsums (L' × N float64) for int8 labels v (N × B), "
        "K_l = exp(−γ_l‖z_i − z_j‖²), L' = 1 (the bank summed) when sum_bank else len(gammas).  "
        "At most `threads` OpenMP threads; results identical for any thread count.");
}
