// Fused MMD / JMMD tile kernels.  Compiled once per instruction set through csrc/isa_copies.h
// (from csrc/mmd.cpp; no include guard on purpose, its macros are #undef'd at the end).
// OpenMP regions here inherit the target of the copy.
//
// Notation (as in dapkernels/backends/reference.py::mmd_sweep): c = centred rows of one layer, D_ij = ‖c_i‖² + ‖c_j‖² − 2 c_i·c_j,
// K_l = Σ_q e^{−γ_q D} (bank of layer l), K_l' = −Σ_q γ_q e^{−γ_q D}, joint kernel k = Π_l K_l,
// C^l_ij = W_ij · K_l'(D_l,ij) · Π_{l'≠l} K_l'(D_l',ij) and ∂L/∂c_l,i = 4 [rowsum(C^l)_i c_l,i −
// (C^l c_l)_i].  Tiles are visited with I ≤ J only: an off-diagonal entry stands for the pairs
// (i, j) and (j, i) (multiplicity 2), an entry of a diagonal block for itself (multiplicity 1).

#define DK_MR (DK_VBYTES == 64 ? 8 : 6)  // rows of the register-blocked GEMM micro-kernel

// O[r, 0:2W] (+)= Σ_k A(r, k) · B[k, 0:2W] for R rows, A(r, k) = A[r·ars + k·aks].
template <typename T, int R, bool ACC>
DK_INLINE void micro(std::int64_t K, const T* A, std::int64_t ars, std::int64_t aks, const T* B,
                     std::int64_t ldb, T* O, std::int64_t ldo) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>;
  V acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = V{};
  for (std::int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    const V b0 = vload(b), b1 = vload(b + W);
    for (int r = 0; r < R; ++r) {
      const T a = A[r * ars + k * aks];
      acc0[r] += a * b0;
      acc1[r] += a * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    T* o = O + r * ldo;
    if (ACC) {
      acc0[r] += vload(o);
      acc1[r] += vload(o + W);
    }
    vstore(o, acc0[r]);
    vstore(o + W, acc1[r]);
  }
}

template <typename T, bool ACC>
DK_INLINE void micro_rows(std::int64_t R, std::int64_t K, const T* a, std::int64_t ars,
                          std::int64_t aks, const T* B, std::int64_t ldb, T* o,
                          std::int64_t ldo) {
  switch (R) {
    case 8: micro<T, 8, ACC>(K, a, ars, aks, B, ldb, o, ldo); break;
    case 7: micro<T, 7, ACC>(K, a, ars, aks, B, ldb, o, ldo); break;
    case 6: micro<T, 6, ACC>(K, a, ars, aks, B, ldb, o, ldo); break;
    case 5: micro<T, 5, ACC>(K, a, ars, aks, B, ldb, o, ldo); break;
    case 4: micro<T, 4, ACC>(K, a, ars, aks, B, ldb, o, ldo); break;
    case 3: micro<T, 3, ACC>(K, a, ars, aks, B, ldb, o, ldo); break;
    case 2: micro<T, 2, ACC>(K, a, ars, aks, B, ldb, o, ldo); break;
    case 1: micro<T, 1, ACC>(K, a, ars, aks, B, ldb, o, ldo); break;
    default: break;
  }
}

