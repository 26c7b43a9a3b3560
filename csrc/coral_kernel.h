// Deep CORAL vector kernels.  Compiled once per instruction set through csrc/isa_copies.h
// (from csrc/coral.cpp; no include guard on purpose, its macros are #undef'd at the end), with
// DK_VBYTES the copy's native vector width.  OpenMP regions here inherit the target of the
// copy.
//
// The driver (coral.cpp) owns every buffer: nothing here allocates on the heap, and per-thread
// scratch is a fixed-size stack array (a few KiB), so no allocation can fail, or throw, inside a
// parallel region.  `threads` is the team size the driver chose; every loop below is a
// work-sharing loop over items whose results do not depend on which thread ran them or on how
// many threads there were (each output element is computed by one item, in a fixed order), so
// the results are bitwise identical for any team size, including the one the runtime actually
// grants (it may be smaller than requested).
//
// Notation (see coral.cpp): Z = centred rows (N × d, row pitch ldz, zero-padded), Zt = its
// transpose (feature rows, source samples then target samples, each segment zero-padded).

// Register tiles, sized to the register file: 16 vector registers on SSE2 / AVX2, 32 on
// AVX-512 (the compiler keeps every accumulator of the unrolled loops in a register).
//   Gram dot tile: GT × GT dot products, GT² accumulators + GT row vectors + 1 column vector
//                  (3×3: 13 registers; 4×4 on AVX-512: 21).
//   Product micro-kernel: MR rows × MC vectors of output, MR·MC accumulators + MC vectors of B
//                  + 1 broadcast (6×2: 15; 8×3 on AVX-512: 28).
#define DK_CORAL_GT (DK_VBYTES == 64 ? 4 : 3)
#define DK_CORAL_MR (DK_VBYTES == 64 ? 8 : 6)
#define DK_CORAL_MC (DK_VBYTES == 64 ? 3 : 2)

// Vector steps summed in the working precision before a partial dot product goes to float64:
// each float32 lane adds 64 products (the float32 error stays ~1e-6 of Σ|products|), then the
// W lanes are added by a tree and the result is accumulated in float64.
constexpr int kSteps = 64;
// Columns of the Gram operand processed between two barriers: the block (rows × columns) is
// re-read by every tile row, so it should stay in a (private, ≥ 512 KiB) L2 cache.
constexpr std::int64_t kBlockBytes = 384 * 1024;
// An item of the product: kItemRows row blocks (MR rows each) × kItemPanels panels (MC·W
// columns each), e.g. 48 rows × 64 columns on AVX2, 64 × 96 on AVX-512 (at N = 64, d = 2048:
// 32 and 22 items; for the cov path's small d, the rows give the items).
constexpr std::int64_t kItemRows = 8;
constexpr std::int64_t kItemPanels = DK_VBYTES == 64 ? 2 : 4;

// Geometry of this copy, for the driver's padding.
template <typename T>
Geometry geometry() {
  Geometry g;
  g.lanes = kLanes<T>;
  g.gram_tile = DK_CORAL_GT;
  g.panel = DK_CORAL_MC * kLanes<T>;
  // Pre-broadcast A in the product where a broadcast is a shuffle (SSE2, no AVX).
#if DK_VBYTES == 16 && defined(__SSE2__) && !defined(__AVX__)
  g.prebroadcast = true;
#endif
  return g;
}

// x in every lane.  (simd.h's vsplat adds x to a zero vector, which the compiler must keep, as
// −0 + 0 = +0: one extra instruction per broadcast in the product's inner loop.)
template <typename T>
DK_INLINE vec_t<T> splat(T x) {
  return x - vec_t<T>{};
}

constexpr int bit_reverse(int l, int w) {
  int r = 0;
  for (int b = 1; b < w; b <<= 1) r = (r << 1) | ((l & b) ? 1 : 0);
  return r;
}

