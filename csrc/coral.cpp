// Deep CORAL CPU kernel: value ‖C_s − C_t‖_F² / (4d²) and its gradient in one call.
//
// Both domains are centred (float64 two-pass means) into a zero-padded workspace Z (N×dp),
// then one of two exact paths runs, chosen by cost (DESIGN §4):
//   Gram (N < d): G = Z Zᵀ (N×N), value = Σ_ij W_ij G_ij² / (4d²) with W_ss = 1/a², W_tt = 1/b²,
//                 W_st = −1/(ab) (a = n_s − 1, b = n_t − 1); gradient = (W∘G) Z / d².
//   cov  (N ≥ d): D = Z_sᵀZ_s/a − Z_tᵀZ_t/b (d×d), value = ‖D‖² / (4d²);
//                 gradient row i = w_i (Z D)_i / d² with w = 1/a (source), −1/b (target).
// Work: Gram ~1.5 N²d flops and N² memory, cov ~1.5 N d² and d². Every inner product is
// accumulated in float64 (float32 inputs: 16-lane float32 partial sums over short chunks, then
// float64), so the cancellation in Σ W G² or in C_s − C_t does not eat float32 precision.
// Finally each gradient is re-centred per domain (the adjoint of the centring; zero in exact
// arithmetic, it removes the rounding component along constant shifts).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// Keep a*b + c fused into FMAs: -std=c++17 otherwise turns contraction off in this file.
#pragma GCC optimize("fp-contract=fast")
// The 64-byte vector helpers are always inlined, so no vector crosses a call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace dk {
namespace {

typedef float v16f __attribute__((vector_size(64)));
typedef double v8d __attribute__((vector_size(64)));

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  using V = v16f;
  static constexpr int W = 16;
};
template <>
struct Simd<double> {
  using V = v8d;
  static constexpr int W = 8;
};

#define DK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

constexpr std::int64_t kChunk = 1024;  // elements per float32 partial sum before going float64
constexpr std::int64_t kRows = 4;      // register tile: 4×4 dot products, 4 rows × 4 vectors

inline std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

template <typename V>
__attribute__((always_inline)) inline V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
__attribute__((always_inline)) inline void store(void* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// 64-byte aligned scratch owned by the call; zero-filled unless every element gets written.
template <typename T>
struct Buffer {
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr;
  explicit Buffer(std::int64_t n, bool zero = true) {
    const std::int64_t raw = std::max<std::int64_t>(n, 1) * static_cast<std::int64_t>(sizeof(T));
    const std::size_t bytes = static_cast<std::size_t>(round_up(raw, 64));
    T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (p == nullptr) throw std::bad_alloc();
    if (zero) std::memset(p, 0, bytes);
    ptr.reset(p);
  }
  T* get() const { return ptr.get(); }
};

// G[r][c] += Σ_k A[r][k] B[c][k] for a 4×4 tile over k in [0, kc), kc a multiple of W.
template <typename T>
__attribute__((always_inline)) inline void tile_dot_body(const T* A, std::int64_t lda, const T* B,
                                                         std::int64_t ldb, std::int64_t kc,
                                                         double* G, std::int64_t ldg) {
  using V = typename Simd<T>::V;
  constexpr int W = Simd<T>::W;
  V acc[kRows][kRows];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < kRows; ++c) acc[r][c] = V{};
  for (std::int64_t k = 0; k < kc; k += W) {
    V a[kRows];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) a[r] = load<V>(A + r * lda + k);
#pragma GCC unroll 4
    for (int c = 0; c < kRows; ++c) {
      const V b = load<V>(B + c * ldb + k);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) acc[r][c] += a[r] * b;
    }
  }
  // Fold the lanes pairwise first (W/2 + … + 1 adds), then one add in float64 per entry.
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kRows; ++c) {
      V v = acc[r][c];
#pragma GCC unroll 8
      for (int h = W / 2; h >= 1; h /= 2)
#pragma GCC unroll 8
        for (int l = 0; l < h; ++l) v[l] += v[l + h];
      G[r * ldg + c] += static_cast<double>(v[0]);
    }
}

