// Tile kernels of the quadratic-forms engine (csrc/quadratic_forms.cpp).  Compiled once per
// instruction set through csrc/isa_copies.h (no include guard on purpose, its macros are
// #undef'd at the end).
//
// Contract and notation: dapkernels/backends/reference_quadratic_forms.py.  One work item is a
// row tile I; it visits the column tiles J = I, I + 1, … in order and, per tile:
//   G = c_I c_Jᵀ (register-blocked GEMM on the centred rows, c_J transposed into scratch),
//   D = ‖c_i‖² + ‖c_j‖² − 2G clamped at 0, K = Σ_l e^{−γ_l D} (or one l at a time), K_ii = 0,
//   Q[l, b] += w Σ_i V_I[i, b] (K V_J)[i, b] with w = 1 on the diagonal tile and 2 above it,
//   fused: (K V_J) is never stored, each register block of it is reduced against V_I at once.
// Q is accumulated per row tile I (one thread, J in order) and the row tiles are summed in
// order afterwards.  Row sums of K go to the rows of I and, for I < J, of J as fixed-point int64
// atomics (integer sums do not depend on their order).  Both make the result the same for every
// thread count.

#define DK_QMR (DK_VBYTES == 64 ? 8 : 6)  // rows of the register block

// acc0/acc1[r] = Σ_{k<K} A[r·ars + k] · B[k·ldb + (0 … 2W−1)], r < R.
template <typename T, int R>
DK_INLINE void qf_micro(std::int64_t K, const T* A, std::int64_t ars, const T* B,
                        std::int64_t ldb, vec_t<T>* acc0, vec_t<T>* acc1) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>;
  V a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = V{};
  for (std::int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    const V b0 = vload(b), b1 = vload(b + W);
    for (int r = 0; r < R; ++r) {
      const T a = A[r * ars + k];
      a0[r] += a * b0;
      a1[r] += a * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    acc0[r] = a0[r];
    acc1[r] = a1[r];
  }
}

template <typename T>
DK_INLINE void qf_micro_rows(int R, std::int64_t K, const T* A, std::int64_t ars, const T* B,
                             std::int64_t ldb, vec_t<T>* acc0, vec_t<T>* acc1) {
  switch (R) {
    case 8: qf_micro<T, 8>(K, A, ars, B, ldb, acc0, acc1); break;
    case 7: qf_micro<T, 7>(K, A, ars, B, ldb, acc0, acc1); break;
    case 6: qf_micro<T, 6>(K, A, ars, B, ldb, acc0, acc1); break;
    case 5: qf_micro<T, 5>(K, A, ars, B, ldb, acc0, acc1); break;
    case 4: qf_micro<T, 4>(K, A, ars, B, ldb, acc0, acc1); break;
    case 3: qf_micro<T, 3>(K, A, ars, B, ldb, acc0, acc1); break;
    case 2: qf_micro<T, 2>(K, A, ars, B, ldb, acc0, acc1); break;
    default: qf_micro<T, 1>(K, A, ars, B, ldb, acc0, acc1); break;
  }
}

// D (mI × ldt, columns ≥ nJ unspecified) = clamp(‖c_i‖² + ‖c_j‖² − 2 c_I c_Jᵀ) for the centred
// rows cI (row stride ldc, d columns) and cT = c_Jᵀ (d × ldt, ldt a multiple of 2W, zero-padded).
template <typename T>
void qf_distances(std::int64_t mI, std::int64_t nJ, std::int64_t d, const T* cI,
                  std::int64_t ldc, const T* cT, std::int64_t ldt, const T* normI,
                  const T* normJ, T* D) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>;
  V acc0[8], acc1[8];
  for (std::int64_t col = 0; col < nJ; col += 2 * W) {
    const V nj0 = vload(normJ + col), nj1 = vload(normJ + col + W);
    for (std::int64_t r = 0; r < mI; r += DK_QMR) {
      const int R = static_cast<int>(std::min<std::int64_t>(DK_QMR, mI - r));
      qf_micro_rows<T>(R, d, cI + r * ldc, ldc, cT + col, ldt, acc0, acc1);
      for (int q = 0; q < R; ++q) {
        const V ni = vsplat(normI[r + q]);
        T* o = D + (r + q) * ldt + col;
        vstore(o, clamp_nonneg<T>(ni + nj0 - (acc0[q] + acc0[q])));
        vstore(o + W, clamp_nonneg<T>(ni + nj1 - (acc1[q] + acc1[q])));
      }
    }
  }
}

