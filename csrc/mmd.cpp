// Fused MMD / JMMD sweep on the CPU (DESIGN §3): block sums S_ss, S_st, S_tt of a Gaussian bank
// (or of the product of several banks for JMMD) and, in the same pass, the gradient of
// L = w_ss S_ss + 2 w_st S_st + w_tt S_tt.
//
// Python entry point: mmd_sweep(...), the whole sweep in one call (own GEMM micro-kernel,
// tiles I ≤ J over OpenMP threads).  Every pointer is validated with make_matrix before use and
// the GIL is released while the kernels run.
//
// The kernels are compiled three times (baseline x86-64, AVX2+FMA, AVX-512) and the copy to run
// is picked once from the CPU's features, so the extension runs on any x86-64 CPU.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "mmd_common.h"

namespace dk {
namespace mmd {

#if defined(__x86_64__) || defined(__i386__)
#define DK_X86 1
#endif

namespace isa_base {
#define DK_VBYTES 16
#include "simd.h"
#include "mmd_kernel.h"
#undef DK_VBYTES
#undef DK_MR
}  // namespace isa_base

#ifdef DK_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2")
namespace isa_avx2 {
#define DK_VBYTES 32
#include "simd.h"
#include "mmd_kernel.h"
#undef DK_VBYTES
#undef DK_MR
}  // namespace isa_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,prefer-vector-width=512")
namespace isa_avx512 {
#define DK_VBYTES 64
#include "simd.h"
#include "mmd_kernel.h"
#undef DK_VBYTES
#undef DK_MR
}  // namespace isa_avx512
#pragma GCC pop_options
#endif

// Entry points of one instruction-set copy for one dtype.
template <typename T>
struct Kernels {
  void (*sweep_direct)(const Context<T>&, const T* const*, const std::int64_t*,
                       const std::int64_t*, std::int64_t, bool, T* const*, const std::int64_t*,
                       double*);
};

#define DK_KERNELS(ns, T) \
  Kernels<T> { &ns::sweep_direct<T> }

enum class Isa { base, avx2, avx512 };

// The best copy this CPU runs; DAPKERNELS_ISA=baseline|avx2 caps it (to test the fallbacks).
Isa detect_isa() {
  const char* env = std::getenv("DAPKERNELS_ISA");
  const std::string cap = env ? env : "";
  if (cap == "baseline") return Isa::base;
#ifdef DK_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && cap != "avx2" && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    return Isa::avx512;
  if (avx2) return Isa::avx2;
#endif
  return Isa::base;
}

const Isa kIsa = detect_isa();

template <typename T>
Kernels<T> kernels() {
#ifdef DK_X86
  if (kIsa == Isa::avx512) return DK_KERNELS(isa_avx512, T);
  if (kIsa == Isa::avx2) return DK_KERNELS(isa_avx2, T);
#endif
  return DK_KERNELS(isa_base, T);
}

const char* isa_name() {
  switch (kIsa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "baseline";
  }
}

// Builds the evaluation plan of a bank: γ_q = 1/(2σ_q²) sorted ascending, equal γ merged, and
// a γ that is 2^k (k = 1…3) times the previous one obtained by k squarings, as long as the
// chain since the last exp stays short enough for the relative error (×2 per squaring).
template <typename T>
std::vector<Step<T>> make_plan(const std::vector<double>& factors, bool relative, double md) {
  std::vector<double> g;
  for (double f : factors) g.push_back(0.5 / (relative ? f * md : f));
  std::sort(g.begin(), g.end());
  const int max_depth = sizeof(T) == 4 ? 5 : 16;
  std::vector<Step<T>> steps;
  std::vector<double> gam;
  int depth = 0;
  for (double gq : g) {
    if (!gam.empty() && gq == gam.back()) {
      steps.back().count += T(1);
      steps.back().gcount = steps.back().gamma * steps.back().count;
      continue;
    }
    int squarings = 0;
    if (!gam.empty()) {
      const double ratio = gq / gam.back();
      const int k = static_cast<int>(std::lround(std::log2(ratio)));
      if (k >= 1 && k <= 3 && std::fabs(ratio - std::ldexp(1.0, k)) <= 1e-9 * ratio &&
          depth + k <= max_depth)
        squarings = k;
    }
    depth = squarings == 0 ? 0 : depth + squarings;
    steps.push_back(Step<T>{squarings, static_cast<T>(gq), T(1), static_cast<T>(gq)});
    gam.push_back(gq);
  }
  return steps;
}

// Centres one layer: c = z − mean (row stride ldc, columns d … ldc−1 zeroed), norms = ‖c_i‖²
// from the rounded c, and returns the mean pairwise squared distance 2/N Σ_i ‖c_i‖² (1.0 when
// it is 0).  Non-finite input is reported with its first offending row.
template <typename T>
double center(const Matrix& z, std::int64_t n, int layer, T* c, std::int64_t ldc, T* norms) {
  const std::int64_t N = z.rows, d = z.cols, ldz = z.row_stride;
  const T* zp = z.data<T>();
  std::vector<double> mu(static_cast<std::size_t>(d), 0.0);
  {
    py::gil_scoped_release release;
#pragma omp parallel if (N * d > (1 << 18))
    {
      std::vector<double> part(static_cast<std::size_t>(d), 0.0);
#pragma omp for schedule(static) nowait
      for (std::int64_t i = 0; i < N; ++i)
        for (std::int64_t k = 0; k < d; ++k) part[k] += static_cast<double>(zp[i * ldz + k]);
#pragma omp critical(dk_mmd_center)
      for (std::int64_t k = 0; k < d; ++k) mu[k] += part[k];
    }
  }
  bool finite = true;
  for (std::int64_t k = 0; k < d; ++k) finite = finite && std::isfinite(mu[k]);
  if (!finite) {  // a NaN/Inf makes its column sum non-finite: find the row to report
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t k = 0; k < d; ++k)
        if (!std::isfinite(static_cast<double>(zp[i * ldz + k]))) {
          const bool src = i < n;
          throw py::value_error("features (layer " + std::to_string(layer) +
                                ") contain non-finite values (NaN or Inf): " +
                                (src ? "source" : "target") + " row " +
                                std::to_string(src ? i : i - n));
        }
    throw py::value_error("features (layer " + std::to_string(layer) +
                          ") are too large: their sum overflows float64");
  }
  for (std::int64_t k = 0; k < d; ++k) mu[k] /= static_cast<double>(N);
  double total = 0.0;
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(static) reduction(+ : total) if (N * d > (1 << 18))
    for (std::int64_t i = 0; i < N; ++i) {
      const T* zi = zp + i * ldz;
      T* ci = c + i * ldc;
      double s = 0.0;
      for (std::int64_t k = 0; k < d; ++k) {
        const T v = static_cast<T>(static_cast<double>(zi[k]) - mu[k]);
        ci[k] = v;
        s += static_cast<double>(v) * static_cast<double>(v);
      }
      for (std::int64_t k = d; k < ldc; ++k) ci[k] = T(0);
      norms[i] = static_cast<T>(s);
      total += s;
    }
  }
  const double md = 2.0 * total / static_cast<double>(N);
  if (!std::isfinite(md) || !std::isfinite(static_cast<T>(md)))
    throw py::value_error("features (layer " + std::to_string(layer) +
                          ") are too large: squared distances overflow");
  return md > 0.0 ? md : 1.0;
}