// out[r][0:4W] (+)= Σ_{j<K} M[r][j] B[j][0:4W] for 4 rows.
template <typename T>
__attribute__((always_inline)) inline void tile_mm_body(const T* M, std::int64_t ldm, const T* B,
                                                        std::int64_t ldb, std::int64_t K, T* out,
                                                        std::int64_t ldo, bool accumulate) {
  using V = typename Simd<T>::V;
  constexpr int W = Simd<T>::W;
  V acc[kRows][4];
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) acc[r][v] = accumulate ? load<V>(out + r * ldo + v * W) : V{};
  for (std::int64_t j = 0; j < K; ++j) {
    V b[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) b[v] = load<V>(B + j * ldb + v * W);
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const T m = M[r * ldm + j];
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r][v] += m * b[v];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < 4; ++v) store(out + r * ldo + v * W, acc[r][v]);
}

// Non-template entry points so each gets AVX-512 / AVX2 clones picked at load time.
DK_CLONES void tile_dot(const float* A, std::int64_t lda, const float* B, std::int64_t ldb,
                        std::int64_t kc, double* G, std::int64_t ldg) {
  tile_dot_body<float>(A, lda, B, ldb, kc, G, ldg);
}
DK_CLONES void tile_dot(const double* A, std::int64_t lda, const double* B, std::int64_t ldb,
                        std::int64_t kc, double* G, std::int64_t ldg) {
  tile_dot_body<double>(A, lda, B, ldb, kc, G, ldg);
}
DK_CLONES void tile_mm(const float* M, std::int64_t ldm, const float* B, std::int64_t ldb,
                       std::int64_t K, float* out, std::int64_t ldo, bool accumulate) {
  tile_mm_body<float>(M, ldm, B, ldb, K, out, ldo, accumulate);
}
DK_CLONES void tile_mm(const double* M, std::int64_t ldm, const double* B, std::int64_t ldb,
                       std::int64_t K, double* out, std::int64_t ldo, bool accumulate) {
  tile_mm_body<double>(M, ldm, B, ldb, K, out, ldo, accumulate);
}

// Threads only when the work (in multiply-adds) is worth milliseconds and a core is idle. On a
// loaded machine a parallel region waits, at its closing barrier, for a helper thread that may
// not be scheduled for several milliseconds; one thread is then faster. The run-queue length
// comes from /proc/loadavg ("running/total" field; absent elsewhere, then cores count as idle).
inline bool cores_idle() {
#if defined(__linux__) && defined(_OPENMP)
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (f == nullptr) return true;
  double l1, l5, l15;
  long running = 0, total = 0;
  const int got = std::fscanf(f, "%lf %lf %lf %ld/%ld", &l1, &l5, &l15, &running, &total);
  std::fclose(f);
  return got != 5 || running < omp_get_num_procs() + 1;  // `running` counts this thread
#else
  return true;
#endif
}

inline bool parallel_worth(double work) { return work > 2.0e7 && cores_idle(); }

// Upper triangle (then mirrored) of G = A Aᵀ, A: R×K with leading dim lda (R multiple of 4,
// K multiple of W), G: R×R float64. Work items are runs of kGroup 4×4 tile pairs; an item sweeps
// K in chunks over its pairs, so the rows it touches stay in cache across the pairs of a chunk.
// Items are handed out dynamically: on a loaded machine a descheduled thread then delays the
// call by one item, not by half of the work.
constexpr std::int64_t kGroup = 16;

template <typename T>
void gram_upper(const T* A, std::int64_t R, std::int64_t K, std::int64_t lda, double* G) {
  const std::int64_t tiles = R / kRows;
  std::vector<std::pair<std::int32_t, std::int32_t>> pairs;
  pairs.reserve(static_cast<std::size_t>(tiles * (tiles + 1) / 2));
  for (std::int64_t i = 0; i < tiles; ++i)
    for (std::int64_t j = i; j < tiles; ++j)
      pairs.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(j));
  const std::int64_t np = static_cast<std::int64_t>(pairs.size());
  const std::int64_t groups = (np + kGroup - 1) / kGroup;
  const bool par = parallel_worth(0.5 * static_cast<double>(R) * R * K);
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (std::int64_t grp = 0; grp < groups; ++grp) {
    const std::int64_t p0 = grp * kGroup, p1 = std::min(np, p0 + kGroup);
    for (std::int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const std::int64_t kc = std::min(kChunk, K - k0);
      for (std::int64_t p = p0; p < p1; ++p) {
        const std::int64_t i = pairs[p].first * kRows, j = pairs[p].second * kRows;
        tile_dot(A + i * lda + k0, lda, A + j * lda + k0, lda, kc, G + i * R + j, R);
      }
    }
  }
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t j = 0; j < i; ++j) G[i * R + j] = G[j * R + i];
}