// O[:, :nvalid] (+)= A (M × K, strided) · B (K × ·, row stride ldb).  B is read in whole panels
// of 2W columns (it must be readable up to nvalid rounded up); O is written in [0, nvalid) only.
// With upper_only (a symmetric product, A·Aᵀ of one block) the micro-blocks strictly below the
// diagonal are skipped and O is completed by mirroring (O square, M = nvalid).
template <typename T, bool ACC>
void gemm(std::int64_t M, std::int64_t K, std::int64_t nvalid, const T* A, std::int64_t ars,
          std::int64_t aks, const T* B, std::int64_t ldb, T* O, std::int64_t ldo,
          bool upper_only = false) {
  constexpr int NB = 2 * kLanes<T>;
  for (std::int64_t col = 0; col < nvalid; col += NB) {
    const std::int64_t w = std::min<std::int64_t>(NB, nvalid - col);
    // upper_only: rows from col + NB on lie wholly below the diagonal in this panel
    const std::int64_t rows = upper_only ? std::min<std::int64_t>(M, col + NB) : M;
    for (std::int64_t r = 0; r < rows; r += DK_MR) {
      const std::int64_t R = std::min<std::int64_t>(DK_MR, M - r);
      T* o = O + r * ldo + col;
      if (w == NB) {
        micro_rows<T, ACC>(R, K, A + r * ars, ars, aks, B + col, ldb, o, ldo);
        continue;
      }
      T tmp[DK_MR * NB] = {};  // partial panel: go through a full-width buffer
      for (std::int64_t q = 0; q < R && ACC; ++q)
        for (std::int64_t k = 0; k < w; ++k) tmp[q * NB + k] = o[q * ldo + k];
      micro_rows<T, ACC>(R, K, A + r * ars, ars, aks, B + col, ldb, tmp, NB);
      for (std::int64_t q = 0; q < R; ++q)
        for (std::int64_t k = 0; k < w; ++k) o[q * ldo + k] = tmp[q * NB + k];
    }
  }
  if (!upper_only) return;
  // Row i was computed from column (i / DK_MR · DK_MR) / NB · NB on; fill the rest from the
  // transposed entries, which lie in computed blocks.
  for (std::int64_t i = 0; i < M; ++i) {
    const std::int64_t start = std::min<std::int64_t>(i / DK_MR * DK_MR / NB * NB, nvalid);
    for (std::int64_t j = 0; j < start; ++j) O[i * ldo + j] = O[j * ldo + i];
  }
}

// K = Σ_q e^{−γ_q D} and Kp = Σ_q γ_q e^{−γ_q D} (= −K') for one vector of distances.
template <typename T>
DK_INLINE void bank(const Step<T>* st, int ns, vec_t<T> D, vec_t<T>& K, vec_t<T>& Kp) {
  vec_t<T> v = vexp(D * (-st[0].gamma));
  K = v * st[0].count;
  Kp = v * st[0].gcount;
  for (int s = 1; s < ns; ++s) {
    if (st[s].squarings == 0) {
      v = vexp(D * (-st[s].gamma));
    } else {
      for (int q = 0; q < st[s].squarings; ++q) v = v * v;
    }
    K += v * st[s].count;
    Kp += v * st[s].gcount;
  }
}

template <typename T>
struct Scratch {
  T K[kMaxLayers][kChunk];
  T Kp[kMaxLayers][kChunk];
};