struct Args {
  std::vector<Matrix> z;
  std::int64_t N = 0, n = 0;
  DType dtype = DType::f32;
};

// Validates the per-layer input descriptors and the sweep parameters.
Args parse_inputs(const std::vector<std::uintptr_t>& ptrs, const std::vector<std::int64_t>& rows,
                  const std::vector<std::int64_t>& cols,
                  const std::vector<std::int64_t>& row_strides,
                  const std::vector<std::int64_t>& col_strides, const std::string& dtype,
                  std::int64_t n, const std::vector<std::vector<double>>& factors,
                  const std::vector<bool>& relative, const std::vector<double>& weights) {
  const std::size_t L = ptrs.size();
  if (L == 0 || L > static_cast<std::size_t>(kMaxLayers))
    throw py::value_error("zs: expected 1 to " + std::to_string(kMaxLayers) + " layers, got " +
                          std::to_string(L));
  if (rows.size() != L || cols.size() != L || row_strides.size() != L ||
      col_strides.size() != L || factors.size() != L || relative.size() != L)
    throw py::value_error("zs: per-layer argument lists differ in length");
  if (weights.size() != 3) throw py::value_error("weights: expected (w_ss, w_st, w_tt)");
  Args a;
  for (std::size_t l = 0; l < L; ++l) {
    a.z.push_back(make_matrix(ptrs[l], rows[l], cols[l], row_strides[l], col_strides[l], dtype,
                              "zs"));
    if (factors[l].empty()) throw py::value_error("factors: empty bank");
    for (double f : factors[l])
      if (!(f > 0.0) || !std::isfinite(f))
        throw py::value_error("factors: bandwidths must be finite and positive");
  }
  a.N = a.z[0].rows;
  a.dtype = a.z[0].dtype;
  for (const Matrix& m : a.z) {
    if (m.rows != a.N) throw py::value_error("zs: layers differ in the number of rows");
    if (m.cols < 1) throw py::value_error("zs: a layer has no features");
  }
  if (a.N < 1) throw py::value_error("zs: empty batch");
  if (n < 0 || n > a.N) throw py::value_error("n: source rows out of range");
  a.n = n;
  for (double w : weights)
    if (!std::isfinite(w)) throw py::value_error("weights: must be finite");
  return a;
}