// One level of the horizontal-sum tree: in blocks of 2h lanes, the result holds the pairwise
// sums of x's block halves, then those of y's (two two-source shuffles and one add; one
// permute instruction per shuffle on AVX-512).
template <typename T, int h>
DK_INLINE vec_t<T> fold(vec_t<T> x, vec_t<T> y) {
  constexpr int W = kLanes<T>;
  ivec_t<T> lo, hi;
#pragma GCC unroll 16
  for (int l = 0; l < W; ++l) {
    const int blk = l / (2 * h) * (2 * h), p = l % (2 * h);
    lo[l] = p < h ? blk + p : W + blk + p - h;
    hi[l] = lo[l] + h;
  }
  return __builtin_shuffle(x, y, lo) + __builtin_shuffle(x, y, hi);
}

template <typename T, int h>
DK_INLINE void tree(vec_t<T>* x) {  // 2h vectors in, h out
#pragma GCC unroll 16
  for (int q = 0; q < h; ++q) x[q] = fold<T, h>(x[2 * q], x[2 * q + 1]);
  if constexpr (h > 1) tree<T, h / 2>(x);
}

// out[q] = Σ_lanes v[q] for q < n.  Groups of W vectors are reduced together by a log2(W)-level
// tree (about 3 instructions per vector instead of 2·log2(W)); afterwards lane l holds the sum
// of vector bit_reverse(l).  A short last group is padded with zero vectors.
template <typename T, int n>
DK_INLINE void hsums(const vec_t<T>* v, T* out) {
  constexpr int W = kLanes<T>;
#pragma GCC unroll 16
  for (int g = 0; g < n; g += W) {
    vec_t<T> x[W];
#pragma GCC unroll 16
    for (int q = 0; q < W; ++q) x[q] = g + q < n ? v[g + q] : vec_t<T>{};
    if constexpr (W > 1) tree<T, W / 2>(x);
    T t[W];
    vstore(t, x[0]);
#pragma GCC unroll 16
    for (int l = 0; l < W; ++l) {
      const int q = bit_reverse(l, W);
      if (g + q < n) out[g + q] = t[l];
    }
  }
}

// t[r·GT + c] = Σ_{k0 ≤ k < k1} a[r·ld + k] · b[c·ld + k] in the working precision; k1 − k0 a
// multiple of W.  Per vector step: 2·GT loads, GT² multiply-adds.
template <typename T>
DK_INLINE void dot_tile(const T* a, const T* b, std::int64_t ld, std::int64_t k0, std::int64_t k1,
                        T* t) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>, G = DK_CORAL_GT;
  V acc[G * G];
#pragma GCC unroll 16
  for (int q = 0; q < G * G; ++q) acc[q] = V{};
  for (std::int64_t k = k0; k < k1; k += W) {
    V av[G];
#pragma GCC unroll 4
    for (int r = 0; r < G; ++r) av[r] = vload(a + r * ld + k);
#pragma GCC unroll 4
    for (int c = 0; c < G; ++c) {
      const V bv = vload(b + c * ld + k);
#pragma GCC unroll 4
      for (int r = 0; r < G; ++r) acc[r * G + c] += av[r] * bv;
    }
  }
  hsums<T, G * G>(acc, t);
}