// Epilogue of rows [r0, r1) of a tile with rows from i0 and columns [j0, j1): reads the Gram
// tile G_l (row stride ldg) of every layer, adds m·k to sums[0 ss, 1 cross, 2 tt] and, with
// need_grad, overwrites G_l with C^l and adds its row sums to rowsum[l][i] and its column sums
// to colsum[l][j − j0] (either skipped when its array is null).  Columns below diag_end form a diagonal block: multiplicity 1, and no
// column sums there (the block holds both (i, j) and (j, i); the caller applies C·c_J once).
template <typename T, int LT>
void epilogue_rows(const Context<T>& cx, T* const* G, std::int64_t ldg, std::int64_t i0,
                   std::int64_t r0, std::int64_t r1, std::int64_t j0, std::int64_t j1,
                   std::int64_t diag_end, bool need_grad, double* const* rowsum,
                   T* const* colsum, double* sums, Scratch<T>& sc) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>;
  const int L = LT > 0 ? LT : cx.layers;
  T k0[kMaxLayers], kp0[kMaxLayers];  // bank at D = 0, used on the diagonal i = j
  for (int l = 0; l < L; ++l) {
    k0[l] = kp0[l] = T(0);
    for (int s = 0; s < cx.num_steps[l]; ++s) {
      k0[l] += cx.steps[l][s].count;
      kp0[l] += cx.steps[l][s].gcount;
    }
  }
  for (std::int64_t i = r0; i < r1; ++i) {
    const int a = i >= cx.n ? 1 : 0;
    V rowacc[kMaxLayers];
    for (int l = 0; l < L; ++l) rowacc[l] = V{};
    std::int64_t cuts[4] = {j0, std::min(std::max(diag_end, j0), j1),
                            std::min(std::max(cx.n, j0), j1), j1};
    if (cuts[2] < cuts[1]) std::swap(cuts[1], cuts[2]);
    for (int seg = 0; seg < 3; ++seg) {
      const std::int64_t p = cuts[seg], q = cuts[seg + 1];
      if (p >= q) continue;
      const bool diag = p < diag_end;
      const int widx = a + (p >= cx.n ? 1 : 0);
      const T cscale = static_cast<T>(-cx.w[widx]);
      const bool addcol = need_grad && !diag && colsum != nullptr;
      V sumk{};
      for (std::int64_t c0 = p; c0 < q; c0 += kChunk) {
        const int cnt = static_cast<int>(std::min<std::int64_t>(kChunk, q - c0));
        for (int l = 0; l < L; ++l) {
          const T* g = G[l] + (i - i0) * ldg + (c0 - j0);
          const T* nj = cx.norms[l] + c0;
          const V ni = vsplat(cx.norms[l][i]);
          for (int k = 0; k < cnt; k += W) {
            const int rem = std::min(W, cnt - k);
            const V gv = rem == W ? vload(g + k) : vload_part(g + k, rem);
            const V nv = rem == W ? vload(nj + k) : vload_part(nj + k, rem);
            const V D = clamp_nonneg<T>(ni + nv - (gv + gv));
            V Kv, Kpv;
            bank(cx.steps[l], cx.num_steps[l], D, Kv, Kpv);
            vstore(sc.K[l] + k, Kv);
            vstore(sc.Kp[l] + k, Kpv);
          }
        }
        if (i >= c0 && i < c0 + cnt) {  // exact zero distance, not the rounding residue of D_ii
          for (int l = 0; l < L; ++l) {
            sc.K[l][i - c0] = k0[l];
            sc.Kp[l][i - c0] = kp0[l];
          }
        }
        for (int k = 0; k < cnt; k += W) {
          const int rem = std::min(W, cnt - k);
          const V mask = rem == W ? vsplat(T(1)) : lane_mask<T>(rem);
          V kern = vload(sc.K[0] + k);
          for (int l = 1; l < L; ++l) kern *= vload(sc.K[l] + k);
          sumk += kern * mask;
          if (!need_grad) continue;
          for (int l = 0; l < L; ++l) {
            V cv = vload(sc.Kp[l] + k) * (cscale * mask);
            for (int o = 0; o < L; ++o)
              if (o != l) cv *= vload(sc.K[o] + k);
            T* dst = G[l] + (i - i0) * ldg + (c0 - j0) + k;
            if (rem == W) vstore(dst, cv); else vstore_part(dst, cv, rem);
            rowacc[l] += cv;
            if (addcol) {
              T* cs = colsum[l] + (c0 - j0) + k;
              vstore(cs, vload(cs) + cv);
            }
          }
        }
      }
      sums[widx] += (diag ? 1.0 : 2.0) * hsum<T>(sumk);
    }
    if (need_grad && rowsum != nullptr)
      for (int l = 0; l < L; ++l) rowsum[l][i] += hsum<T>(rowacc[l]);
  }
}

template <typename T>
void epilogue_rows_any(const Context<T>& cx, T* const* G, std::int64_t ldg, std::int64_t i0,
                       std::int64_t r0, std::int64_t r1, std::int64_t j0, std::int64_t j1,
                       std::int64_t diag_end, bool need_grad, double* const* rowsum,
                       T* const* colsum, double* sums, Scratch<T>& sc) {
  switch (cx.layers) {
    case 1:
      epilogue_rows<T, 1>(cx, G, ldg, i0, r0, r1, j0, j1, diag_end, need_grad, rowsum,
                          colsum, sums, sc);
      break;
    case 2:
      epilogue_rows<T, 2>(cx, G, ldg, i0, r0, r1, j0, j1, diag_end, need_grad, rowsum,
                          colsum, sums, sc);
      break;
    default:
      epilogue_rows<T, 0>(cx, G, ldg, i0, r0, r1, j0, j1, diag_end, need_grad, rowsum,
                          colsum, sums, sc);
  }
}