// out (R×C, leading dim ldo) = M (R×K, leading dim ldm) · B (K×C, leading dim ldb); R multiple
// of 4, C multiple of 4W. B is consumed in panels of kPanel rows × 4W columns, packed
// contiguously (16 KiB: half of a 32 KiB L1, rows of B would otherwise be a power of two apart
// and fight over the same cache sets); partial products accumulate in out.
constexpr std::int64_t kPanel = 64;

template <typename T>
void matmul(const T* M, std::int64_t ldm, const T* B, std::int64_t ldb, std::int64_t R,
            std::int64_t K, std::int64_t C, T* out, std::int64_t ldo) {
  constexpr std::int64_t cw = 4 * Simd<T>::W;
  const std::int64_t col_blocks = C / cw, row_blocks = R / kRows;
  const bool par = parallel_worth(static_cast<double>(R) * K * C);
#pragma omp parallel if (par)
  {
    Buffer<T> panel(kPanel * cw);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t cb = 0; cb < col_blocks; ++cb) {
      for (std::int64_t k0 = 0; k0 < K; k0 += kPanel) {
        const std::int64_t kc = std::min(kPanel, K - k0);
        for (std::int64_t j = 0; j < kc; ++j)
          std::memcpy(panel.get() + j * cw, B + (k0 + j) * ldb + cb * cw, cw * sizeof(T));
        for (std::int64_t rb = 0; rb < row_blocks; ++rb)
          tile_mm(M + rb * kRows * ldm + k0, ldm, panel.get(), cw, kc,
                  out + rb * kRows * ldo + cb * cw, ldo, k0 > 0);
      }
    }
  }
}

// Column means of a strided n×d block in float64, refined by a second pass over the residuals.
template <typename T>
DK_CLONES void column_means(const Matrix& x, double* mean) {
  const T* p = x.data<T>();
  const std::int64_t n = x.rows, d = x.cols, ld = x.row_stride;
  constexpr std::int64_t block = 256;
  for (std::int64_t c0 = 0; c0 < d; c0 += block) {
    const std::int64_t c1 = std::min(d, c0 + block);
    double acc[block] = {};
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t c = c0; c < c1; ++c) acc[c - c0] += static_cast<double>(p[i * ld + c]);
    for (std::int64_t c = c0; c < c1; ++c) mean[c] = acc[c - c0] / static_cast<double>(n);
    for (std::int64_t c = c0; c < c1; ++c) acc[c - c0] = 0.0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t c = c0; c < c1; ++c)
        acc[c - c0] += static_cast<double>(p[i * ld + c]) - mean[c];
    for (std::int64_t c = c0; c < c1; ++c) mean[c] += acc[c - c0] / static_cast<double>(n);
  }
}

// Writes the centred rows of x into Z (rows row0…, leading dim ldz), rounding once to T.
template <typename T>
DK_CLONES void centre_into(const Matrix& x, const double* mean, T* Z, std::int64_t row0,
                           std::int64_t ldz) {
  const T* p = x.data<T>();
  for (std::int64_t i = 0; i < x.rows; ++i) {
    T* z = Z + (row0 + i) * ldz;
    const T* r = p + i * x.row_stride;
    for (std::int64_t c = 0; c < x.cols; ++c)
      z[c] = static_cast<T>(static_cast<double>(r[c]) - mean[c]);
  }
}

