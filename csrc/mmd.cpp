// Fused MMD / JMMD sweep on the CPU (DESIGN §3): block sums S_ss, S_st, S_tt of a Gaussian bank
// (or of the product of several banks for JMMD) and, in the same pass, the gradient of
// L = w_ss S_ss + 2 w_st S_st + w_tt S_tt.
//
// Python entry points (all pointers are validated with make_matrix first; the GIL is released
// while the kernels run):
//   mmd_sweep(...)   the whole sweep in C++ for small N (own GEMM micro-kernel, tiles I ≤ J);
//   MMDSweep(...)    the large-N path: centres the data into caller-owned buffers, then
//                    .tile() runs the fused epilogue between the caller's BLAS GEMMs,
//                    .finish() forms the gradient and .sums() returns the block sums.
//
// The kernels are compiled three times (baseline x86-64, AVX2+FMA, AVX-512) and the copy to run
// is picked once from the CPU's features, so the extension runs on any x86-64 CPU.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
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
  void (*sweep_small)(const Context<T>&, const T* const*, const std::int64_t*, const T* const*,
                      std::int64_t, const std::int64_t*, bool, T* const*, const std::int64_t*,
                      double*);
  void (*tile_epilogue)(const Context<T>&, T* const*, std::int64_t, std::int64_t, std::int64_t,
                        std::int64_t, std::int64_t, bool, double* const*, double*);
  void (*finish)(std::int64_t, std::int64_t, const T*, std::int64_t, const double*, const T*,
                 std::int64_t, T*, std::int64_t);
};

#define DK_KERNELS(ns, T) \
  Kernels<T> { &ns::sweep_small<T>, &ns::tile_epilogue<T>, &ns::finish<T> }

enum class Isa { base, avx2, avx512 };

Isa detect_isa() {
#ifdef DK_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
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
py::tuple sweep_small_typed(const Args& a, const std::vector<std::vector<double>>& factors,
                            const std::vector<bool>& relative, const std::vector<double>& weights,
                            const std::vector<Matrix>& grads) {
  const int L = static_cast<int>(a.z.size());
  const std::int64_t N = a.N;
  constexpr std::int64_t pad = 32;  // ≥ 2·lanes of every instruction set, for both dtypes
  const std::int64_t ldt = (N + kSmallTile - 1) / kSmallTile * kSmallTile;
  std::vector<std::vector<T>> c(L), ct(L), nrm(L);
  std::vector<std::vector<Step<T>>> plans(L);
  std::vector<const T*> cp(L), ctp(L), np(L);
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
    ct[l].assign(static_cast<std::size_t>(d * ldt), T(0));
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t k = 0; k < d; ++k) ct[l][k * ldt + i] = c[l][i * ldc[l] + k];
    cp[l] = c[l].data();
    ctp[l] = ct[l].data();
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
    kernels<T>().sweep_small(cx, cp.data(), ldc.data(), ctp.data(), ldt, dims.data(),
                             !grads.empty(), gp.data(), ldg.data(), sums);
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
                    const std::vector<std::int64_t>& grad_row_strides) {
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
  if (a.dtype == DType::f32) return sweep_small_typed<float>(a, factors, relative, weights, grads);
  return sweep_small_typed<double>(a, factors, relative, weights, grads);
}

// State of a large-N sweep driven tile by tile from Python (see the file comment).
class TiledSweep {
 public:
  TiledSweep(const std::vector<std::uintptr_t>& ptrs, const std::vector<std::int64_t>& rows,
             const std::vector<std::int64_t>& cols, const std::vector<std::int64_t>& row_strides,
             const std::vector<std::int64_t>& col_strides, const std::string& dtype,
             std::int64_t n, const std::vector<std::vector<double>>& factors,
             const std::vector<bool>& relative, const std::vector<double>& weights,
             const std::vector<std::uintptr_t>& c_ptrs, bool need_grad)
      : args_(parse_inputs(ptrs, rows, cols, row_strides, col_strides, dtype, n, factors,
                           relative, weights)),
        need_grad_(need_grad) {
    const std::size_t L = args_.z.size();
    if (c_ptrs.size() != L) throw py::value_error("centred: expected one buffer per layer");
    for (std::size_t l = 0; l < L; ++l)
      c_.push_back(make_matrix(c_ptrs[l], args_.N, args_.z[l].cols, args_.z[l].cols, 1, dtype,
                               "centred"));
    rowsum_.assign(L, std::vector<double>(need_grad ? static_cast<std::size_t>(args_.N) : 0, 0.0));
    if (args_.dtype == DType::f32) init<float>(factors, relative, weights);
    else init<double>(factors, relative, weights);
  }