// bt[k·B + (j − j0)] = c[j·ldc + k] for rows j0 ≤ j < j1 (zero for the rows up to j0 + B beyond
// j1): the column block c_J transposed, so that a Gram tile is a plain A·B product.  W×W blocks
// are transposed in registers (a scalar gather of one column at a time cost about two thirds
// of the Gram product itself at d = 256).  Reads c up to column round_up(d, W) − 1 and writes
// bt rows up to round_up(d, W) − 1: both buffers are padded that far.  B is a multiple of W.
template <typename T>
void pack_transposed(const T* c, std::int64_t ldc, std::int64_t d, std::int64_t j0,
                     std::int64_t j1, std::int64_t B, T* bt) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>;
  for (std::int64_t jb = 0; jb < B; jb += W) {
    for (std::int64_t k = 0; k < d; k += W) {
      V r[W];
#pragma GCC unroll 16
      for (int q = 0; q < W; ++q) {
        const std::int64_t j = j0 + jb + q;
        r[q] = j < j1 ? vload(c + j * ldc + k) : V{};
      }
      transpose_block<T>(r);
#pragma GCC unroll 16
      for (int q = 0; q < W; ++q) vstore(bt + (k + q) * B + jb, r[q]);
    }
  }
}

// mu[k0:k1] += Σ_i z[i, k0:k1] in float64, rows in order.
template <typename T>
DK_INLINE void column_block_sums(std::int64_t N, std::int64_t k0, std::int64_t k1, const T* z,
                                 std::int64_t ldz, double* mu) {
  double* mb = mu + k0;
  for (std::int64_t i = 0; i < N; ++i) {
    const T* zi = z + i * ldz + k0;
#pragma omp simd
    for (std::int64_t k = 0; k < k1 - k0; ++k) mb[k] += static_cast<double>(zi[k]);
  }
}

// mu[k] += Σ_i z[i, k] in float64 (z: N × d, row stride ldz).  Threads own column ranges
// and add the rows in order, so the sums do not depend on the thread count and no scratch is
// needed.  Vectorised with this copy's ISA: left scalar, the centring pass costs about as much
// as a small batch's Gram tiles.  Below the threading threshold no OpenMP region is entered at
// all: one whose if-clause is false still sets up a team (~1.5 µs per region, measured), a
// visible share of a small batch's call.
template <typename T>
void column_sums(std::int64_t N, std::int64_t d, const T* z, std::int64_t ldz, double* mu,
                 int threads) {
  constexpr std::int64_t cols = 64;
  const std::int64_t blocks = (d + cols - 1) / cols;
  if (!(threads > 1 && blocks > 1 && N * d > (1 << 18))) {
    column_block_sums<T>(N, 0, d, z, ldz, mu);  // same per-column order as the blocks
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t b = 0; b < blocks; ++b)
    column_block_sums<T>(N, b * cols, std::min(d, b * cols + cols), z, ldz, mu);
}

// Row i of center_rows.
template <typename T>
DK_INLINE void center_row(std::int64_t i, std::int64_t d, const T* z, std::int64_t ldz,
                          const double* mu, T* c, std::int64_t ldc, double* rowsq,
                          double* rowmax) {
  const T* zi = z + i * ldz;
  T* ci = c + i * ldc;
  double s = 0.0, mx = 0.0;
#pragma omp simd reduction(+ : s) reduction(max : mx)
  for (std::int64_t k = 0; k < d; ++k) {
    const T v = static_cast<T>(static_cast<double>(zi[k]) - mu[k]);
    ci[k] = v;
    const double vd = static_cast<double>(v);
    s += vd * vd;
    mx = std::max(mx, std::fabs(vd));
  }
  for (std::int64_t k = d; k < ldc; ++k) ci[k] = T(0);
  rowsq[i] = s;
  rowmax[i] = mx;
}