// Copies scale_i · src rows [row0, row0+n) into the caller's gradient, minus their column mean.
template <typename T>
DK_CLONES void write_centred_grad(const T* src, std::int64_t lds, std::int64_t row0, std::int64_t n,
                        std::int64_t d, double scale, const Matrix& g) {
  std::vector<double> mean(static_cast<std::size_t>(d), 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    const T* r = src + (row0 + i) * lds;
    for (std::int64_t c = 0; c < d; ++c) mean[c] += static_cast<double>(r[c]);
  }
  for (std::int64_t c = 0; c < d; ++c) mean[c] /= static_cast<double>(n);
  T* out = g.data<T>();
  for (std::int64_t i = 0; i < n; ++i) {
    const T* r = src + (row0 + i) * lds;
    T* o = out + i * g.row_stride;
    for (std::int64_t c = 0; c < d; ++c)
      o[c] = static_cast<T>(scale * (static_cast<double>(r[c]) - mean[c]));
  }
}

enum Path { kAuto = 0, kGram = 1, kCov = 2 };

template <typename T>
double coral_run(const Matrix& xs, const Matrix& xt, const Matrix* gs, const Matrix* gt, int path,
                 int* used) {
  constexpr std::int64_t W = Simd<T>::W;
  const std::int64_t ns = xs.rows, nt = xt.rows, N = ns + nt, d = xs.cols;
  const double a = static_cast<double>(ns - 1), b = static_cast<double>(nt - 1);
  const double dd = static_cast<double>(d) * static_cast<double>(d);
  if (path == kAuto) path = N < d ? kGram : kCov;
  *used = path;

  std::vector<double> mean_s(static_cast<std::size_t>(d)), mean_t(static_cast<std::size_t>(d));
  column_means<T>(xs, mean_s.data());
  column_means<T>(xt, mean_t.data());
  // dp: padded width (zeros); ldz: row pitch, one vector more so rows avoid cache-set aliasing.
  const std::int64_t Np = round_up(N, kRows), dp = round_up(d, 4 * W), ldz = dp + W;
  Buffer<T> Z(Np * ldz, false);
  centre_into<T>(xs, mean_s.data(), Z.get(), 0, ldz);
  centre_into<T>(xt, mean_t.data(), Z.get(), ns, ldz);
  for (std::int64_t i = 0; i < N; ++i)
    std::fill(Z.get() + i * ldz + d, Z.get() + (i + 1) * ldz, T(0));
  std::fill(Z.get() + N * ldz, Z.get() + Np * ldz, T(0));

  double value = 0.0;
  if (path == kGram) {
    Buffer<double> G(Np * Np);
    gram_upper<T>(Z.get(), Np, dp, ldz, G.get());
    const double w_ss = 1.0 / (a * a), w_tt = 1.0 / (b * b), w_st = -1.0 / (a * b);
    // Row i: weight w_lo for the source columns j < ns, w_hi for the target columns.
    auto row_weights = [&](std::int64_t i) {
      return i < ns ? std::make_pair(w_ss, w_st) : std::make_pair(w_st, w_tt);
    };
    for (std::int64_t i = 0; i < N; ++i) {
      const double* gi = G.get() + i * Np;
      const auto [w_lo, w_hi] = row_weights(i);
      double lo = 0.0, hi = 0.0;
#pragma omp simd reduction(+ : lo)
      for (std::int64_t j = 0; j < ns; ++j) lo += gi[j] * gi[j];
#pragma omp simd reduction(+ : hi)
      for (std::int64_t j = ns; j < N; ++j) hi += gi[j] * gi[j];
      value += w_lo * lo + w_hi * hi;
    }
    value *= 0.25 / dd;
    if (gs == nullptr) return value;
    Buffer<T> M(Np * N, false);  // W∘G / d²; rows ≥ N zeroed below
    for (std::int64_t i = 0; i < N; ++i) {
      const double* gi = G.get() + i * Np;
      T* mi = M.get() + i * N;
      const auto [w_lo, w_hi] = row_weights(i);
      const double s_lo = w_lo / dd, s_hi = w_hi / dd;
#pragma omp simd
      for (std::int64_t j = 0; j < ns; ++j) mi[j] = static_cast<T>(s_lo * gi[j]);
#pragma omp simd
      for (std::int64_t j = ns; j < N; ++j) mi[j] = static_cast<T>(s_hi * gi[j]);
    }
    std::fill(M.get() + N * N, M.get() + Np * N, T(0));
    Buffer<T> out(Np * dp, false);  // fully written by matmul
    matmul<T>(M.get(), N, Z.get(), ldz, Np, N, dp, out.get(), dp);
    write_centred_grad<T>(out.get(), dp, 0, ns, d, 1.0, *gs);
    write_centred_grad<T>(out.get(), dp, ns, nt, d, 1.0, *gt);
    return value;
  }

  // cov path: transposed copies Y_s (dp × ns_p), Y_t (dp × nt_p) so that D_kl is a dot product.
  const std::int64_t nsp = round_up(ns, W), ntp = round_up(nt, W);
  Buffer<T> Ys(dp * nsp), Yt(dp * ntp);
  for (std::int64_t i = 0; i < ns; ++i)
    for (std::int64_t c = 0; c < d; ++c) Ys.get()[c * nsp + i] = Z.get()[i * ldz + c];
  for (std::int64_t i = 0; i < nt; ++i)
    for (std::int64_t c = 0; c < d; ++c) Yt.get()[c * ntp + i] = Z.get()[(ns + i) * ldz + c];
  Buffer<double> Ds(dp * dp), Dt(dp * dp);
  gram_upper<T>(Ys.get(), dp, nsp, nsp, Ds.get());
  gram_upper<T>(Yt.get(), dp, ntp, ntp, Dt.get());
  double* D = Ds.get();
  for (std::int64_t k = 0; k < dp * dp; ++k) {
    D[k] = D[k] / a - Dt.get()[k] / b;
    value += D[k] * D[k];
  }
  value *= 0.25 / dd;
  if (gs == nullptr) return value;
  Buffer<T> Dn(dp * dp);  // D / d² in the working precision
  for (std::int64_t k = 0; k < dp * dp; ++k) Dn.get()[k] = static_cast<T>(D[k] / dd);
  Buffer<T> out(Np * dp, false);  // fully written by matmul
  matmul<T>(Z.get(), ldz, Dn.get(), dp, Np, d, dp, out.get(), dp);
  write_centred_grad<T>(out.get(), dp, 0, ns, d, 1.0 / a, *gs);
  write_centred_grad<T>(out.get(), dp, ns, nt, d, -1.0 / b, *gt);
  return value;
}