// K (mI × ldt, written in columns < nJ rounded up to 2W, as D) = Σ_{l ∈ [l0, l1)} e^{−γ_l D},
// zero in columns ≥ nJ and, when diag, at i = j;
// adds the row sums to rowsum (mI doubles) and, when colsum is non-null, the column sums to
// colsum (nJ doubles).
template <typename T>
void qf_bank(std::int64_t mI, std::int64_t nJ, std::int64_t ldt, const T* D, const T* gam,
             int l0, int l1, bool diag, T* K, double* rowsum, double* colsum) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>;
  const std::int64_t nJp = (nJ + 2 * W - 1) / (2 * W) * (2 * W);
  for (std::int64_t i = 0; i < mI; ++i) {
    const T* drow = D + i * ldt;
    T* krow = K + i * ldt;
    V racc{};
    for (std::int64_t j = 0; j < nJp; j += W) {
      const V dv = vload(drow + j);
      V kv = vexp(dv * (-gam[l0]));
      for (int l = l0 + 1; l < l1; ++l) kv += vexp(dv * (-gam[l]));
      if (j + W > nJ) kv *= lane_mask<T>(static_cast<int>(std::max<std::int64_t>(nJ - j, 0)));
      vstore(krow + j, kv);
    }
    if (diag) krow[i] = T(0);
    for (std::int64_t j = 0; j < nJp; j += W) racc += vload(krow + j);
    rowsum[i] += hsum<T>(racc);
    if (colsum != nullptr)
      for (std::int64_t j = 0; j < nJ; ++j) colsum[j] += static_cast<double>(krow[j]);
  }
}

// q[b] += w Σ_i VI[i, b] (K VJ)[i, b] for b < Bp (Bp a multiple of 2W): K is mI × nJ (row
// stride ldk), VJ is nJ × Bp and VI is mI × Bp (labels as T).
template <typename T>
void qf_labels(std::int64_t mI, std::int64_t nJ, const T* K, std::int64_t ldk, const T* VI,
               const T* VJ, std::int64_t Bp, double w, double* q) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>;
  V acc0[8], acc1[8];
  for (std::int64_t col = 0; col < Bp; col += 2 * W) {
    V red0{}, red1{};
    for (std::int64_t r = 0; r < mI; r += DK_QMR) {
      const int R = static_cast<int>(std::min<std::int64_t>(DK_QMR, mI - r));
      qf_micro_rows<T>(R, nJ, K + r * ldk, ldk, VJ + col, Bp, acc0, acc1);
      for (int s = 0; s < R; ++s) {
        const T* vi = VI + (r + s) * Bp + col;
        red0 += vload(vi) * acc0[s];
        red1 += vload(vi + W) * acc1[s];
      }
    }
    for (int k = 0; k < W; ++k) {
      q[col + k] += w * static_cast<double>(red0[k]);
      q[col + W + k] += w * static_cast<double>(red1[k]);
    }
  }
}

// Labels v (int8, rows r0 … r0 + rows − 1, row stride ldv, B columns) as T, zero-padded to Bp.
template <typename T>
void qf_convert_labels(const std::int8_t* v, std::int64_t ldv, std::int64_t rows,
                       std::int64_t B, std::int64_t Bp, T* out) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int8_t* src = v + i * ldv;
    T* dst = out + i * Bp;
    for (std::int64_t b = 0; b < B; ++b) dst[b] = static_cast<T>(src[b]);
    for (std::int64_t b = B; b < Bp; ++b) dst[b] = T(0);
  }
}

// Per-thread scratch in elements of T: D, K and c_Jᵀ tiles (tile × ldt, d × ldt), the centred
// rows c_I (tile × d), V_I and V_J (tile × Bp each), then (as doubles, 2 T each for float) row
// and column sums (tile each).  Every piece starts on a 64-byte boundary of the block.
constexpr std::int64_t qf_align(std::int64_t elems, std::int64_t size) {
  const std::int64_t per_line = 64 / size;
  return (elems + per_line - 1) / per_line * per_line;
}

template <typename T>
std::int64_t qf_scratch_per_thread(std::int64_t tile, std::int64_t ldt, std::int64_t d,
                                   std::int64_t Bp) {
  constexpr std::int64_t S = sizeof(T);
  const std::int64_t per_double = static_cast<std::int64_t>(sizeof(double) / sizeof(T));
  return 2 * qf_align(tile * ldt, S) + qf_align(d * ldt, S) + qf_align(tile * d, S) +
         2 * qf_align(tile * Bp, S) + 2 * qf_align(tile * per_double, S);
}