// c[i, :] = z[i, :] − mu rounded to T (columns d … ldc−1 set to 0), rowsq[i] = ‖c_i‖² of the
// rounded row in float64 and rowmax[i] = max_k |c_ik|.  Rows are independent: no reduction
// whose order could depend on the threads.  Threaded from a lower size than the column sums:
// the sweep's threads read c, so a single writer pays the cache-line transfers of every row
// (measured: 6 µs → 12 µs at 64 × 256 when the sweep uses two threads, back to ~8 µs with
// two writers).  No OpenMP region below the threshold (see column_sums).
template <typename T>
void center_rows(std::int64_t N, std::int64_t d, const T* z, std::int64_t ldz, const double* mu,
                 T* c, std::int64_t ldc, double* rowsq, double* rowmax, int threads) {
  if (!(threads > 1 && N * d >= (1 << 13))) {
    for (std::int64_t i = 0; i < N; ++i) center_row<T>(i, d, z, ldz, mu, c, ldc, rowsq, rowmax);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t i = 0; i < N; ++i) center_row<T>(i, d, z, ldz, mu, c, ldc, rowsq, rowmax);
}

// c[i, 0:d] *= f (a power of two, applied in float64: exact, also for subnormal float32 c)
// and norms[i] = ‖c_i‖² of the scaled rows (float64 sum, rounded once); returns Σ_i ‖c_i‖².
template <typename T>
double rescale_rows(std::int64_t N, std::int64_t d, double f, T* c, std::int64_t ldc,
                    T* norms) {
  double total = 0.0;
  for (std::int64_t i = 0; i < N; ++i) {
    T* ci = c + i * ldc;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (std::int64_t k = 0; k < d; ++k) {
      ci[k] = static_cast<T>(static_cast<double>(ci[k]) * f);
      s += static_cast<double>(ci[k]) * static_cast<double>(ci[k]);
    }
    norms[i] = static_cast<T>(s);
    total += s;
  }
  return total;
}

// Per-thread scratch of the sweep, carved out of one block allocated before the parallel
// region (an allocation that fails inside a region would abort the process):
// L·B² Gram / C tiles, dmax·B packed columns, L·(B + W) column sums and the bank values of one
// chunk.  In elements of T per thread: L·B² + dmax·B + L·(B + W) + 2·L·kChunk.
template <typename T>
std::int64_t sweep_scratch_per_thread(int L, std::int64_t B, std::int64_t dmax) {
  return L * B * B + dmax * B + L * (B + kLanes<T>) +
         static_cast<std::int64_t>(sizeof(Scratch<T>) / sizeof(T)) + 2 * kLanes<T>;
}

// Block pair k of round r in the circle method (a round-robin tournament of P = nb rounded up
// to even "players"): over the P − 1 rounds every pair I < J of blocks meets exactly once and
// no block plays twice in one round.  Returns false for a pair with the dummy block nb.
inline bool round_pair(std::int64_t nb, std::int64_t r, std::int64_t k, std::int64_t& I,
                       std::int64_t& J) {
  const std::int64_t P = nb + (nb & 1), M = P - 1;
  std::int64_t a, b;
  if (k == 0) {
    a = r;
    b = M;
  } else {
    a = (r + k) % M;
    b = (r - k + M) % M;
  }
  if (a == nb || b == nb) return false;
  I = std::min(a, b);
  J = std::max(a, b);
  return true;
}