// Upper tiles (I ≤ J, GT×GT) of the weighted Gram matrix of the rows of A:
//   S[i][j] = Σ_s scale_s Σ_{k ∈ segment s} A[i][k] A[j][k]   (float64, row pitch lds)
// A: R rows (R a multiple of GT) of pitch ld; segment bounds multiples of W, zero-padded.
// Gram path: A = Z, one segment [0, round_up(d, W)), scale 1 → G = Z Zᵀ.
// cov path: A = Zt, segments source (1/a) and target (−1/b) → D = C_s − C_t.
// Work is shared by tile rows (row I costs tiles − I tiles), dealt to the real team in snake
// order (0, 1, …, team−1, team−1, …, 0, 0, 1, …: the loads differ by less than one row), each
// row owned by one thread for the whole sweep: no barrier inside the region (on a busy machine
// each barrier can wait a scheduler time slice for a descheduled thread).  Each thread sweeps
// a segment in blocks of columns (a block is re-read by all of its tile rows, so it should stay
// in L2), and a tile row kSteps·W columns at a time over its tiles J ≥ I (its GT rows stay in
// L1).  Every S entry is summed in the same order (segments, blocks, chunks) whatever the
// team.  Entries below the diagonal tiles are not written.
template <typename T>
void gram_upper(const T* A, std::int64_t R, std::int64_t ld, const Segment* seg, int nseg,
                double* S, std::int64_t lds, int threads) {
  constexpr int G = DK_CORAL_GT;
  constexpr std::int64_t kc = kSteps * kLanes<T>;
  const std::int64_t tiles = R / G;
  const std::int64_t block = std::max<std::int64_t>(
      kc, kBlockBytes / (R * static_cast<std::int64_t>(sizeof(T))) / kc * kc);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::int64_t team = 1, me = 0;
#ifdef _OPENMP
    team = omp_get_num_threads();
    me = omp_get_thread_num();
#endif
    for (int s = 0; s < nseg; ++s) {
      for (std::int64_t b0 = seg[s].lo; b0 < seg[s].hi; b0 += block) {
        const std::int64_t b1 = std::min(seg[s].hi, b0 + block);
        for (std::int64_t I = 0; I < tiles; ++I) {
          const std::int64_t round = I / team, pos = I % team;
          if ((round % 2 == 0 ? pos : team - 1 - pos) != me) continue;
          for (std::int64_t k0 = b0; k0 < b1; k0 += kc) {
            const std::int64_t k1 = std::min(b1, k0 + kc);
            const bool first = s == 0 && k0 == seg[0].lo;
            for (std::int64_t J = I; J < tiles; ++J) {
              T t[G * G];
              dot_tile<T>(A + I * G * ld, A + J * G * ld, ld, k0, k1, t);
              double* o = S + I * G * lds + J * G;
#pragma GCC unroll 4
              for (int r = 0; r < G; ++r)
#pragma GCC unroll 4
                for (int c = 0; c < G; ++c) {
                  const double v = seg[s].scale * static_cast<double>(t[r * G + c]);
                  o[r * lds + c] = first ? v : o[r * lds + c] + v;
                }
            }
          }
        }
      }
    }
  }
}

// acc[r][v] = Σ_{k<K} A(r, k) · B[k·ldb + v·W …] for R rows and C ≤ MC vectors, then stored to
// rows[r] + col (w < C·W valid columns: through a small stack tile).  A(r, k) = A[r·lda + k]
// broadcast, or with PRE the vector at A + r·lda + k·W (pre-broadcast copy, see product).
// check accumulates acc·0: it turns NaN if a result is not finite.
template <typename T, int R, int C, bool PRE>
DK_INLINE void micro(std::int64_t K, const T* A, std::int64_t lda, const T* B, std::int64_t ldb,
                     T* const* rows, std::int64_t col, std::int64_t w, vec_t<T>& check) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>;
  V acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < C; ++v) acc[r][v] = V{};
  for (std::int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    V bv[C];
#pragma GCC unroll 4
    for (int v = 0; v < C; ++v) bv[v] = vload(b + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V a = PRE ? vload(A + r * lda + k * W) : splat(A[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < C; ++v) acc[r][v] += a * bv[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < C; ++v) check += acc[r][v] * T(0);
  if (w == C * W) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < C; ++v) vstore(rows[r] + col + v * W, acc[r][v]);
    return;
  }
  for (int r = 0; r < R; ++r) {
    T t[C * W];
    for (int v = 0; v < C; ++v) vstore(t + v * W, acc[r][v]);
    std::memcpy(rows[r] + col, t, static_cast<std::size_t>(w) * sizeof(T));
  }
}

template <typename T, int C, bool PRE>
DK_INLINE void micro_rows(int R, std::int64_t K, const T* A, std::int64_t lda, const T* B,
                          std::int64_t ldb, T* const* rows, std::int64_t col, std::int64_t w,
                          vec_t<T>& check) {
  switch (R) {
#if DK_CORAL_MR >= 8
    case 8: micro<T, 8, C, PRE>(K, A, lda, B, ldb, rows, col, w, check); break;
    case 7: micro<T, 7, C, PRE>(K, A, lda, B, ldb, rows, col, w, check); break;
#endif
    case 6: micro<T, 6, C, PRE>(K, A, lda, B, ldb, rows, col, w, check); break;
    case 5: micro<T, 5, C, PRE>(K, A, lda, B, ldb, rows, col, w, check); break;
    case 4: micro<T, 4, C, PRE>(K, A, lda, B, ldb, rows, col, w, check); break;
    case 3: micro<T, 3, C, PRE>(K, A, lda, B, ldb, rows, col, w, check); break;
    case 2: micro<T, 2, C, PRE>(K, A, lda, B, ldb, rows, col, w, check); break;
    case 1: micro<T, 1, C, PRE>(K, A, lda, B, ldb, rows, col, w, check); break;
    default: break;
  }
}