  void tile(const std::vector<std::uintptr_t>& g_ptrs, std::int64_t ld, std::int64_t i0,
            std::int64_t i1, std::int64_t j0, std::int64_t j1) {
    const std::int64_t N = args_.N;
    if (g_ptrs.size() != args_.z.size()) throw py::value_error("tile: one Gram tile per layer");
    if (!(0 <= i0 && i0 < i1 && i1 <= N && i0 <= j0 && j0 < j1 && j1 <= N))
      throw py::value_error("tile: bounds out of range (need 0 <= i0 < i1 <= N, i0 <= j0 < j1 <= N)");
    if (j0 != i0 && j0 < i1)
      throw py::value_error("tile: a column chunk must start at i0 or after the diagonal block");
    std::vector<Matrix> g;
    for (std::uintptr_t p : g_ptrs) g.push_back(make_matrix(p, i1 - i0, j1 - j0, ld, 1, dtype_name(), "tile"));
    if (args_.dtype == DType::f32) run_tile<float>(g, ld, i0, i1, j0, j1);
    else run_tile<double>(g, ld, i0, i1, j0, j1);
  }

  void finish(const std::vector<std::uintptr_t>& grad_ptrs) {
    if (!need_grad_) throw py::value_error("finish: the sweep was created without gradients");
    if (grad_ptrs.size() != args_.z.size()) throw py::value_error("finish: one gradient per layer");
    std::vector<Matrix> g;
    for (std::size_t l = 0; l < grad_ptrs.size(); ++l)
      g.push_back(make_matrix(grad_ptrs[l], args_.N, args_.z[l].cols, args_.z[l].cols, 1,
                              dtype_name(), "grads"));
    py::gil_scoped_release release;
    for (std::size_t l = 0; l < g.size(); ++l) {
      const std::int64_t d = g[l].cols;
      if (args_.dtype == DType::f32)
        kernels<float>().finish(args_.N, d, c_[l].data<float>(), d, rowsum_[l].data(),
                                g[l].data<float>(), d, g[l].data<float>(), d);
      else
        kernels<double>().finish(args_.N, d, c_[l].data<double>(), d, rowsum_[l].data(),
                                 g[l].data<double>(), d, g[l].data<double>(), d);
    }
  }

  py::tuple sums() const { return sums_tuple(sums_); }

 private:
  std::string dtype_name() const { return args_.dtype == DType::f32 ? "float32" : "float64"; }

  template <typename T>
  auto& norms(std::size_t l) {
    if constexpr (std::is_same_v<T, float>) return norms_f_[l]; else return norms_d_[l];
  }

  template <typename T>
  auto& plans() {
    if constexpr (std::is_same_v<T, float>) return plans_f_; else return plans_d_;
  }

  template <typename T>
  auto& context() {
    if constexpr (std::is_same_v<T, float>) return cx_f_; else return cx_d_;
  }

  template <typename T>
  void init(const std::vector<std::vector<double>>& factors, const std::vector<bool>& relative,
            const std::vector<double>& weights) {
    const std::size_t L = args_.z.size();
    std::vector<const T*> np(L);
    plans<T>().resize(L);
    for (std::size_t l = 0; l < L; ++l) {
      norms<T>(l).resize(static_cast<std::size_t>(args_.N));
      const double md = center<T>(args_.z[l], args_.n, static_cast<int>(l), c_[l].data<T>(),
                                  c_[l].cols, norms<T>(l).data());
      plans<T>()[l] = make_plan<T>(factors[l], relative[l], md);
      np[l] = norms<T>(l).data();
    }
    context<T>() = make_context<T>(args_, weights, np, plans<T>());
  }