// The whole sweep in one call, with this file's GEMM micro-kernel, over tiles I ≤ J of B rows.
//
// Schedule (deterministic): first all diagonal tiles, then the rounds of round_pair.  Within a
// round no two tiles share a row block, so threads write their tiles' contributions — C·c
// into the output gradient, row sums, and the block sums of the lower block — straight into
// shared arrays without atomics or private copies, and every location receives its
// contributions in round order whatever the thread count.  Values and gradients are therefore
// bitwise identical across calls and across thread counts.  c[l] is the centred copy
// (N × ldc[l], columns d_l … ldc[l]−1 zero); gscale multiplies the finished gradient (the
// power of two undoing the caller's rescaling of c).  `threads` is the most threads to use;
// the team OpenMP actually grants may be smaller.
template <typename T>
void sweep_direct(const Context<T>& cx, const T* const* c, const std::int64_t* ldc,
                  const std::int64_t* dims, std::int64_t B, bool need_grad, T* const* grad,
                  const std::int64_t* ldgrad, const double* gscale, double* sums, int threads) {
  const std::int64_t N = cx.N;
  const int L = cx.layers;
  const std::int64_t nb = (N + B - 1) / B;
  const std::int64_t P = nb + (nb & 1), rounds = P - 1;
  std::int64_t dsum = 0, dmax = 0;
  for (int l = 0; l < L; ++l) {
    dsum += dims[l];
    dmax = std::max(dmax, ldc[l]);
  }
  // Threads pay off once the sweep is a few hundred microseconds of work and a round has at
  // least two tiles.
  const bool parallel = threads > 1 && nb > 1 && N * N * dsum > (std::int64_t(1) << 19);
  const int nt = parallel ? static_cast<int>(std::min<std::int64_t>(threads, nb)) : 1;
  const std::int64_t per = sweep_scratch_per_thread<T>(L, B, dmax);
  std::unique_ptr<T[]> scratch(new T[static_cast<std::size_t>(per * nt)]);
  std::vector<double> rows(need_grad ? static_cast<std::size_t>(L * N) : 0, 0.0);
  std::vector<double> block_sums(static_cast<std::size_t>(3 * nb), 0.0);
  if (need_grad)
    for (int l = 0; l < L; ++l)
      for (std::int64_t i = 0; i < N; ++i)
        std::fill(grad[l] + i * ldgrad[l], grad[l] + i * ldgrad[l] + dims[l], T(0));
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* mine = scratch.get() + per * thread_index();
    T* G[kMaxLayers] = {};
    T* colsum[kMaxLayers] = {};
    double* rowsum[kMaxLayers] = {};
    T* bt = mine + L * B * B;
    for (int l = 0; l < L; ++l) {
      G[l] = mine + l * B * B;
      colsum[l] = bt + dmax * B + l * (B + kLanes<T>);
      rowsum[l] = need_grad ? rows.data() + l * N : nullptr;
    }
    // Scratch<T> holds plain arrays of T: any suitably aligned T storage will do.
    Scratch<T>& sc = *reinterpret_cast<Scratch<T>*>(colsum[0] + L * (B + kLanes<T>));

    auto tile = [&](std::int64_t I, std::int64_t J) {
      const std::int64_t i0 = I * B, j0 = J * B;
      const std::int64_t i1 = std::min(i0 + B, N), j1 = std::min(j0 + B, N);
      const bool diag = I == J;
      for (int l = 0; l < L; ++l) {
        pack_transposed<T>(c[l], ldc[l], dims[l], j0, j1, B, bt);
        // A diagonal tile is c_I c_Iᵀ: symmetric, only its upper micro-blocks are computed.
        gemm<T, false>(i1 - i0, dims[l], diag ? i1 - i0 : B, c[l] + i0 * ldc[l], ldc[l], 1, bt,
                       B, G[l], B, diag);
      }
      if (need_grad)
        for (int l = 0; l < L; ++l) std::fill(colsum[l], colsum[l] + B + kLanes<T>, T(0));
      epilogue_rows_any<T>(cx, G, B, i0, i0, i1, j0, j1, diag ? j1 : j0, need_grad, rowsum,
                           colsum, &block_sums[3 * I], sc);
      if (!need_grad) return;
      for (int l = 0; l < L; ++l) {
        const std::int64_t ld = ldc[l], d = dims[l];
        gemm<T, true>(i1 - i0, j1 - j0, d, G[l], B, 1, c[l] + j0 * ld, ld,
                      grad[l] + i0 * ldgrad[l], ldgrad[l]);
        if (diag) continue;
        gemm<T, true>(j1 - j0, i1 - i0, d, G[l], 1, B, c[l] + i0 * ld, ld,
                      grad[l] + j0 * ldgrad[l], ldgrad[l]);
        for (std::int64_t j = j0; j < j1; ++j) rowsum[l][j] += colsum[l][j - j0];
      }
    };

#pragma omp for schedule(dynamic, 1)
    for (std::int64_t I = 0; I < nb; ++I) tile(I, I);
    for (std::int64_t r = 0; r < rounds; ++r) {
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t k = 0; k < P / 2; ++k) {
        std::int64_t I, J;
        if (round_pair(nb, r, k, I, J)) tile(I, J);
      }
    }
    if (need_grad) {
      // ∂L/∂z_i = gscale · 4 (rowsum_i · c_i − (C c)_i), in place, rows shared out statically.
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < N; ++i) {
        for (int l = 0; l < L; ++l) {
          const std::int64_t d = dims[l];
          T* gi = grad[l] + i * ldgrad[l];
          const T r = static_cast<T>(rows[l * N + i]);
          const T f = static_cast<T>(4.0 * gscale[l]);
          const T* ci = c[l] + i * ldc[l];
#pragma omp simd
          for (std::int64_t k = 0; k < d; ++k) gi[k] = f * (r * ci[k] - gi[k]);
        }
      }
    }
  }
  for (std::int64_t I = 0; I < nb; ++I)
    for (int k = 0; k < 3; ++k) sums[k] += block_sums[3 * I + k];
}

