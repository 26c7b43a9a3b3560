// Deep CORAL CPU kernel: value ‖C_s − C_t‖_F² / (4d²) and its gradient in one call.
//
// Both domains are centred (float64 means, the centred values rounded once to the working
// precision) into a zero-padded workspace Z (N × ldz, N = n_s + n_t), then one of two exact
// paths runs, chosen by cost:
//   Gram (N < d): G = Z Zᵀ (N×N), value = Σ_ij W_ij G_ij² / (4d²) with W_ss = 1/a², W_tt = 1/b²,
//                 W_st = −1/(ab) (a = n_s − 1, b = n_t − 1); gradient = (W∘G) Z / d².
//   cov  (N ≥ d): D = Z_sᵀZ_s/a − Z_tᵀZ_t/b (d×d), value = ‖D‖² / (4d²);
//                 gradient row i = w_i (Z D)_i / d² with w = 1/a (source), −1/b (target).
// Work: Gram ~1.5 N²d multiply-adds (G is symmetric: only its upper tiles are computed) and N²
// memory, cov ~1.5 N d² and d².  Every inner product is accumulated in float64 (float32
// inputs: float32 vector partial sums over short chunks, then float64), so the cancellation in
// Σ W G² or in C_s − C_t does not eat float32 precision.  Each gradient is re-centred per
// domain (the adjoint of the centring, I − P with P the per-domain row mean; zero in exact
// arithmetic, it removes the rounding component along constant shifts), applied to the left
// factor of the final product so that the product writes the caller's gradient directly:
// Gram: (I − P)(W∘G) (N×N, float64), cov: (I − P) Z (N×d, float64, rounded once).
//
// The vector kernels (csrc/coral_kernel.h) are compiled three times (baseline x86-64 with
// 16-byte vectors, AVX2+FMA with 32, AVX-512 with 64; only the 16-byte copy elsewhere or in a
// portable build) and the copy is picked by dk::active_isa() (csrc/isa.h).
//
// Threads: at most the caller's `threads` (torch.get_num_threads() from Python), and a single
// thread when the path's work is below kParallelWork multiply-adds; see threads_for().
// Results do not depend on the number of threads (coral_kernel.h).
//
// Errors: a NaN/Inf feature raises ValueError naming the domain and its first such row
// (found by scanning only when a float64 column sum is not finite); a non-finite value or
// gradient from finite features (products overflowing the working precision) raises
// ValueError "features too large".  Every buffer is allocated before any parallel region, so
// an allocation failure is a std::bad_alloc on the calling thread (MemoryError in Python).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "common.h"
#include "isa.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dk {
namespace coral {

// Padding the driver needs from an instruction-set copy.
struct Geometry {
  int lanes = 1;      // elements of T per vector
  int gram_tile = 1;  // Gram tiles are gram_tile × gram_tile: rows padded to a multiple
  int panel = 1;      // output columns per product item: B padded to a multiple
  bool prebroadcast = false;  // the product wants A repeated across the lanes (N·K·lanes)
};

// A column range [lo, hi) of the Gram operand and its weight.
struct Segment {
  std::int64_t lo, hi;
  double scale;
};

#define DK_KERNEL_HEADER "coral_kernel.h"
#include "isa_copies.h"

// Entry points of one instruction-set copy for one dtype.
template <typename T>
struct Kernels {
  Geometry (*geometry)();
  void (*prepare)(const Matrix&, const Matrix&, double*, double*, bool, T*, std::int64_t, T*,
                  std::int64_t, std::int64_t, int);
  void (*gram_upper)(const T*, std::int64_t, std::int64_t, const Segment*, int, double*,
                     std::int64_t, int);
  bool (*product)(const T*, std::int64_t, T*, const T*, std::int64_t, std::int64_t,
                  std::int64_t, std::int64_t, T* const*, int);
};

#define DK_CORAL_KERNELS(ns, T)                                                      \
  Kernels<T> {                                                                       \
    &ns::geometry<T>, &ns::prepare<T>, &ns::gram_upper<T>, &ns::product<T>      \
  }

template <typename T>
Kernels<T> kernels() {
  DK_SELECT_ISA(DK_CORAL_KERNELS, T);
}

inline std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// Threads for `work` multiply-adds: one below kParallelWork (~2M, i.e. roughly 0.1 ms on one
// core: a parallel region's start and closing barrier, and a helper thread that the OS may
// schedule late on a busy machine, would cost more than they save), else one per
// kWorkPerThread, at most `requested` (the caller's torch.get_num_threads()), at least 1.
constexpr double kParallelWork = 2.0e6;
constexpr double kWorkPerThread = 1.0e6;

int threads_for(double work, int requested) {
#ifdef _OPENMP
  if (work < kParallelWork || requested <= 1) return 1;
  const double by_work = std::floor(work / kWorkPerThread);
  return static_cast<int>(std::min<double>(requested, by_work));
#else
  (void)work;
  (void)requested;
  return 1;
#endif
}

// 64-byte aligned scratch owned by the call, uninitialised (callers write what they read).
// Throws std::bad_alloc (MemoryError in Python) when the allocation fails.
template <typename T>
struct Buffer {
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr;
  explicit Buffer(std::int64_t n) {
    const std::int64_t raw = std::max<std::int64_t>(n, 1) * static_cast<std::int64_t>(sizeof(T));
    T* p = static_cast<T*>(std::aligned_alloc(64, static_cast<std::size_t>(round_up(raw, 64))));
    if (p == nullptr) throw std::bad_alloc();
    ptr.reset(p);
  }
  T* get() const { return ptr.get(); }
};

// Throws ValueError for the first row of x holding a NaN/Inf, else for a float64 overflow.
template <typename T>
[[noreturn]] void report_nonfinite(const Matrix& x, const char* name) {
  const T* p = x.data<T>();
  for (std::int64_t i = 0; i < x.rows; ++i)
    for (std::int64_t c = 0; c < x.cols; ++c)
      if (!std::isfinite(static_cast<double>(p[i * x.row_stride + c])))
        throw py::value_error(std::string(name) +
                              " contains non-finite values (NaN or Inf): row " +
                              std::to_string(i));
  throw py::value_error(std::string(name) +
                        ": features too large (their column sums overflow float64)");
}

[[noreturn]] void too_large(const char* what) {
  throw py::value_error(std::string("features too large: ") + what +
                        " not finite (the products overflow the input precision)");
}

enum Path { kAuto = 0, kGram = 1, kCov = 2 };

template <typename T>
double coral_run(const Matrix& xs, const Matrix& xt, const Matrix* gs, const Matrix* gt, int path,
                 int threads, int* used) {
  const Kernels<T> k = kernels<T>();
  const Geometry geo = k.geometry();
  const std::int64_t ns = xs.rows, nt = xt.rows, N = ns + nt, d = xs.cols;
  const double a = static_cast<double>(ns - 1), b = static_cast<double>(nt - 1);
  const double dd = static_cast<double>(d) * static_cast<double>(d);
  if (path == kAuto) path = N < d ? kGram : kCov;
  *used = path;
  const bool grad = gs != nullptr;
  const double Nf = static_cast<double>(N), df = static_cast<double>(d);
  const int nthr = threads_for(path == kGram ? 1.5 * Nf * Nf * df : 1.5 * Nf * df * df, threads);
  // The O(N·d) passes (means, centring: ~1 ns per element) share the threads from 2^16
  // elements on, when the products use them.
  const int prep_thr = Nf * df >= 65536.0 ? nthr : 1;

  // ---- scratch, all allocated here (before any parallel region) ----------------------------
  // Z: Np × ldz, Np = N rounded up to the Gram tile, columns zero-padded to dq (a multiple of
  // the product panel, ≥ round_up(d, lanes)); the pitch adds one cache line so that rows a
  // power of two apart do not share L1 sets.  Bound on the scratch of a call (T = float32):
  //   Gram: 4·Np·ldz + 8·Np² + 4·N² (+ 16·N: pointers, column means; + ≤ 4 MiB: SSE2's
  //         pre-broadcast M) bytes,
  //   cov:  4·Np·ldz + 4·dpt·ldt + 8·dpt² + 4·d·dq bytes,
  // i.e. the size of the problem (one copy of the features plus the N×N or d×d matrices),
  // independent of the number of threads (no per-thread heap buffers).
  const std::int64_t line = 64 / static_cast<std::int64_t>(sizeof(T));
  const std::int64_t Np = round_up(N, geo.gram_tile), dq = round_up(d, geo.panel);
  const std::int64_t ldz = dq + line;
  Buffer<double> means(2 * d);
  double* mean_s = means.get();
  double* mean_t = means.get() + d;
  Buffer<T> Z(Np * ldz);
  std::vector<T*> out_rows(grad ? static_cast<std::size_t>(N) : 0);
  // Gram path
  std::unique_ptr<Buffer<double>> G;
  std::unique_ptr<Buffer<T>> M, Mb;
  std::unique_ptr<Buffer<double>> colmean;
  // cov path: Zt (dpt × ldt: feature rows, [source | target] sample columns) and D.
  const std::int64_t W = geo.lanes;
  const std::int64_t nsp = round_up(ns, W), ntp = round_up(nt, W), ldt = nsp + ntp + line;
  const std::int64_t dpt = round_up(d, geo.gram_tile);
  std::unique_ptr<Buffer<T>> Zt, Dn;
  std::unique_ptr<Buffer<double>> D;
  if (path == kGram) {
    G.reset(new Buffer<double>(Np * Np));
    if (grad) {
      M.reset(new Buffer<T>(N * N));
      colmean.reset(new Buffer<double>(2 * N));
      // Pre-broadcast copy of M for the SSE2 product, while it stays small.
      if (geo.prebroadcast && N * N * geo.lanes * static_cast<std::int64_t>(sizeof(T)) <= (4 << 20))
        Mb.reset(new Buffer<T>(N * N * geo.lanes));
    }
  } else {
    Zt.reset(new Buffer<T>(dpt * ldt));
    D.reset(new Buffer<double>(dpt * dpt));
    if (grad) Dn.reset(new Buffer<T>(d * dq));
  }

  // ---- centring ------------------------------------------------------------------------------
  T* zt = Zt ? Zt->get() : nullptr;
  k.prepare(xs, xt, mean_s, mean_t, sizeof(T) == 8, Z.get(), ldz, zt, ldt, nsp, prep_thr);
  for (std::int64_t c = 0; c < d; ++c)
    if (!std::isfinite(mean_s[c])) report_nonfinite<T>(xs, "f_s");
  for (std::int64_t c = 0; c < d; ++c)
    if (!std::isfinite(mean_t[c])) report_nonfinite<T>(xt, "f_t");
  std::fill(Z.get() + N * ldz, Z.get() + Np * ldz, T(0));
  if (grad)
    for (std::int64_t i = 0; i < N; ++i)
      out_rows[i] = i < ns ? gs->data<T>() + i * gs->row_stride
                           : gt->data<T>() + (i - ns) * gt->row_stride;

  double value = 0.0;
  if (path == kGram) {
    // G (upper tiles) = Z Zᵀ over the padded columns [0, round_up(d, lanes)).
    double* g = G->get();
    const Segment all{0, round_up(d, W), 1.0};
    k.gram_upper(Z.get(), Np, ldz, &all, 1, g, Np, nthr);
    const double w_ss = 1.0 / (a * a), w_tt = 1.0 / (b * b), w_st = -1.0 / (a * b);
    // value = Σ_i W_ii G_ii² + 2 Σ_{i<j} W_ij G_ij², from the upper triangle in a fixed order.
    for (std::int64_t i = 0; i < N; ++i) {
      const double* gi = g + i * Np;
      const double w_lo = i < ns ? w_ss : w_st, w_hi = i < ns ? w_st : w_tt;
      double lo = 0.0, hi = 0.0;
      for (std::int64_t j = i + 1; j < ns; ++j) lo += gi[j] * gi[j];
      for (std::int64_t j = std::max(i + 1, ns); j < N; ++j) hi += gi[j] * gi[j];
      value += (i < ns ? w_ss : w_tt) * gi[i] * gi[i] + 2.0 * (w_lo * lo + w_hi * hi);
    }
    value *= 0.25 / dd;
    if (!std::isfinite(value)) too_large("Z Zᵀ");
    if (!grad) return value;
    // Gradient: (I − P) (W∘G / d²) Z, P the per-domain row mean (the re-centring, applied to
    // the N×N coefficients instead of the N×d result: the same linear map, in float64 and
    // without a pass over the gradient).  M = W∘G / d² − its per-domain column means.
    for (std::int64_t i = 1; i < N; ++i)
      for (std::int64_t j = 0; j < i; ++j) g[i * Np + j] = g[j * Np + i];
    double* cm = colmean->get();  // [source rows' column means | target rows']
    std::fill(cm, cm + 2 * N, 0.0);
    for (std::int64_t i = 0; i < N; ++i) {
      const double* gi = g + i * Np;
      double* c = cm + (i < ns ? 0 : N);
      const double s_lo = (i < ns ? w_ss : w_st) / dd, s_hi = (i < ns ? w_st : w_tt) / dd;
      for (std::int64_t j = 0; j < ns; ++j) c[j] += s_lo * gi[j];
      for (std::int64_t j = ns; j < N; ++j) c[j] += s_hi * gi[j];
    }
    for (std::int64_t j = 0; j < N; ++j) {
      cm[j] /= static_cast<double>(ns);
      cm[N + j] /= static_cast<double>(nt);
    }
    T* m = M->get();
    for (std::int64_t i = 0; i < N; ++i) {
      const double* gi = g + i * Np;
      const double* c = cm + (i < ns ? 0 : N);
      const double s_lo = (i < ns ? w_ss : w_st) / dd, s_hi = (i < ns ? w_st : w_tt) / dd;
      T* mi = m + i * N;
      for (std::int64_t j = 0; j < ns; ++j) mi[j] = static_cast<T>(s_lo * gi[j] - c[j]);
      for (std::int64_t j = ns; j < N; ++j) mi[j] = static_cast<T>(s_hi * gi[j] - c[j]);
    }
    T* mb = Mb ? Mb->get() : nullptr;
    if (!k.product(m, N, mb, Z.get(), ldz, N, N, d, out_rows.data(), nthr))
      too_large("the gradient");
    return value;
  }

  // cov path: D (upper tiles) = Σ_source z zᵀ / a − Σ_target z zᵀ / b from the transposed copy;
  // its padding (sample columns beyond each domain, feature rows beyond d) is zeroed here.
  T* t = zt;
  for (std::int64_t c = 0; c < d; ++c) {
    std::fill(t + c * ldt + ns, t + c * ldt + nsp, T(0));
    std::fill(t + c * ldt + nsp + nt, t + c * ldt + nsp + ntp, T(0));
  }
  std::fill(t + d * ldt, t + dpt * ldt, T(0));
  const Segment segs[2] = {{0, nsp, 1.0 / a}, {nsp, nsp + ntp, -1.0 / b}};
  double* D0 = D->get();
  k.gram_upper(t, dpt, ldt, segs, 2, D0, dpt, nthr);
  T* dn = grad ? Dn->get() : nullptr;
  for (std::int64_t r = 0; r < d; ++r) {
    const double* dr = D0 + r * dpt;
    double off = 0.0;
    for (std::int64_t c = r + 1; c < d; ++c) off += dr[c] * dr[c];
    value += dr[r] * dr[r] + 2.0 * off;
    if (dn == nullptr) continue;
    dn[r * dq + r] = static_cast<T>(dr[r] / dd);
    for (std::int64_t c = r + 1; c < d; ++c) {
      const T v = static_cast<T>(dr[c] / dd);
      dn[r * dq + c] = v;
      dn[c * dq + r] = v;
    }
    std::fill(dn + r * dq + d, dn + (r + 1) * dq, T(0));
  }
  value *= 0.25 / dd;
  if (!std::isfinite(value)) too_large("C_s − C_t");
  if (!grad) return value;
  // Gradient: diag(w) (I − P) Z D / d² with w = 1/a (source), −1/b (target) and P the
  // per-domain row mean: the re-centring and the weights are applied to Z's rows (in place, in
  // float64, rounded once; Z is not needed any more) instead of to the N×d result, the same
  // linear map.  (I − P) Z is zero only in exact arithmetic: this removes the rounding
  // component of the centred copy along a constant shift of each domain.
  T* z = Z.get();
  for (int dom = 0; dom < 2; ++dom) {
    const std::int64_t r0 = dom == 0 ? 0 : ns, r1 = dom == 0 ? ns : N;
    const double w = dom == 0 ? 1.0 / a : -1.0 / b, inv = 1.0 / static_cast<double>(r1 - r0);
    double* m = mean_s;  // the means are not needed any more: reused as scratch
    std::fill(m, m + d, 0.0);
    for (std::int64_t i = r0; i < r1; ++i)
      for (std::int64_t c = 0; c < d; ++c) m[c] += static_cast<double>(z[i * ldz + c]);
    for (std::int64_t c = 0; c < d; ++c) m[c] *= inv;
    for (std::int64_t i = r0; i < r1; ++i)
      for (std::int64_t c = 0; c < d; ++c)
        z[i * ldz + c] = static_cast<T>(w * (static_cast<double>(z[i * ldz + c]) - m[c]));
  }
  if (!k.product(z, ldz, nullptr, dn, dq, N, d, d, out_rows.data(), nthr))
    too_large("the gradient");
  return value;
}

py::tuple coral_sweep(std::uintptr_t xs_ptr, std::int64_t ns, std::int64_t ds, std::int64_t xs_rs,
                      std::int64_t xs_cs, std::uintptr_t xt_ptr, std::int64_t nt, std::int64_t dt,
                      std::int64_t xt_rs, std::int64_t xt_cs, const std::string& dtype,
                      std::uintptr_t gs_ptr, std::uintptr_t gt_ptr, bool need_grad, int path,
                      int threads) {
  const Matrix xs = make_matrix(xs_ptr, ns, ds, xs_rs, xs_cs, dtype, "f_s");
  const Matrix xt = make_matrix(xt_ptr, nt, dt, xt_rs, xt_cs, dtype, "f_t");
  if (ds != dt)
    throw py::value_error("feature dimensions differ: f_s has d=" + std::to_string(ds) +
                          ", f_t has d=" + std::to_string(dt));
  if (ds < 1) throw py::value_error("f_s: no features");
  if (ns < 2 || nt < 2)
    throw py::value_error("CORAL needs at least 2 samples per domain, got f_s batch " +
                          std::to_string(ns) + " and f_t batch " + std::to_string(nt));
  if (path < kAuto || path > kCov)
    throw py::value_error("path must be 0 (auto), 1 (gram) or 2 (cov)");
  if (threads < 1) throw py::value_error("threads must be at least 1");
  Matrix gs, gt;
  if (need_grad) {
    gs = make_matrix(gs_ptr, ns, ds, ds, 1, dtype, "grad_s");
    gt = make_matrix(gt_ptr, nt, dt, dt, 1, dtype, "grad_t");
  }
  int used = 0;
  double value;
  {
    // Nothing below touches Python objects; exceptions are translated after the GIL is back.
    py::gil_scoped_release release;
    const Matrix* g_s = need_grad ? &gs : nullptr;
    const Matrix* g_t = need_grad ? &gt : nullptr;
    value = xs.dtype == DType::f32 ? coral_run<float>(xs, xt, g_s, g_t, path, threads, &used)
                                   : coral_run<double>(xs, xt, g_s, g_t, path, threads, &used);
  }
  return py::make_tuple(value, used);
}

}  // namespace coral
}  // namespace dk

namespace py = pybind11;

void register_coral(py::module_& m) {
  m.def("coral_sweep", &dk::coral::coral_sweep,
        "Deep CORAL value ‖C_s − C_t‖²/(4d²) (float64) and, when need_grad, its gradients "
        "written to grad_s / grad_t (contiguous, input dtype). path: 0 auto, 1 gram, 2 cov. "
        "threads: at most this many OpenMP threads (one for small work). Returns (value, path "
        "used). Raises ValueError for NaN/Inf features or overflowing products, MemoryError "
        "when the scratch cannot be allocated.",
        py::arg("xs_ptr"), py::arg("ns"), py::arg("ds"), py::arg("xs_row_stride"),
        py::arg("xs_col_stride"), py::arg("xt_ptr"), py::arg("nt"), py::arg("dt"),
        py::arg("xt_row_stride"), py::arg("xt_col_stride"), py::arg("dtype"), py::arg("gs_ptr"),
        py::arg("gt_ptr"), py::arg("need_grad"), py::arg("path"), py::arg("threads") = 1);
}