  template <typename T>
  void run_tile(const std::vector<Matrix>& g, std::int64_t ld, std::int64_t i0, std::int64_t i1,
                std::int64_t j0, std::int64_t j1) {
    T* gp[kMaxLayers] = {};
    double* rs[kMaxLayers] = {};
    for (std::size_t l = 0; l < g.size(); ++l) {
      gp[l] = g[l].data<T>();
      rs[l] = need_grad_ ? rowsum_[l].data() : nullptr;
    }
    py::gil_scoped_release release;
    kernels<T>().tile_epilogue(context<T>(), gp, ld, i0, i1, j0, j1, need_grad_, rs, sums_);
  }

  Args args_;
  bool need_grad_;
  std::vector<Matrix> c_;
  std::vector<std::vector<double>> rowsum_;
  double sums_[3] = {0.0, 0.0, 0.0};
  std::vector<std::vector<float>> norms_f_{kMaxLayers};
  std::vector<std::vector<double>> norms_d_{kMaxLayers};
  std::vector<std::vector<Step<float>>> plans_f_;
  std::vector<std::vector<Step<double>>> plans_d_;
  Context<float> cx_f_;
  Context<double> cx_d_;
};

}  // namespace mmd
}  // namespace dk

void register_mmd(pybind11::module_& m) {
  namespace py = pybind11;
  using dk::mmd::TiledSweep;
  m.def("mmd_sweep", &dk::mmd::mmd_sweep, py::arg("ptrs"), py::arg("rows"), py::arg("cols"),
        py::arg("row_strides"), py::arg("col_strides"), py::arg("dtype"), py::arg("n"),
        py::arg("factors"), py::arg("relative"), py::arg("weights"), py::arg("grad_ptrs"),
        py::arg("grad_row_strides"),
        "Whole fused MMD sweep for small N: returns (S_ss, S_st, S_tt) and, when grad_ptrs is "
        "non-empty, writes dL/dz_l (L = w_ss S_ss + 2 w_st S_st + w_tt S_tt) into them.");
  py::class_<TiledSweep>(m, "MMDSweep",
                         "Large-N fused MMD sweep: the caller runs the tile GEMMs with its BLAS.")
      .def(py::init<const std::vector<std::uintptr_t>&, const std::vector<std::int64_t>&,
                    const std::vector<std::int64_t>&, const std::vector<std::int64_t>&,
                    const std::vector<std::int64_t>&, const std::string&, std::int64_t,
                    const std::vector<std::vector<double>>&, const std::vector<bool>&,
                    const std::vector<double>&, const std::vector<std::uintptr_t>&, bool>(),
           py::arg("ptrs"), py::arg("rows"), py::arg("cols"), py::arg("row_strides"),
           py::arg("col_strides"), py::arg("dtype"), py::arg("n"), py::arg("factors"),
           py::arg("relative"), py::arg("weights"), py::arg("centred"), py::arg("need_grad"))
      .def("tile", &TiledSweep::tile, py::arg("g_ptrs"), py::arg("ld"), py::arg("i0"),
           py::arg("i1"), py::arg("j0"), py::arg("j1"),
           "Fused epilogue of tile rows [i0, i1) × columns [j0, j1) given the Gram tiles "
           "c_I c_Jᵀ; overwrites them with C (when gradients are needed).")
      .def("finish", &TiledSweep::finish, py::arg("grad_ptrs"),
           "grad = 4 (rowsum(C) ⊙ c − acc), in place over the accumulators acc = Σ C c.")
      .def("sums", &TiledSweep::sums, "(S_ss, S_st, S_tt) accumulated so far.");
  m.attr("mmd_isa") = dk::mmd::isa_name();
}