// The sweep.  rows[i]: row i of the pooled sample (d values), centred on the fly as
// c_i = rows[i] − mu (mu in float64, the subtraction in float64 then rounded to T, so no centred
// copy of the sample is stored); norms: ‖c_i‖² (N, padded with zeros to a multiple of the tile
// plus 2W); gam: γ_l (L) in T; v: int8 labels (N × B, row stride ldv).  Writes qpart
// (num_tiles × Lp × Bp doubles, Lp = 1 when sum_bank else L) and adds fixed-point row sums
// (× fscale) to rs (Lp × N int64, zero on entry).  `nt` threads; the scratch is allocated here,
// before the parallel region.
template <typename T>
void qf_sweep(std::int64_t N, std::int64_t d, const T* const* rows, const double* mu,
              const T* norms, const T* gam, int L, bool sum_bank, const std::int8_t* v,
              std::int64_t ldv, std::int64_t B, std::int64_t tile, double fscale, double* qpart,
              std::int64_t* rs, int nt) {
  constexpr int W = kLanes<T>;
  const std::int64_t ldt = (tile + 2 * W - 1) / (2 * W) * (2 * W);
  const std::int64_t Bp = (B + 2 * W - 1) / (2 * W) * (2 * W);
  const std::int64_t nb = (N + tile - 1) / tile;
  const int Lp = sum_bank ? 1 : L;
  const std::int64_t per = qf_scratch_per_thread<T>(tile, ldt, d, Bp);
  constexpr std::int64_t S = sizeof(T);
  // 64-byte aligned block (operator new[] of T guarantees only alignof(T))
  std::unique_ptr<T[]> scratch(new T[static_cast<std::size_t>(per * nt + 64 / S)]);
  T* base = scratch.get();
  base += (64 - reinterpret_cast<std::uintptr_t>(base) % 64) % 64 / S;
  std::fill(qpart, qpart + nb * Lp * Bp, 0.0);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* mine = base + per * thread_index();
    T* D = mine;
    T* K = D + qf_align(tile * ldt, S);
    T* cT = K + qf_align(tile * ldt, S);
    T* cI = cT + qf_align(d * ldt, S);
    T* VI = cI + qf_align(tile * d, S);
    T* VJ = VI + qf_align(tile * Bp, S);
    double* rowsum = reinterpret_cast<double*>(VJ + qf_align(tile * Bp, S));
    double* colsum = rowsum + qf_align(tile, 8);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t I = 0; I < nb; ++I) {
      const std::int64_t i0 = I * tile, mI = std::min(tile, N - i0);
      for (std::int64_t i = 0; i < mI; ++i)
        for (std::int64_t k = 0; k < d; ++k)
          cI[i * d + k] = static_cast<T>(static_cast<double>(rows[i0 + i][k]) - mu[k]);
      qf_convert_labels<T>(v + i0 * ldv, ldv, mI, B, Bp, VI);
      double* q = qpart + I * Lp * Bp;
      for (std::int64_t J = I; J < nb; ++J) {
        const std::int64_t j0 = J * tile, nJ = std::min(tile, N - j0);
        for (std::int64_t k = 0; k < d; ++k) {
          T* dst = cT + k * ldt;
          for (std::int64_t j = 0; j < nJ; ++j)
            dst[j] = static_cast<T>(static_cast<double>(rows[j0 + j][k]) - mu[k]);
          for (std::int64_t j = nJ; j < ldt; ++j) dst[j] = T(0);
        }
        qf_distances<T>(mI, nJ, d, cI, d, cT, ldt, norms + i0, norms + j0, D);
        const T* VJp = VI;
        if (J != I) {
          qf_convert_labels<T>(v + j0 * ldv, ldv, nJ, B, Bp, VJ);
          VJp = VJ;
        }
        for (int lp = 0; lp < Lp; ++lp) {
          const int l0 = sum_bank ? 0 : lp, l1 = sum_bank ? L : lp + 1;
          std::fill(rowsum, rowsum + mI, 0.0);
          if (J != I) std::fill(colsum, colsum + nJ, 0.0);
          qf_bank<T>(mI, nJ, ldt, D, gam, l0, l1, J == I, K, rowsum,
                     J != I ? colsum : nullptr);
          qf_labels<T>(mI, nJ, K, ldt, VI, VJp, Bp, J == I ? 1.0 : 2.0, q + lp * Bp);
          std::int64_t* rsl = rs + lp * N;
          for (std::int64_t i = 0; i < mI; ++i) {
            const std::int64_t add = std::llround(rowsum[i] * fscale);
#pragma omp atomic
            rsl[i0 + i] += add;
          }
          if (J != I) {
            for (std::int64_t j = 0; j < nJ; ++j) {
              const std::int64_t add = std::llround(colsum[j] * fscale);
#pragma omp atomic
              rsl[j0 + j] += add;
            }
          }
        }
      }
    }
  }
}

#undef DK_QMR