template <typename T>
Context<T> make_context(const Args& a, const std::vector<double>& weights,
                        const std::vector<const T*>& norms,
                        const std::vector<std::vector<Step<T>>>& plans) {
  Context<T> cx;
  cx.layers = static_cast<int>(a.z.size());
  cx.N = a.N;
  cx.n = a.n;
  for (int l = 0; l < cx.layers; ++l) {
    cx.norms[l] = norms[l];
    cx.steps[l] = plans[l].data();
    cx.num_steps[l] = static_cast<int>(plans[l].size());
  }
  for (int k = 0; k < 3; ++k) cx.w[k] = weights[k];
  return cx;
}

py::tuple sums_tuple(const double* s) { return py::make_tuple(s[0], 0.5 * s[1], s[2]); }

template <typename T>
py::tuple sweep_direct_typed(const Args& a, const std::vector<std::vector<double>>& factors,
                             const std::vector<bool>& relative, const std::vector<double>& weights,
                             const std::vector<Matrix>& grads, std::int64_t tile) {
  const int L = static_cast<int>(a.z.size());
  const std::int64_t N = a.N;
  constexpr std::int64_t pad = 32;  // ≥ 2·lanes of every instruction set, for both dtypes
  std::vector<std::vector<T>> c(L), nrm(L);
  std::vector<std::vector<Step<T>>> plans(L);
  std::vector<const T*> cp(L), np(L);
  std::vector<std::int64_t> ldc(L), dims(L), ldg(L);
  std::vector<T*> gp(L);
  for (int l = 0; l < L; ++l) {
    const std::int64_t d = a.z[l].cols;
    dims[l] = d;
    ldc[l] = (d + pad - 1) / pad * pad;
    c[l].resize(static_cast<std::size_t>(N * ldc[l]));
    nrm[l].resize(static_cast<std::size_t>(N));
    const double md = center<T>(a.z[l], a.n, l, c[l].data(), ldc[l], nrm[l].data());
    plans[l] = make_plan<T>(factors[l], relative[l], md);
    cp[l] = c[l].data();
    np[l] = nrm[l].data();
    if (!grads.empty()) {
      gp[l] = grads[l].data<T>();
      ldg[l] = grads[l].row_stride;
    }
  }
  const Context<T> cx = make_context<T>(a, weights, np, plans);
  double sums[3] = {0.0, 0.0, 0.0};
  {
    py::gil_scoped_release release;
    kernels<T>().sweep_direct(cx, cp.data(), ldc.data(), dims.data(), tile, !grads.empty(),
                              gp.data(), ldg.data(), sums);
  }
  return sums_tuple(sums);
}

py::tuple mmd_sweep(const std::vector<std::uintptr_t>& ptrs,
                    const std::vector<std::int64_t>& rows, const std::vector<std::int64_t>& cols,
                    const std::vector<std::int64_t>& row_strides,
                    const std::vector<std::int64_t>& col_strides, const std::string& dtype,
                    std::int64_t n, const std::vector<std::vector<double>>& factors,
                    const std::vector<bool>& relative, const std::vector<double>& weights,
                    const std::vector<std::uintptr_t>& grad_ptrs,
                    const std::vector<std::int64_t>& grad_row_strides, std::int64_t tile) {
  if (tile < 32 || tile > 1024 || tile % 32 != 0)
    throw py::value_error("tile: must be a multiple of 32 in [32, 1024]");
  const Args a =
      parse_inputs(ptrs, rows, cols, row_strides, col_strides, dtype, n, factors, relative, weights);
  std::vector<Matrix> grads;
  if (!grad_ptrs.empty()) {
    if (grad_ptrs.size() != a.z.size() || grad_row_strides.size() != a.z.size())
      throw py::value_error("grads: expected one output per layer");
    for (std::size_t l = 0; l < a.z.size(); ++l) {
      grads.push_back(make_matrix(grad_ptrs[l], a.N, a.z[l].cols, grad_row_strides[l], 1, dtype,
                                  "grads"));
    }
  }
  if (a.dtype == DType::f32)
    return sweep_direct_typed<float>(a, factors, relative, weights, grads, tile);
  return sweep_direct_typed<double>(a, factors, relative, weights, grads, tile);
}

}  // namespace mmd
}  // namespace dk

void register_mmd(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("mmd_sweep", &dk::mmd::mmd_sweep, py::arg("ptrs"), py::arg("rows"), py::arg("cols"),
        py::arg("row_strides"), py::arg("col_strides"), py::arg("dtype"), py::arg("n"),
        py::arg("factors"), py::arg("relative"), py::arg("weights"), py::arg("grad_ptrs"),
        py::arg("grad_row_strides"), py::arg("tile") = 32,
        "Whole fused MMD sweep in C++ (tiles of `tile` rows): returns (S_ss, S_st, S_tt) and, when grad_ptrs is "
        "non-empty, writes dL/dz_l (L = w_ss S_ss + 2 w_st S_st + w_tt S_tt) into them.");
  m.attr("mmd_isa") = dk::mmd::isa_name();
}