py::tuple coral_sweep(std::uintptr_t xs_ptr, std::int64_t ns, std::int64_t ds, std::int64_t xs_rs,
                      std::int64_t xs_cs, std::uintptr_t xt_ptr, std::int64_t nt, std::int64_t dt,
                      std::int64_t xt_rs, std::int64_t xt_cs, const std::string& dtype,
                      std::uintptr_t gs_ptr, std::uintptr_t gt_ptr, bool need_grad, int path) {
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
  Matrix gs, gt;
  if (need_grad) {
    gs = make_matrix(gs_ptr, ns, ds, ds, 1, dtype, "grad_s");
    gt = make_matrix(gt_ptr, nt, dt, dt, 1, dtype, "grad_t");
  }
  int used = 0;
  double value;
  {
    py::gil_scoped_release release;
    value = xs.dtype == DType::f32
                ? coral_run<float>(xs, xt, need_grad ? &gs : nullptr, need_grad ? &gt : nullptr,
                                   path, &used)
                : coral_run<double>(xs, xt, need_grad ? &gs : nullptr, need_grad ? &gt : nullptr,
                                    path, &used);
  }
  return py::make_tuple(value, used);
}

}  // namespace
}  // namespace dk

namespace py = pybind11;

void register_coral(py::module_& m) {
  m.def("coral_sweep", &dk::coral_sweep,
        "Deep CORAL value ‖C_s − C_t‖²/(4d²) (float64) and, when need_grad, its gradients "
        "written to grad_s / grad_t (contiguous, input dtype). path: 0 auto, 1 gram, 2 cov. "
        "Returns (value, path used).",
        py::arg("xs_ptr"), py::arg("ns"), py::arg("ds"), py::arg("xs_row_stride"),
        py::arg("xs_col_stride"), py::arg("xt_ptr"), py::arg("nt"), py::arg("dt"),
        py::arg("xt_row_stride"), py::arg("xt_col_stride"), py::arg("dtype"), py::arg("gs_ptr"),
        py::arg("gt_ptr"), py::arg("need_grad"), py::arg("path"));
}
