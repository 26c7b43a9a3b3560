// Portable SIMD layer of the CPU core, written with GCC/Clang vector extensions.
//
// This header is included several times by csrc/mmd.cpp, once per instruction set, inside a
// namespace and under `#pragma GCC target(...)`: DK_VBYTES (16, 32 or 64) sets the native
// vector width of that copy.  There is deliberately no include guard; the standard headers it
// relies on (<cstdint>, <cstring>) are included by the translation unit beforehand.

#define DK_INLINE inline __attribute__((always_inline))

template <typename T> struct VecOf;
template <> struct VecOf<float> {
  typedef float type __attribute__((vector_size(DK_VBYTES)));
  typedef std::int32_t itype __attribute__((vector_size(DK_VBYTES)));
};
template <> struct VecOf<double> {
  typedef double type __attribute__((vector_size(DK_VBYTES)));
  typedef std::int64_t itype __attribute__((vector_size(DK_VBYTES)));
};
template <typename T> using vec_t = typename VecOf<T>::type;
template <typename T> using ivec_t = typename VecOf<T>::itype;
template <typename T> constexpr int kLanes = DK_VBYTES / static_cast<int>(sizeof(T));

template <typename T> DK_INLINE vec_t<T> vsplat(T x) { return vec_t<T>{} + x; }

template <typename T> DK_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T> DK_INLINE void vstore(T* p, vec_t<T> v) { std::memcpy(p, &v, sizeof v); }

// First `count` lanes from memory, zeros elsewhere (count < kLanes).
template <typename T> DK_INLINE vec_t<T> vload_part(const T* p, int count) {
  vec_t<T> v{};
  for (int k = 0; k < count; ++k) v[k] = p[k];
  return v;
}

template <typename T> DK_INLINE void vstore_part(T* p, vec_t<T> v, int count) {
  for (int k = 0; k < count; ++k) p[k] = v[k];
}

template <typename T> DK_INLINE double hsum(vec_t<T> v) {
  double s = 0.0;
  for (int k = 0; k < kLanes<T>; ++k) s += static_cast<double>(v[k]);
  return s;
}

// Stage b of transpose_block: swaps the off-diagonal b×b sub-blocks of every 2b×2b block
// with two-source shuffles (one permute instruction each on AVX-512), then the next stage.
// Everything is unrolled so that the block stays in registers and the masks are constants.
template <typename T, int b> DK_INLINE void transpose_stage(vec_t<T>* r) {
  constexpr int W = kLanes<T>;
  ivec_t<T> lo, hi;
#pragma GCC unroll 16
  for (int l = 0; l < W; ++l) {
    lo[l] = (l & b) ? W + l - b : l;
    hi[l] = (l & b) ? W + l : l + b;
  }
#pragma GCC unroll 16
  for (int i = 0; i < W; ++i) {
    if (i & b) continue;
    const vec_t<T> x = r[i], y = r[i + b];
    r[i] = __builtin_shuffle(x, y, lo);
    r[i + b] = __builtin_shuffle(x, y, hi);
  }
  if constexpr (b > 1) transpose_stage<T, b / 2>(r);
}

// Transposes the W×W block held in r[0 … W−1] in place: afterwards r[q] holds what was
// column q (log2(W) butterfly stages).
template <typename T> DK_INLINE void transpose_block(vec_t<T>* r) {
  transpose_stage<T, kLanes<T> / 2>(r);
}

// 1 in the first `count` lanes, 0 elsewhere.
template <typename T> DK_INLINE vec_t<T> lane_mask(int count) {
  vec_t<T> m{};
  for (int k = 0; k < kLanes<T>; ++k) m[k] = k < count ? T(1) : T(0);
  return m;
}

// max(x, 0) that keeps NaN a NaN (a NaN distance must not become distance 0, i.e. maximum
// similarity).
template <typename T> DK_INLINE vec_t<T> clamp_nonneg(vec_t<T> x) { return x < T(0) ? vec_t<T>{} : x; }

// exp(x) for x <= 0: Cody–Waite reduction x = n·ln2 + r, |r| <= ln2/2, a Taylor polynomial in r
// (degree 7 for float, 13 for double: truncation below one ulp) and 2^n built in the exponent
// bits.  Arguments below the smallest normal result give exactly 0.
DK_INLINE vec_t<float> vexp(vec_t<float> x) {
  typedef vec_t<float> V;
  typedef ivec_t<float> I;
  const V lo = vsplat(-87.0f);
  const I under = x < lo;
  x = x < lo ? lo : x;
  const V magic = vsplat(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const V t = x * 1.44269504088896341f + magic;
  const V nf = t - magic;
  V r = x - nf * 0.693359375f;  // ln2 split in a short high part (exact product) and the rest
  r = r + nf * 2.12194440e-4f;
  V p = vsplat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const I n = reinterpret_cast<I>(t) - reinterpret_cast<I>(magic);
  const V scale = reinterpret_cast<V>((n + 127) << 23);
  const V res = p * scale;
  return reinterpret_cast<V>(reinterpret_cast<I>(res) & ~under);
}

DK_INLINE vec_t<double> vexp(vec_t<double> x) {
  typedef vec_t<double> V;
  typedef ivec_t<double> I;
  const V lo = vsplat(-708.0);
  const I under = x < lo;
  x = x < lo ? lo : x;
  const V magic = vsplat(6755399441055744.0);  // 1.5·2^52
  const V t = x * 1.4426950408889634074 + magic;
  const V nf = t - magic;
  V r = x - nf * 6.93147180369123816490e-01;  // ln2 high part: 32 trailing zero bits
  r = r - nf * 1.90821492927058770002e-10;
  V p = vsplat(1.0 / 6227020800.0);
  const double inv_fact[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                             1.0 / 362880.0,    1.0 / 40320.0,    1.0 / 5040.0,
                             1.0 / 720.0,       1.0 / 120.0,      1.0 / 24.0,
                             1.0 / 6.0,         0.5,              1.0,
                             1.0};
  for (double c : inv_fact) p = p * r + c;
  const I n = reinterpret_cast<I>(t) - reinterpret_cast<I>(magic);
  const V scale = reinterpret_cast<V>((n + 1023) << 52);
  const V res = p * scale;
  return reinterpret_cast<V>(reinterpret_cast<I>(res) & ~under);
}
