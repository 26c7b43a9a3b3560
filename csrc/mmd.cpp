// Fused MMD / JMMD sweep on the CPU: block sums S_ss, S_st, S_tt of a Gaussian bank
// (or of the product of several banks for JMMD) and, in the same pass, the gradient of
// L = w_ss S_ss + 2 w_st S_st + w_tt S_tt.
//
// Python entry point: mmd_sweep(...), the whole sweep in one call (own GEMM micro-kernel,
// tiles I ≤ J over OpenMP threads; batches of at most kSmallRows rows in two phases over a
// stored C, see sweep_small).  Every pointer is validated with make_matrix before use and the
// GIL is released while the kernels run.
//
// The kernels are compiled three times (baseline x86-64, AVX2+FMA, AVX-512) and the copy to run
// is picked once from the CPU's features, so the extension runs on any x86-64 CPU.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "isa.h"
#include "parallel.h"
#include "mmd_common.h"

namespace dk {
namespace mmd {

#define DK_KERNEL_HEADER "mmd_kernel.h"
#include "isa_copies.h"

// Entry points of one instruction-set copy for one dtype.
template <typename T>
struct Kernels {
  void (*sweep_direct)(const Context<T>&, const T* const*, const std::int64_t*,
                       const std::int64_t*, std::int64_t, bool, T* const*, const std::int64_t*,
                       const double*, double*, int);
  void (*sweep_small)(const Context<T>&, const T* const*, const std::int64_t*,
                      const std::int64_t*, std::int64_t, bool, T* const*, const std::int64_t*,
                      const double*, double*, int);
  void (*column_sums)(std::int64_t, std::int64_t, const T*, std::int64_t, double*, int);
  void (*center_rows)(std::int64_t, std::int64_t, const T*, std::int64_t, const double*, T*,
                      std::int64_t, double*, double*, int);
  double (*rescale_rows)(std::int64_t, std::int64_t, double, T*, std::int64_t, T*);
};

#define DK_KERNELS(ns, T)                                                               \
  Kernels<T> {                                                                          \
    &ns::sweep_direct<T>, &ns::sweep_small<T>, &ns::column_sums<T>, &ns::center_rows<T>,  \
        &ns::rescale_rows<T>                                                            \
  }

template <typename T>
Kernels<T> kernels() {
  DK_SELECT_ISA(DK_KERNELS, T);
}

// Builds the evaluation plan of a bank: γ_q = 1/(2σ_q²) sorted ascending, equal γ merged, and
// a γ that is 2^k (k = 1…3) times the previous one obtained by k squarings, as long as the
// chain since the last exp stays short enough for the relative error (×2 per squaring).
//
// `scale` is the power of two the centred rows were multiplied by: a fixed σ² becomes σ²·scale².
// Raises when a γ is not a normal number of T (a bandwidth out of T's range relative to the
// features' spread).
template <typename T>
std::vector<Step<T>> make_plan(const std::vector<double>& factors, bool relative, double md,
                               double scale, int layer) {
  std::vector<double> g;
  for (double f : factors) {
    const double gq = relative ? 0.5 / (f * md) : 0.5 / f / (scale * scale);
    const T gt = static_cast<T>(gq);
    if (!std::isfinite(gt) || !(std::fabs(gt) >= std::numeric_limits<T>::min()))
      throw py::value_error(
          "factors (layer " + std::to_string(layer) + "): bandwidth " + std::to_string(f) +
          " is out of " + (sizeof(T) == 4 ? "float32" : "float64") +
          " range relative to the features' spread (use float64 or relative bandwidths)");
    g.push_back(gq);
  }
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

// Range of max |c_ik| left as it is; outside it the centred rows are rescaled by a power of
// two (exact) so that squared distances neither underflow nor overflow in T.
constexpr double kScaleLow = 0x1p-20, kScaleHigh = 0x1p20;

// Centres one layer whose rows are the source block s (n rows) then the target block t:
// c = (z − mean) · 2^e (row stride ldc, columns d … ldc−1 zeroed) and norms = ‖c_i‖² from the
// rounded c.  e = 0 unless the spread max|z − mean| lies outside [2^-20, 2^20]; then e brings it
// near 1 (as far as the fixed bandwidths of `factors` allow: their γ·2^(−2e) must stay a
// normal T).  Returns (mean pairwise squared distance of c, 2/N Σ_i ‖c_i‖², 1.0 when it is 0;
// the scale 2^e).  Non-finite input is reported with its first offending row.
template <typename T>
std::pair<double, double> center(const Matrix& s, const Matrix& t, int layer,
                                 const std::vector<double>& factors, bool relative, T* c,
                                 std::int64_t ldc, T* norms, int threads) {
  const std::int64_t n = s.rows, N = s.rows + t.rows, d = s.cols;
  const Kernels<T> k = kernels<T>();
  std::vector<double> mu(static_cast<std::size_t>(d), 0.0);
  k.column_sums(n, d, s.data<T>(), s.row_stride, mu.data(), threads);
  k.column_sums(t.rows, d, t.data<T>(), t.row_stride, mu.data(), threads);
  bool finite = true;
  for (std::int64_t j = 0; j < d; ++j) finite = finite && std::isfinite(mu[j]);
  const std::string where = "features (layer " + std::to_string(layer) + ")";
  if (!finite) {  // a NaN/Inf makes its column sum non-finite: find the row to report
    for (const Matrix* m : {&s, &t})
      for (std::int64_t i = 0; i < m->rows; ++i)
        for (std::int64_t j = 0; j < d; ++j)
          if (!std::isfinite(static_cast<double>(m->data<T>()[i * m->row_stride + j])))
            throw py::value_error(where + " contain non-finite values (NaN or Inf): " +
                                  (m == &s ? "source" : "target") + " row " + std::to_string(i));
    throw py::value_error(where + " are too large: their sum overflows float64");
  }
  for (std::int64_t j = 0; j < d; ++j) mu[j] /= static_cast<double>(N);
  std::vector<double> rowsq(static_cast<std::size_t>(N)), rowmax(static_cast<std::size_t>(N));
  k.center_rows(n, d, s.data<T>(), s.row_stride, mu.data(), c, ldc, rowsq.data(), rowmax.data(),
                threads);
  k.center_rows(t.rows, d, t.data<T>(), t.row_stride, mu.data(), c + n * ldc, ldc,
                rowsq.data() + n, rowmax.data() + n, threads);
  double spread = 0.0;
  for (double v : rowmax) spread = std::max(spread, v);
  if (!std::isfinite(spread))
    throw py::value_error(where + " are too large: centred values overflow " +
                          (sizeof(T) == 4 ? "float32" : "float64"));
  int e = 0;
  if (spread > 0.0 && (spread < kScaleLow || spread > kScaleHigh)) {
    e = std::min(-std::ilogb(spread), 1000);  // 2^e must be a finite double
    if (!relative) {  // keep every fixed γ·2^(−2e) well inside T's normal range
      const int room = sizeof(T) == 4 ? 100 : 1000;
      for (double f : factors) {
        const int lg = std::ilogb(0.5 / f);
        e = std::min(e, (lg + room) / 2);
        e = std::max(e, (lg - room) / 2);
      }
    }
  }
  double total = 0.0;
  if (e != 0) {
    total = k.rescale_rows(N, d, std::ldexp(1.0, e), c, ldc, norms);
  } else {
    for (std::int64_t i = 0; i < N; ++i) {
      norms[i] = static_cast<T>(rowsq[i]);
      total += rowsq[i];
    }
  }
  const double md = 2.0 * total / static_cast<double>(N);
  if (!std::isfinite(md) || !std::isfinite(static_cast<T>(md)))
    throw py::value_error(where + " are too large: squared distances overflow");
  return {md > 0.0 ? md : 1.0, std::ldexp(1.0, e)};
}

// Batches of at most this many rows take the two-phase sweep_small (its C^l is at most
// kSmallRows² elements per layer); larger ones the one-pass sweep_direct.
constexpr std::int64_t kSmallRows = 256;

struct Args {
  std::vector<Matrix> s, t;  // per layer: source block (n × d_l), target block (m × d_l)
  std::int64_t N = 0, n = 0;
  DType dtype = DType::f32;
};

// Validates the per-layer source and target descriptors and the sweep parameters.
Args parse_inputs(const std::vector<std::uintptr_t>& source_ptrs,
                  const std::vector<std::uintptr_t>& target_ptrs, std::int64_t n, std::int64_t m,
                  const std::vector<std::int64_t>& cols,
                  const std::vector<std::int64_t>& source_row_strides,
                  const std::vector<std::int64_t>& source_col_strides,
                  const std::vector<std::int64_t>& target_row_strides,
                  const std::vector<std::int64_t>& target_col_strides, const std::string& dtype,
                  const std::vector<std::vector<double>>& factors,
                  const std::vector<bool>& relative, const std::vector<double>& weights) {
  const std::size_t L = source_ptrs.size();
  if (L == 0 || L > static_cast<std::size_t>(kMaxLayers))
    throw py::value_error("sources: expected 1 to " + std::to_string(kMaxLayers) +
                          " layers, got " + std::to_string(L));
  if (target_ptrs.size() != L || cols.size() != L || source_row_strides.size() != L ||
      source_col_strides.size() != L || target_row_strides.size() != L ||
      target_col_strides.size() != L || factors.size() != L || relative.size() != L)
    throw py::value_error("sources: per-layer argument lists differ in length");
  if (weights.size() != 3) throw py::value_error("weights: expected (w_ss, w_st, w_tt)");
  if (n < 0 || m < 0) throw py::value_error("n, m: negative batch size");
  if (n + m < 1) throw py::value_error("sources: empty batch");
  Args a;
  for (std::size_t l = 0; l < L; ++l) {
    if (cols[l] < 1) throw py::value_error("cols: a layer has no features");
    a.s.push_back(make_matrix(source_ptrs[l], n, cols[l], source_row_strides[l],
                              source_col_strides[l], dtype, "sources"));
    a.t.push_back(make_matrix(target_ptrs[l], m, cols[l], target_row_strides[l],
                              target_col_strides[l], dtype, "targets"));
    if (factors[l].empty()) throw py::value_error("factors: empty bank");
    for (double f : factors[l])
      if (!(f > 0.0) || !std::isfinite(f))
        throw py::value_error("factors: bandwidths must be finite and positive");
  }
  a.N = n + m;
  a.n = n;
  a.dtype = a.s[0].dtype;
  for (double w : weights)
    if (!std::isfinite(w)) throw py::value_error("weights: must be finite");
  return a;
}

template <typename T>
Context<T> make_context(const Args& a, const std::vector<double>& weights,
                        const std::vector<const T*>& norms,
                        const std::vector<std::vector<Step<T>>>& plans) {
  Context<T> cx;
  cx.layers = static_cast<int>(a.s.size());
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
                             const std::vector<Matrix>& grads, std::int64_t tile, int threads,
                             std::int64_t small_rows) {
  const int L = static_cast<int>(a.s.size());
  const std::int64_t N = a.N;
  double sums[3] = {0.0, 0.0, 0.0};
  {
  // Nothing below touches Python objects; exceptions are translated after the GIL is back.
  py::gil_scoped_release release;
  constexpr std::int64_t pad = 32;  // ≥ 2·lanes of every instruction set, for both dtypes
  std::vector<std::unique_ptr<T[]>> c(L), nrm(L);  // written in full by center()
  std::vector<std::vector<Step<T>>> plans(L);
  std::vector<const T*> cp(L), np(L);
  std::vector<std::int64_t> ldc(L), dims(L), ldg(L);
  std::vector<double> gscale(L, 1.0);
  std::vector<T*> gp(L);
  for (int l = 0; l < L; ++l) {
    const std::int64_t d = a.s[l].cols;
    dims[l] = d;
    // Rounded up for whole SIMD panels, plus 16 elements so that rows one page apart (d = 1024,
    // 2048, …) do not all map to the same L1 sets when a tile reads one column of 32 rows.
    ldc[l] = (d + pad - 1) / pad * pad + 16;
    c[l].reset(new T[static_cast<std::size_t>(N * ldc[l])]);
    nrm[l].reset(new T[static_cast<std::size_t>(N)]);
    const auto [md, scale] = center<T>(a.s[l], a.t[l], l, factors[l], relative[l], c[l].get(),
                                       ldc[l], nrm[l].get(), threads);
    plans[l] = make_plan<T>(factors[l], relative[l], md, scale, l);
    gscale[l] = scale;  // ∂L/∂z = scale · ∂L/∂c for c = scale · (z − mean)
    cp[l] = c[l].get();
    np[l] = nrm[l].get();
    if (!grads.empty()) {
      gp[l] = grads[l].data<T>();
      ldg[l] = grads[l].row_stride;
    }
  }
  const Context<T> cx = make_context<T>(a, weights, np, plans);
  const Kernels<T> k = kernels<T>();
  (N <= small_rows ? k.sweep_small : k.sweep_direct)(cx, cp.data(), ldc.data(), dims.data(),
                                                     tile, !grads.empty(), gp.data(), ldg.data(),
                                                     gscale.data(), sums, threads);
  // Features far below 1 have gradients far above 1 (the loss is scale-free): report a
  // gradient beyond T's range rather than return Inf.
  for (int l = 0; l < L && !grads.empty(); ++l) {
    if (gscale[l] <= 1.0) continue;
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t k = 0; k < dims[l]; ++k)
        if (!std::isfinite(gp[l][i * ldg[l] + k]))
          throw py::value_error("features (layer " + std::to_string(l) +
                                ") are so small that the gradient overflows " +
                                (sizeof(T) == 4 ? "float32" : "float64") + " (use float64)");
  }
  }
  return sums_tuple(sums);
}

py::tuple mmd_sweep(const std::vector<std::uintptr_t>& source_ptrs,
                    const std::vector<std::uintptr_t>& target_ptrs, std::int64_t n, std::int64_t m,
                    const std::vector<std::int64_t>& cols,
                    const std::vector<std::int64_t>& source_row_strides,
                    const std::vector<std::int64_t>& source_col_strides,
                    const std::vector<std::int64_t>& target_row_strides,
                    const std::vector<std::int64_t>& target_col_strides, const std::string& dtype,
                    const std::vector<std::vector<double>>& factors,
                    const std::vector<bool>& relative, const std::vector<double>& weights,
                    const std::vector<std::uintptr_t>& grad_ptrs,
                    const std::vector<std::int64_t>& grad_row_strides, std::int64_t tile,
                    int threads, std::int64_t small_rows) {
  if (threads < 1) throw py::value_error("threads: must be at least 1");
  if (tile < 32 || tile > 1024 || tile % 32 != 0)
    throw py::value_error("tile: must be a multiple of 32 in [32, 1024]");
  if (small_rows < 0 || small_rows > 1024)  // bounds the stored C (small_rows² per layer)
    throw py::value_error("small_rows: must be in [0, 1024]");
  const Args a = parse_inputs(source_ptrs, target_ptrs, n, m, cols, source_row_strides,
                              source_col_strides, target_row_strides, target_col_strides, dtype,
                              factors, relative, weights);
  std::vector<Matrix> grads;
  if (!grad_ptrs.empty()) {
    if (grad_ptrs.size() != a.s.size() || grad_row_strides.size() != a.s.size())
      throw py::value_error("grads: expected one output per layer");
    for (std::size_t l = 0; l < a.s.size(); ++l) {
      grads.push_back(make_matrix(grad_ptrs[l], a.N, a.s[l].cols, grad_row_strides[l], 1, dtype,
                                  "grads"));
    }
  }
  if (a.dtype == DType::f32)
    return sweep_direct_typed<float>(a, factors, relative, weights, grads, tile, threads,
                                     small_rows);
  return sweep_direct_typed<double>(a, factors, relative, weights, grads, tile, threads,
                                    small_rows);
}

}  // namespace mmd
}  // namespace dk