// micro_rows with C vectors per row (C ≤ MC, a short last panel needs fewer).
template <typename T, bool PRE>
DK_INLINE void panel_rows(int C, int R, std::int64_t K, const T* A, std::int64_t lda, const T* B,
                          std::int64_t ldb, T* const* rows, std::int64_t col, std::int64_t w,
                          vec_t<T>& check) {
  if (C >= DK_CORAL_MC)
    micro_rows<T, DK_CORAL_MC, PRE>(R, K, A, lda, B, ldb, rows, col, w, check);
#if DK_CORAL_MC > 2
  else if (C == 2)
    micro_rows<T, 2, PRE>(R, K, A, lda, B, ldb, rows, col, w, check);
#endif
  else
    micro_rows<T, 1, PRE>(R, K, A, lda, B, ldb, rows, col, w, check);
}

// out_i[0:d) = Σ_{k<K} A[i][k] · B[k][0:d) for the N rows, row i written at out[i] (source rows
// i < ns, then target rows; any re-centring and scaling is already in A).  Items (dynamic) are
// kItemRows rows × kItemPanels panels of MC·W output columns; an item runs its row blocks over
// one panel of B at a time (the panel stays in L1).  B must be readable (zero-padded) up to
// round_up(d, MC·W) columns.  With Ab (N·K·W elements, only when the driver's geometry asks for
// it: SSE2 has no broadcast load, each broadcast costing a shuffle on the FP ports that the
// multiply-adds need), A is first copied there with every element repeated W times, so the
// micro-kernel loads ready vectors.  Returns false when a result is not finite.
template <typename T>
bool product(const T* A, std::int64_t lda, T* Ab, const T* B, std::int64_t ldb, std::int64_t N,
             std::int64_t K, std::int64_t d, T* const* out, int threads) {
  constexpr int W = kLanes<T>, MR = DK_CORAL_MR;
  constexpr std::int64_t P = DK_CORAL_MC * W, IC = kItemPanels * P, IR = kItemRows * MR;
  const std::int64_t col_items = (d + IC - 1) / IC, row_items = (N + IR - 1) / IR;
  if (Ab != nullptr)
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t k = 0; k < K; ++k) vstore(Ab + (i * K + k) * W, splat(A[i * lda + k]));
  int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1) \
    reduction(| : bad)
  for (std::int64_t it = 0; it < col_items * row_items; ++it) {
    const std::int64_t c0 = it / row_items * IC, c1 = std::min(d, c0 + IC);
    const std::int64_t i0 = it % row_items * IR, i1 = std::min(N, i0 + IR);
    vec_t<T> check{};
    for (std::int64_t col = c0; col < c1; col += P) {
      const std::int64_t w = std::min(P, c1 - col);
      // A short last panel (e.g. d = 64 on AVX-512: 48 + 16) uses only the vectors it needs.
      const int C = static_cast<int>((w + W - 1) / W);
      for (std::int64_t r0 = i0; r0 < i1; r0 += MR) {
        const int R = static_cast<int>(std::min<std::int64_t>(MR, i1 - r0));
        if (Ab != nullptr)
          panel_rows<T, true>(C, R, K, Ab + r0 * K * W, K * W, B + col, ldb, out + r0, col, w,
                              check);
        else
          panel_rows<T, false>(C, R, K, A + r0 * lda, lda, B + col, ldb, out + r0, col, w,
                               check);
      }
    }
    bad |= hsum<T>(check) == 0.0 ? 0 : 1;
  }
  return bad == 0;
}