// F[j, i] = F[i, j] for i in [i0, i1), j in [j0, j1) (row stride ldf; the two ranges do not
// overlap): whole W×W blocks transposed in registers, the ragged edge one entry at a time.
template <typename T>
void mirror_tile(T* F, std::int64_t ldf, std::int64_t i0, std::int64_t i1, std::int64_t j0,
                 std::int64_t j1) {
  typedef vec_t<T> V;
  constexpr int W = kLanes<T>;
  for (std::int64_t ib = i0; ib < i1; ib += W)
    for (std::int64_t jb = j0; jb < j1; jb += W) {
      if (ib + W <= i1 && jb + W <= j1) {
        V r[W];
#pragma GCC unroll 16
        for (int q = 0; q < W; ++q) r[q] = vload(F + (ib + q) * ldf + jb);
        transpose_block<T>(r);
#pragma GCC unroll 16
        for (int q = 0; q < W; ++q) vstore(F + (jb + q) * ldf + ib, r[q]);
        continue;
      }
      for (std::int64_t i = ib; i < std::min(ib + W, i1); ++i)
        for (std::int64_t j = jb; j < std::min(jb + W, j1); ++j) F[j * ldf + i] = F[i * ldf + j];
    }
}

// Small batches (N ≤ kSmallRows, chosen in mmd.cpp): the sweep in two phases over the whole
// C^l (ldf × ldf per layer, ldf = N rounded up to B), so that two threads share even a batch
// of two tiles evenly — sweep_direct's schedule gives the off-diagonal tile of a 2-tile batch,
// two thirds of its work, to one thread.
//   1. Every tile I ≤ J, off-diagonal ones first (twice a diagonal tile's work), dynamic
//      schedule: Gram product, epilogue (block sums into the tile's own slot, C^l_IJ in
//      place), then the mirror C^l_JI = C^l_IJᵀ.
//   2. Rows shared out evenly, in groups of DK_MR: one GEMM with K = N per group gives
//      (C^l c_l)_i, then rowsum_i = Σ_j C^l_ij (float64, j in order) and
//      ∂L/∂z_i = gscale · 4 (rowsum_i c_i − (C^l c_l)_i).
// Every sum is formed in an order fixed by tile and row indices: bitwise identical results
// across calls and thread counts (not bitwise equal to sweep_direct's, which adds row sums tile
// by tile).  Scratch: L·ldf² elements for C plus, per thread, d_max·B packed columns and the
// bank values of one chunk.
template <typename T>
void sweep_small(const Context<T>& cx, const T* const* c, const std::int64_t* ldc,
                 const std::int64_t* dims, std::int64_t B, bool need_grad, T* const* grad,
                 const std::int64_t* ldgrad, const double* gscale, double* sums, int threads) {
  const std::int64_t N = cx.N;
  const int L = cx.layers;
  const std::int64_t nb = (N + B - 1) / B, ldf = nb * B, ntiles = nb * (nb + 1) / 2;
  const std::int64_t groups = (N + DK_MR - 1) / DK_MR;
  std::int64_t dsum = 0, dmax = 0;
  for (int l = 0; l < L; ++l) {
    dsum += dims[l];
    dmax = std::max(dmax, ldc[l]);
  }
  const bool parallel = threads > 1 && N * N * dsum > (std::int64_t(1) << 19);
  const int nt = parallel ? static_cast<int>(std::min<std::int64_t>(threads, groups)) : 1;
  const std::int64_t per =
      dmax * B + static_cast<std::int64_t>(sizeof(Scratch<T>) / sizeof(T)) + 2 * kLanes<T>;
  std::unique_ptr<T[]> scratch(new T[static_cast<std::size_t>(per * nt)]);
  std::unique_ptr<T[]> full(new T[static_cast<std::size_t>(L * ldf * ldf)]);
  std::vector<double> tile_sums(static_cast<std::size_t>(3 * ntiles), 0.0);
  std::vector<std::int64_t> tile_i, tile_j;
  for (std::int64_t I = 0; I < nb; ++I)
    for (std::int64_t J = I + 1; J < nb; ++J) {
      tile_i.push_back(I);
      tile_j.push_back(J);
    }
  for (std::int64_t I = 0; I < nb; ++I) {
    tile_i.push_back(I);
    tile_j.push_back(I);
  }
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* bt = scratch.get() + per * thread_index();
    Scratch<T>& sc = *reinterpret_cast<Scratch<T>*>(bt + dmax * B);
    T* G[kMaxLayers] = {};
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t t = 0; t < ntiles; ++t) {
      const std::int64_t i0 = tile_i[t] * B, j0 = tile_j[t] * B;
      const std::int64_t i1 = std::min(i0 + B, N), j1 = std::min(j0 + B, N);
      const bool diag = i0 == j0;
      for (int l = 0; l < L; ++l) {
        G[l] = full.get() + l * ldf * ldf + i0 * ldf + j0;
        pack_transposed<T>(c[l], ldc[l], dims[l], j0, j1, B, bt);
        gemm<T, false>(i1 - i0, dims[l], diag ? i1 - i0 : B, c[l] + i0 * ldc[l], ldc[l], 1, bt,
                       B, G[l], ldf, diag);
      }
      epilogue_rows_any<T>(cx, G, ldf, i0, i0, i1, j0, j1, diag ? j1 : j0, need_grad, nullptr,
                           nullptr, &tile_sums[3 * t], sc);
      if (!need_grad || diag) continue;
      for (int l = 0; l < L; ++l) mirror_tile<T>(full.get() + l * ldf * ldf, ldf, i0, i1, j0, j1);
    }
    if (need_grad) {
      // Phase 2: an even share of the rows for each thread of the team actually granted, in
      // groups of DK_MR (a row's result does not depend on its group); the loop above ends
      // with the barrier that makes every C^l complete.
      const std::int64_t team = team_size(), me = thread_index();
      const std::int64_t row_end = N * (me + 1) / team;
      for (std::int64_t r0 = N * me / team; r0 < row_end; r0 += DK_MR) {
        const std::int64_t r1 = std::min(row_end, r0 + DK_MR);
        for (int l = 0; l < L; ++l) {
          const T* F = full.get() + l * ldf * ldf;
          const std::int64_t d = dims[l];
          gemm<T, false>(r1 - r0, N, d, F + r0 * ldf, ldf, 1, c[l], ldc[l],
                         grad[l] + r0 * ldgrad[l], ldgrad[l]);
          const T f = static_cast<T>(4.0 * gscale[l]);
          for (std::int64_t i = r0; i < r1; ++i) {
            const T* Fi = F + i * ldf;
            double rs = 0.0;
#pragma omp simd reduction(+ : rs)
            for (std::int64_t j = 0; j < N; ++j) rs += static_cast<double>(Fi[j]);
            const T r = static_cast<T>(rs);
            const T* ci = c[l] + i * ldc[l];
            T* gi = grad[l] + i * ldgrad[l];
#pragma omp simd
            for (std::int64_t k = 0; k < d; ++k) gi[k] = f * (r * ci[k] - gi[k]);
          }
        }
      }
    }
  }
  for (std::int64_t t = 0; t < ntiles; ++t)
    for (int k = 0; k < 3; ++k) sums[k] += tile_sums[3 * t + k];
}

#undef DK_MR