void register_mmd(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("mmd_sweep", &dk::mmd::mmd_sweep, py::arg("source_ptrs"), py::arg("target_ptrs"),
        py::arg("n"), py::arg("m"), py::arg("cols"), py::arg("source_row_strides"),
        py::arg("source_col_strides"), py::arg("target_row_strides"),
        py::arg("target_col_strides"), py::arg("dtype"), py::arg("factors"), py::arg("relative"),
        py::arg("weights"), py::arg("grad_ptrs"), py::arg("grad_row_strides"),
        py::arg("tile") = 32, py::arg("threads") = 1,
        py::arg("small_rows") = dk::mmd::kSmallRows,
        "Whole fused MMD sweep in C++ (tiles of `tile` rows) over the rows of the source blocks "
        "(n × d_l) then the target blocks (m × d_l): returns (S_ss, S_st, S_tt) and, when "
        "grad_ptrs is non-empty, writes dL/dz_l ((n + m) × d_l, L = w_ss S_ss + 2 w_st S_st + "
        "w_tt S_tt) into them.  Runs on at most `threads` OpenMP threads; results are bitwise "
        "identical for any thread count.  Batches of at most `small_rows` rows (default: the "
        "core's kSmallRows) take the two-phase path over a stored C matrix, larger ones the "
        "one-pass tile sweep; tests set it to compare the two.");
}
