// Fused MMD / JMMD tile kernels.  Included once per instruction set by csrc/mmd.cpp, inside a
// namespace and under `#pragma GCC target(...)` (no include guard on purpose); simd.h must be
// included first in the same namespace.  OpenMP regions here inherit the target of the copy.
//
// Notation (DESIGN §3): c = centred rows of one layer, D_ij = ‖c_i‖² + ‖c_j‖² − 2 c_i·c_j,
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

// O (M × ncols) (+)= A (M × K, strided) · B (K × ncols, row stride ldb); ncols a multiple of 2W.
template <typename T, bool ACC>
void gemm(std::int64_t M, std::int64_t K, std::int64_t ncols, const T* A, std::int64_t ars,
          std::int64_t aks, const T* B, std::int64_t ldb, T* O, std::int64_t ldo) {
  constexpr int NB = 2 * kLanes<T>;
  for (std::int64_t col = 0; col < ncols; col += NB) {
    std::int64_t r = 0;
    for (; r + DK_MR <= M; r += DK_MR)
      micro<T, DK_MR, ACC>(K, A + r * ars, ars, aks, B + col, ldb, O + r * ldo + col, ldo);
    const T* a = A + r * ars;
    T* o = O + r * ldo + col;
    switch (M - r) {
      case 7: micro<T, 7, ACC>(K, a, ars, aks, B + col, ldb, o, ldo); break;
      case 6: micro<T, 6, ACC>(K, a, ars, aks, B + col, ldb, o, ldo); break;
      case 5: micro<T, 5, ACC>(K, a, ars, aks, B + col, ldb, o, ldo); break;
      case 4: micro<T, 4, ACC>(K, a, ars, aks, B + col, ldb, o, ldo); break;
      case 3: micro<T, 3, ACC>(K, a, ars, aks, B + col, ldb, o, ldo); break;
      case 2: micro<T, 2, ACC>(K, a, ars, aks, B + col, ldb, o, ldo); break;
      case 1: micro<T, 1, ACC>(K, a, ars, aks, B + col, ldb, o, ldo); break;
      default: break;
    }
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
// need_grad, overwrites G_l with C^l and adds its row sums to rowsum[l][i] and (where the
// mirrored pair is not visited) its column sums to colsum[l][j − j0].  Columns below diag_end
// form the diagonal block: multiplicity 1, and C is halved there when diag_both (the caller
// applies both C·c_J and Cᵀ·c_I to the whole tile) or its column sums skipped otherwise.
template <typename T, int LT>
void epilogue_rows(const Context<T>& cx, T* const* G, std::int64_t ldg, std::int64_t i0,
                   std::int64_t r0, std::int64_t r1, std::int64_t j0, std::int64_t j1,
                   std::int64_t diag_end, bool diag_both, bool need_grad, double* const* rowsum,
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
      const T cscale = static_cast<T>(-cx.w[widx] * (diag && diag_both ? 0.5 : 1.0));
      const bool addcol = need_grad && (!diag || diag_both);
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
            const V D = vmax<T>(ni + nv - (gv + gv), V{});
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
    if (need_grad)
      for (int l = 0; l < L; ++l) rowsum[l][i] += hsum<T>(rowacc[l]);
  }
}

template <typename T>
void epilogue_rows_any(const Context<T>& cx, T* const* G, std::int64_t ldg, std::int64_t i0,
                       std::int64_t r0, std::int64_t r1, std::int64_t j0, std::int64_t j1,
                       std::int64_t diag_end, bool diag_both, bool need_grad,
                       double* const* rowsum, T* const* colsum, double* sums, Scratch<T>& sc) {
  switch (cx.layers) {
    case 1:
      epilogue_rows<T, 1>(cx, G, ldg, i0, r0, r1, j0, j1, diag_end, diag_both, need_grad, rowsum,
                          colsum, sums, sc);
      break;
    case 2:
      epilogue_rows<T, 2>(cx, G, ldg, i0, r0, r1, j0, j1, diag_end, diag_both, need_grad, rowsum,
                          colsum, sums, sc);
      break;
    default:
      epilogue_rows<T, 0>(cx, G, ldg, i0, r0, r1, j0, j1, diag_end, diag_both, need_grad, rowsum,
                          colsum, sums, sc);
  }
}

// Epilogue of one tile of the large-N path, whose Gram tiles come from the caller's BLAS and
// whose products C·c_J and Cᵀ·c_I the caller also does.  Rows are split over threads; each
// thread keeps its own column sums and block sums and merges them after the loop (no races).
template <typename T>
void tile_epilogue(const Context<T>& cx, T* const* G, std::int64_t ldg, std::int64_t i0,
                   std::int64_t i1, std::int64_t j0, std::int64_t j1, bool need_grad,
                   double* const* rowsum, double* sums) {
  const std::int64_t width = j1 - j0;
  const std::int64_t work = (i1 - i0) * width;
#pragma omp parallel if (work > 16384)
  {
    std::vector<T> colbuf(need_grad ? cx.layers * (width + kLanes<T>) : 0, T(0));
    T* colsum[kMaxLayers] = {};
    for (int l = 0; l < cx.layers && need_grad; ++l) colsum[l] = colbuf.data() + l * (width + kLanes<T>);
    double local[3] = {0.0, 0.0, 0.0};
    std::unique_ptr<Scratch<T>> sc(new Scratch<T>);
#pragma omp for schedule(static)
    for (std::int64_t i = i0; i < i1; ++i)
      epilogue_rows_any<T>(cx, G, ldg, i0, i, i + 1, j0, j1, i1, true, need_grad, rowsum, colsum,
                           local, *sc);
#pragma omp critical(dk_mmd_tile_merge)
    {
      for (int k = 0; k < 3; ++k) sums[k] += local[k];
      for (int l = 0; l < cx.layers && need_grad; ++l)
        for (std::int64_t j = 0; j < width; ++j) rowsum[l][j0 + j] += colsum[l][j];
    }
  }
}

// grad[i, :] = 4 (rowsum[i] · c[i, :] − acc[i, :]), written to grad (row stride ldg); acc may
// alias grad.
template <typename T>
void finish(std::int64_t N, std::int64_t d, const T* c, std::int64_t ldc, const double* rowsum,
            const T* acc, std::int64_t lda, T* grad, std::int64_t ldgr) {
#pragma omp parallel for schedule(static) if (N * d > 65536)
  for (std::int64_t i = 0; i < N; ++i) {
    const T rs = static_cast<T>(rowsum[i]);
    const T* ci = c + i * ldc;
    const T* ai = acc + i * lda;
    T* gi = grad + i * ldgr;
    for (std::int64_t k = 0; k < d; ++k) gi[k] = T(4) * (rs * ci[k] - ai[k]);
  }
}

// The whole sweep for small N in one call: tiles of kSmallTile rows, I ≤ J, distributed over
// threads; each thread owns its accumulators for C·c and the row sums (reduced at the end).
// c[l] is the centred copy (N × ldc[l], zero-padded columns), ct[l] its transpose
// (d_l × ldt, zero-padded to a whole number of tiles).
template <typename T>
void sweep_small(const Context<T>& cx, const T* const* c, const std::int64_t* ldc,
                 const T* const* ct, std::int64_t ldt, const std::int64_t* dims, bool need_grad,
                 T* const* grad, const std::int64_t* ldgrad, double* sums) {
  const std::int64_t N = cx.N;
  const int L = cx.layers;
  const std::int64_t B = kSmallTile;
  const std::int64_t nb = (N + B - 1) / B;
  std::vector<std::pair<std::int64_t, std::int64_t>> tiles;
  for (std::int64_t I = 0; I < nb; ++I)
    for (std::int64_t J = I; J < nb; ++J) tiles.emplace_back(I, J);
  std::int64_t dsum = 0;
  for (int l = 0; l < L; ++l) dsum += dims[l];
  // Threads pay off once the sweep is a few hundred microseconds of work.
  const bool parallel = tiles.size() > 1 && N * N * dsum > (std::int64_t(1) << 22);
  const int nt = parallel ? omp_get_max_threads() : 1;
  std::vector<std::vector<T>> accs(static_cast<std::size_t>(nt) * L);
  std::vector<std::vector<double>> rows(static_cast<std::size_t>(nt) * L);
  std::vector<double> tsums(static_cast<std::size_t>(nt) * 3, 0.0);
#pragma omp parallel num_threads(nt) if (parallel)
  {
    const int t = omp_get_thread_num();
    std::vector<T> gbuf(static_cast<std::size_t>(L) * B * B);
    std::vector<T> colbuf(static_cast<std::size_t>(L) * (B + kLanes<T>));
    std::unique_ptr<Scratch<T>> sc(new Scratch<T>);
    T* G[kMaxLayers] = {};
    T* colsum[kMaxLayers] = {};
    double* rowsum[kMaxLayers] = {};
    for (int l = 0; l < L; ++l) {
      G[l] = gbuf.data() + l * B * B;
      colsum[l] = colbuf.data() + l * (B + kLanes<T>);
      if (need_grad) {
        accs[t * L + l].assign(static_cast<std::size_t>(N * ldc[l]), T(0));
        rows[t * L + l].assign(static_cast<std::size_t>(N), 0.0);
        rowsum[l] = rows[t * L + l].data();
      }
    }
#pragma omp for schedule(dynamic, 1)
    for (std::size_t tix = 0; tix < tiles.size(); ++tix) {
      const std::int64_t i0 = tiles[tix].first * B, j0 = tiles[tix].second * B;
      const std::int64_t i1 = std::min(i0 + B, N), j1 = std::min(j0 + B, N);
      const bool diag = i0 == j0;
      const std::int64_t ncols = (j1 - j0 + 2 * kLanes<T> - 1) / (2 * kLanes<T>) * (2 * kLanes<T>);
      for (int l = 0; l < L; ++l)
        gemm<T, false>(i1 - i0, dims[l], ncols, c[l] + i0 * ldc[l], ldc[l], 1, ct[l] + j0, ldt,
                       G[l], B);
      if (need_grad)
        for (int l = 0; l < L; ++l) std::fill(colsum[l], colsum[l] + B + kLanes<T>, T(0));
      epilogue_rows_any<T>(cx, G, B, i0, i0, i1, j0, j1, diag ? j1 : j0, false, need_grad, rowsum,
                           colsum, &tsums[3 * t], *sc);
      if (!need_grad) continue;
      for (int l = 0; l < L; ++l) {
        T* acc = accs[t * L + l].data();
        const std::int64_t ld = ldc[l];
        gemm<T, true>(i1 - i0, j1 - j0, ld, G[l], B, 1, c[l] + j0 * ld, ld, acc + i0 * ld, ld);
        if (diag) continue;
        gemm<T, true>(j1 - j0, i1 - i0, ld, G[l], 1, B, c[l] + i0 * ld, ld, acc + j0 * ld, ld);
        for (std::int64_t j = j0; j < j1; ++j) rowsum[l][j] += colsum[l][j - j0];
      }
    }
  }
  for (int t = 0; t < nt; ++t)
    for (int k = 0; k < 3; ++k) sums[k] += tsums[3 * t + k];
  if (!need_grad) return;
  for (int l = 0; l < L; ++l) {
    T* acc = accs[l].data();
    double* rs = rows[l].data();
    for (int t = 1; t < nt; ++t) {
      const T* other = accs[t * L + l].data();
      const double* ors = rows[t * L + l].data();
      for (std::int64_t k = 0; k < N * ldc[l]; ++k) acc[k] += other[k];
      for (std::int64_t i = 0; i < N; ++i) rs[i] += ors[i];
    }
    finish<T>(N, dims[l], c[l], ldc[l], rs, acc, ldc[l], grad[l], ldgrad[l]);
  }
}