// Column sums of rows [0, n) of x, columns [c0, c0 + w) (w ≤ B), minus `shift` with SHIFT, in
// float64: four rows per update of the accumulators (a fixed order: the sums do not depend on
// the team).
template <typename T, bool SHIFT>
DK_INLINE void column_block_sums(const T* x, std::int64_t n, std::int64_t ldx, std::int64_t c0,
                                 std::int64_t w, const double* shift, double* acc) {
  for (std::int64_t c = 0; c < w; ++c) acc[c] = 0.0;
  const auto v = [shift](const T* r, std::int64_t c) {
    return SHIFT ? static_cast<double>(r[c]) - shift[c] : static_cast<double>(r[c]);
  };
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const T* r0 = x + i * ldx + c0;
    const T* r1 = r0 + ldx;
    const T* r2 = r1 + ldx;
    const T* r3 = r2 + ldx;
#pragma omp simd
    for (std::int64_t c = 0; c < w; ++c)
      acc[c] += (v(r0, c) + v(r1, c)) + (v(r2, c) + v(r3, c));
  }
  for (; i < n; ++i) {
    const T* r = x + i * ldx + c0;
#pragma omp simd
    for (std::int64_t c = 0; c < w; ++c) acc[c] += v(r, c);
  }
}

// Centring of both domains (source rows then target rows) in one parallel region.
//   mean_s, mean_t (d each): column means in float64, by blocks of columns; with refine (float64
//     input) a second pass adds the mean residual (1/n) Σ_i (x_i − mean).  (For float32 input
//     the float64 sum of up to 2^29 values is exact: a second pass would change nothing.)  A
//     NaN/Inf (or a float64 overflow) leaves a mean non-finite: the driver checks.
//   Z[i][0:d) = x_i − mean rounded once to T, Z[i][d:ldz) = 0, rows i < ns from xs then xt;
//     with Zt, also Zt[c·ldt + i] (source) / Zt[c·ldt + nsp + i] (target) = Z[·][c].
// Items: column blocks, then (after the one barrier) rows.
template <typename T>
void prepare(const Matrix& xs, const Matrix& xt, double* mean_s, double* mean_t, bool refine,
             T* Z, std::int64_t ldz, T* Zt, std::int64_t ldt, std::int64_t nsp, int threads) {
  constexpr int B = 256;
  const std::int64_t d = xs.cols, ns = xs.rows, N = xs.rows + xt.rows;
  const std::int64_t blocks = (d + B - 1) / B;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#pragma omp for schedule(static)
    for (std::int64_t it = 0; it < 2 * blocks; ++it) {
      const Matrix& x = it < blocks ? xs : xt;
      double* mean = it < blocks ? mean_s : mean_t;
      const std::int64_t c0 = (it % blocks) * B, w = std::min<std::int64_t>(B, d - c0);
      const double inv = 1.0 / static_cast<double>(x.rows);
      double acc[B];
      column_block_sums<T, false>(x.data<T>(), x.rows, x.row_stride, c0, w, nullptr, acc);
      bool finite = true;
      for (std::int64_t c = 0; c < w; ++c) {
        mean[c0 + c] = acc[c] * inv;
        finite = finite && std::isfinite(acc[c]);
      }
      if (!refine || !finite) continue;
      column_block_sums<T, true>(x.data<T>(), x.rows, x.row_stride, c0, w, mean + c0, acc);
      for (std::int64_t c = 0; c < w; ++c) mean[c0 + c] += acc[c] * inv;
    }
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < N; ++i) {
      const bool src = i < ns;
      const Matrix& x = src ? xs : xt;
      const double* mean = src ? mean_s : mean_t;
      const T* r = x.data<T>() + (src ? i : i - ns) * x.row_stride;
      T* z = Z + i * ldz;
#pragma omp simd
      for (std::int64_t c = 0; c < d; ++c)
        z[c] = static_cast<T>(static_cast<double>(r[c]) - mean[c]);
      for (std::int64_t c = d; c < ldz; ++c) z[c] = T(0);
      if (Zt != nullptr) {
        T* t = Zt + (src ? i : nsp + i - ns);
        for (std::int64_t c = 0; c < d; ++c) t[c * ldt] = z[c];
      }
    }
  }
}

#undef DK_CORAL_GT
#undef DK_CORAL_MR
#undef DK_CORAL_MC
