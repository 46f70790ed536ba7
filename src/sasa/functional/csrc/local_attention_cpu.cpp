// Fused CPU kernel for sasa.functional.local_attention2d (SPEC §1), forward and backward.
//
// Public layout: q, k (B, N, H, W, D), v (B, N, H, W, Dv), rel (Nr, K, K, D) with Nr in {1, N}
// (Nr == 1: shared by all heads), all contiguous. Each task (an image b, n and a band of
// query rows) first copies the rows it needs into small channel-major buffers, (rows, D, W)
// (8x8 SIMD transposes for float), so that the SIMD lanes run along W: lane l of a vector is
// query column j0 + l, and the key/value of offset dc for those lanes is the contiguous
// vector starting at column j0 + dc. Every operation is then vertical (no horizontal sums,
// no gathers):
//   logit[t][lanes] = bias[dc][lanes] + sum_d q[d][lanes] * (k[a][d][lanes + dc] + rel[t][d])
// In the buffers keys/values are zero-padded by r columns on both sides and W is rounded up
// to a whole number of vectors (Wq); `bias` is -1e30 for the (query, offset) pairs whose key
// column lies outside the image, so those neighbours get probability exactly 0 (masked
// softmax; out-of-image rows are simply not visited). Results are transposed back into the
// public layout by the same task, so nothing but out and lse is allocated.
//
// Forward, per query row and vector of columns: the k*k logit vectors live in a small
// buffer, softmax (vectorised exp), weighted sum of values in registers. Only the per-pixel
// logsumexp is stored for the backward; nothing of size H*W*k^2*D is materialised.
//
// Backward, per query row, pass A (column vectors outer): recompute p = exp(logit - lse),
// dp = dout.v, ds = p (dp - delta) with delta = dout.out, dq += ds (k + r) in registers;
// pass B (offsets outer, so the shifted read-modify-writes never hit a store still in
// flight): dk[a][lanes+dc] += ds q, dv[a][lanes+dc] += p dout, drel[t] += ds q.
// dk/dv of a key row receive contributions from query rows up to r away, so the rows of one (b, n) image are cut into bands of height >= 2r and
// processed in two phases (even bands, then odd bands): within a phase no two tasks write
// the same key row. drel is accumulated per task into its own slot and summed in Python:
// no atomics, and results do not depend on the number of threads.
//
// Parallel over (batch x heads x row bands) with OpenMP (dynamic schedule, torch's thread
// count); autograd saves nothing beyond q, k, v, rel, out and the logsumexp. The vector
// code uses GCC vector extensions and is compiled three times: baseline ISA, target("avx2,fma")
// (8 float lanes) and target("avx512...") (16 float lanes, W rounded up to 16), selected at run
// time with __builtin_cpu_supports: no -march=native, so a shared build cache works on any
// x86-64 machine. The layout-native entry (forward_packed/backward_packed) reads q, k, v from
// the layer's (B, 3ND, H, W) projection, already channel-major, so its rows are plain copies.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#define SASA_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#define SASA_HAVE_AVX2_CLONE 1
#define SASA_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define SASA_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
#define SASA_HAVE_AVX2_CLONE 0
#endif

namespace {

typedef float f8 __attribute__((vector_size(32)));
typedef double d4 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef float f16 __attribute__((vector_size(64)));
typedef int32_t i16 __attribute__((vector_size(64)));

// Vector type of the kernels: WIDE = 1 selects 16 float lanes (the AVX-512 copy); double
// always uses 4 lanes.
template <typename T, int WIDE>
struct VecOf;
template <>
struct VecOf<float, 0> {
  using type = f8;
  static constexpr int lanes = 8;
};
template <>
struct VecOf<float, 1> {
  using type = f16;
  static constexpr int lanes = 16;
};
template <int WIDE>
struct VecOf<double, WIDE> {
  using type = d4;
  static constexpr int lanes = 4;
};

template <typename V, typename T>
SASA_INLINE V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
SASA_INLINE void vstore(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename V, typename T>
SASA_INLINE V vsplat(T s) {
  return V{} + s;
}

// exp of 8 or 16 floats: Cephes polynomial (~1 ulp), exactly 0 below -87.3.
template <typename FV, typename IV>
SASA_INLINE FV vexp_float(FV x) {
  const FV lo = vsplat<FV>(-87.0f), hi = vsplat<FV>(88.0f);
  const auto underflow = x < vsplat<FV>(-87.3f);
  FV xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const FV magic = vsplat<FV>(12582912.0f);  // 1.5 * 2^23: round to nearest
  const FV n = (xc * 1.44269504088896341f + magic) - magic;
  FV r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  FV p = vsplat<FV>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const IV bits = (__builtin_convertvector(n, IV) + 127) << 23;
  const FV result = p * (FV)bits;  // same-size vector cast: bit reinterpretation
  return underflow ? vsplat<FV>(0.0f) : result;
}
SASA_INLINE f8 vexp(f8 x) { return vexp_float<f8, i8>(x); }
#if defined(__x86_64__) || defined(__i386__)
// exp of 16 floats with AVX-512 (only the AVX-512 kernels use 16 lanes): exp(x) = 2^n 2^f with
// n = round(x log2 e) by vrndscaleps, f = x log2 e - n with the product's rounding error recovered by
// FMAs (log2 e split in two floats), a degree-7 Taylor polynomial of 2^f on |f| <= 1/2 (~1 ulp) and
// vscalefps for 2^n: 15 operations where the portable version needs 21. Exactly 0 below -87.3.
// Not always_inline: the generic kernel bodies are default-target functions; GCC inlines this once they
// are inlined into the AVX-512 entry points (checked: no call remains in backward_band_avx512).
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))) inline f16 vexp(f16 x) {
  const __m512 v = _mm512_min_ps(_mm512_max_ps((__m512)x, _mm512_set1_ps(-87.5f)), _mm512_set1_ps(88.0f));
  const __mmask16 keep = _mm512_cmp_ps_mask((__m512)x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
  const __m512 hi = _mm512_set1_ps(1.44269502162933349609375f), lo = _mm512_set1_ps(1.925963033500011079e-8f);
  const __m512 t = _mm512_mul_ps(v, hi);
  const __m512 err = _mm512_fmadd_ps(v, lo, _mm512_fmsub_ps(v, hi, t));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_add_ps(_mm512_sub_ps(t, n), err);
  // 2^f = sum_k (f ln 2)^k / k!
  __m512 p = _mm512_set1_ps(1.5252733804059841e-05f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381610e-04f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return (f16)_mm512_maskz_scalef_ps(keep, p, n);
}
#else
SASA_INLINE f16 vexp(f16 x) { return vexp_float<f16, i16>(x); }
#endif
SASA_INLINE d4 vexp(d4 x) {
  d4 y;
  for (int l = 0; l < 4; ++l) y[l] = std::exp(x[l]);
  return y;
}
template <typename V>
SASA_INLINE V vmax(V a, V b) {
  return a > b ? a : b;
}

// ct_in / ct_out: 0 for the public layout (B, N, H, W, C); otherwise the channel count of the
// packed layout (B, ct, H, W) that q, k, v (ct_in = 3 N D, head n's channels at n*C of each
// third) and out / grad_out (ct_out = N Dv) live in. scale multiplies q on load (and dq on store).
struct Geometry {
  int64_t B, N, H, W, D, Dv, K, Nr, Wq, Wk;
  int64_t ct_in = 0, ct_out = 0;
  double scale = 1.0;
  bool wide = false;  // float kernels with 16 lanes (AVX-512); Wq is then a multiple of 16
};

template <int C>
SASA_INLINE int64_t dim_or(int64_t runtime) {
  return C > 0 ? C : runtime;
}

// Heap array of n vectors, 64-byte aligned (not relying on std::allocator honouring the
// over-alignment of vector types).
template <typename V>
struct VecBuf {
  std::vector<char> raw;
  V* ptr;
  explicit VecBuf(int64_t n) : raw(static_cast<size_t>(n) * sizeof(V) + 64) {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(raw.data());
    ptr = reinterpret_cast<V*>((addr + 63) & ~uintptr_t(63));
  }
  V& operator[](int64_t i) { return ptr[i]; }
};

// Per-task array of vectors: a local (register-friendly) array when the size is a
// compile-time constant, a heap buffer otherwise.
template <typename V, int C>
struct Regs {
  V data[C];
  explicit Regs(int64_t) {}
  V& operator[](int64_t i) { return data[i]; }
};
template <typename V>
struct Regs<V, 0> : VecBuf<V> {
  using VecBuf<V>::VecBuf;
};

// Logit vectors of query row i, lanes [j0, j0 + lanes), for in-image rows a0..a1 -> L[0..).
// kimg holds the key rows from `lo` on, channel-major and padded: row a at (a - lo) * D * Wk.
template <typename T, int DC, typename V>
SASA_INLINE void logits_for_lanes(const Geometry& g, Regs<V, DC>& qv, const T* kimg,
                                  int64_t lo, const T* rhead, const T* bias, int64_t i, int64_t a0, int64_t a1,
                                  int64_t j0, V* L) {
  const int64_t D = dim_or<DC>(g.D), K = g.K, r = K / 2, Wk = g.Wk, Wq = g.Wq;
  int64_t t = 0;
  for (int64_t a = a0; a <= a1; ++a) {
    const T* krow = kimg + (a - lo) * D * Wk + j0;
    const T* rrow = rhead + (a - i + r) * K * D;
    for (int64_t dc = 0; dc < K; ++dc, ++t) {
      const T* kb = krow + dc;
      const T* rr = rrow + dc * D;
      V s = vload<V>(bias + dc * Wq + j0);
      for (int64_t d = 0; d < D; ++d) s += qv[d] * (vload<V>(kb + d * Wk) + rr[d]);
      L[t] = s;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Layout changes between the public (W, C) pixel-major rows and the kernels' (C, ld)
// channel-major rows, done per task on cache-resident band buffers. For float and C a
// multiple of 8 they run as 8x8 register transposes.
SASA_INLINE void transpose8(f8& r0, f8& r1, f8& r2, f8& r3, f8& r4, f8& r5, f8& r6, f8& r7) {
  const i8 lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const i8 s44 = {0, 1, 8, 9, 4, 5, 12, 13}, sEE = {2, 3, 10, 11, 6, 7, 14, 15};
  const i8 p20 = {0, 1, 2, 3, 8, 9, 10, 11}, p31 = {4, 5, 6, 7, 12, 13, 14, 15};
  const f8 t0 = __builtin_shuffle(r0, r1, lo), t1 = __builtin_shuffle(r0, r1, hi);
  const f8 t2 = __builtin_shuffle(r2, r3, lo), t3 = __builtin_shuffle(r2, r3, hi);
  const f8 t4 = __builtin_shuffle(r4, r5, lo), t5 = __builtin_shuffle(r4, r5, hi);
  const f8 t6 = __builtin_shuffle(r6, r7, lo), t7 = __builtin_shuffle(r6, r7, hi);
  const f8 s0 = __builtin_shuffle(t0, t2, s44), s1 = __builtin_shuffle(t0, t2, sEE);
  const f8 s2 = __builtin_shuffle(t1, t3, s44), s3 = __builtin_shuffle(t1, t3, sEE);
  const f8 s4 = __builtin_shuffle(t4, t6, s44), s5 = __builtin_shuffle(t4, t6, sEE);
  const f8 s6 = __builtin_shuffle(t5, t7, s44), s7 = __builtin_shuffle(t5, t7, sEE);
  r0 = __builtin_shuffle(s0, s4, p20);
  r1 = __builtin_shuffle(s1, s5, p20);
  r2 = __builtin_shuffle(s2, s6, p20);
  r3 = __builtin_shuffle(s3, s7, p20);
  r4 = __builtin_shuffle(s0, s4, p31);
  r5 = __builtin_shuffle(s1, s5, p31);
  r6 = __builtin_shuffle(s2, s6, p31);
  r7 = __builtin_shuffle(s3, s7, p31);
}

// dst[ch * ld + c] = src[c * C + ch] for c < W, ch < C (one image row).
template <typename T>
SASA_INLINE void row_to_lanes(const T* __restrict src, int64_t W, int64_t C, T* __restrict dst, int64_t ld) {
  int64_t c0 = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (C % 8 == 0) {
      for (; c0 + 8 <= W; c0 += 8) {
        for (int64_t cb = 0; cb < C; cb += 8) {
          const float* s = src + c0 * C + cb;
          f8 r0 = vload<f8>(s), r1 = vload<f8>(s + C), r2 = vload<f8>(s + 2 * C), r3 = vload<f8>(s + 3 * C);
          f8 r4 = vload<f8>(s + 4 * C), r5 = vload<f8>(s + 5 * C), r6 = vload<f8>(s + 6 * C),
             r7 = vload<f8>(s + 7 * C);
          transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
          float* d = dst + cb * ld + c0;
          vstore(d, r0);
          vstore(d + ld, r1);
          vstore(d + 2 * ld, r2);
          vstore(d + 3 * ld, r3);
          vstore(d + 4 * ld, r4);
          vstore(d + 5 * ld, r5);
          vstore(d + 6 * ld, r6);
          vstore(d + 7 * ld, r7);
        }
      }
    }
  }
  for (int64_t c = c0; c < W; ++c)
    for (int64_t ch = 0; ch < C; ++ch) dst[ch * ld + c] = src[c * C + ch];
}

// dst[c * C + ch] (+)= src[ch * ld + c] for c < W, ch < C (one image row).
template <typename T, bool ADD>
SASA_INLINE void lanes_to_row(const T* __restrict src, int64_t ld, int64_t W, int64_t C, T* __restrict dst) {
  int64_t c0 = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (C % 8 == 0) {
      for (; c0 + 8 <= W; c0 += 8) {
        for (int64_t cb = 0; cb < C; cb += 8) {
          const float* s = src + cb * ld + c0;
          f8 r0 = vload<f8>(s), r1 = vload<f8>(s + ld), r2 = vload<f8>(s + 2 * ld), r3 = vload<f8>(s + 3 * ld);
          f8 r4 = vload<f8>(s + 4 * ld), r5 = vload<f8>(s + 5 * ld), r6 = vload<f8>(s + 6 * ld),
             r7 = vload<f8>(s + 7 * ld);
          transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
          float* d = dst + c0 * C + cb;
          f8* rs[8] = {&r0, &r1, &r2, &r3, &r4, &r5, &r6, &r7};
          for (int x = 0; x < 8; ++x) {
            if (ADD) {
              vstore(d + x * C, vload<f8>(d + x * C) + *rs[x]);
            } else {
              vstore(d + x * C, *rs[x]);
            }
          }
        }
      }
    }
  }
  for (int64_t c = c0; c < W; ++c)
    for (int64_t ch = 0; ch < C; ++ch) {
      if (ADD) {
        dst[c * C + ch] += src[ch * ld + c];
      } else {
        dst[c * C + ch] = src[ch * ld + c];
      }
    }
}

// Channel ch of row a of image bn in the packed layout (B, ct, H, W): a contiguous run of W.
template <typename T>
SASA_INLINE T* packed_row(const Geometry& g, T* x, int64_t ct, int64_t C, int64_t bn, int64_t ch, int64_t a) {
  return x + (((bn / g.N) * ct + (bn % g.N) * C + ch) * g.H + a) * g.W;
}

// Rows [r0, r1) of image bn of x -> buf (r1 - r0, C, ld), column c at c + pad. x is in the
// public layout (B, N, H, W, C) when ct == 0 (transposed per row), else packed (B, ct, H, W)
// (already channel-major: plain copies). The buffer must be zero where nothing is written.
template <typename T>
SASA_INLINE void rows_to_lanes(const Geometry& g, const T* x, int64_t C, int64_t ct, int64_t bn, int64_t r0,
                               int64_t r1, T* buf, int64_t ld, int64_t pad) {
  if (ct == 0) {
    for (int64_t a = r0; a < r1; ++a)
      row_to_lanes<T>(x + ((bn * g.H + a) * g.W) * C, g.W, C, buf + (a - r0) * C * ld + pad, ld);
    return;
  }
  for (int64_t a = r0; a < r1; ++a)
    for (int64_t ch = 0; ch < C; ++ch)
      std::memcpy(buf + ((a - r0) * C + ch) * ld + pad, packed_row(g, x, ct, C, bn, ch, a), sizeof(T) * g.W);
}

template <typename T, bool ADD>
SASA_INLINE void lanes_to_rows(const Geometry& g, const T* buf, int64_t ld, int64_t pad, int64_t C, int64_t ct,
                               int64_t bn, int64_t r0, int64_t r1, T* x) {
  if (ct == 0) {
    for (int64_t a = r0; a < r1; ++a)
      lanes_to_row<T, ADD>(buf + (a - r0) * C * ld + pad, ld, g.W, C, x + ((bn * g.H + a) * g.W) * C);
    return;
  }
  for (int64_t a = r0; a < r1; ++a)
    for (int64_t ch = 0; ch < C; ++ch) {
      const T* __restrict src = buf + ((a - r0) * C + ch) * ld + pad;
      T* __restrict dst = packed_row(g, x, ct, C, bn, ch, a);
      if (ADD) {
        for (int64_t c = 0; c < g.W; ++c) dst[c] += src[c];
      } else {
        std::memcpy(dst, src, sizeof(T) * g.W);
      }
    }
}

template <typename T>
SASA_INLINE void scale_buffer(std::vector<T>& buf, double scale) {
  if (scale == 1.0) return;
  const T s = static_cast<T>(scale);
  for (auto& x : buf) x *= s;
}

// ---------------------------------------------------------------------------------------
// Forward for query rows [i0, i1) of image bn: q, k, v, out (B, N, H, W, C), lse (B, N, H, W).
template <typename T, int DC, int DVC, int WIDE>
SASA_INLINE void forward_band_impl(const Geometry& g, const T* q, const T* k, const T* v, const T* rel,
                                   const T* bias, T* out, T* lse, int64_t bn, int64_t i0, int64_t i1) {
  using V = typename VecOf<T, WIDE>::type;
  constexpr int VL = VecOf<T, WIDE>::lanes;
  const int64_t D = dim_or<DC>(g.D), Dv = dim_or<DVC>(g.Dv);
  const int64_t H = g.H, W = g.W, K = g.K, r = K / 2, Wq = g.Wq, Wk = g.Wk;
  const int64_t n = bn % g.N;
  const int64_t lo = std::max<int64_t>(0, i0 - r), hi = std::min<int64_t>(H, i1 + r);
  std::vector<T> qbuf(static_cast<size_t>((i1 - i0) * D * Wq)), kbuf(static_cast<size_t>((hi - lo) * D * Wk)),
      vbuf(static_cast<size_t>((hi - lo) * Dv * Wk)), obuf(static_cast<size_t>(Dv * Wq));
  rows_to_lanes<T>(g, q, D, g.ct_in, bn, i0, i1, qbuf.data(), Wq, 0);
  scale_buffer(qbuf, g.scale);
  rows_to_lanes<T>(g, k, D, g.ct_in, bn, lo, hi, kbuf.data(), Wk, r);
  rows_to_lanes<T>(g, v, Dv, g.ct_in, bn, lo, hi, vbuf.data(), Wk, r);
  const T* kimg = kbuf.data();
  const T* vimg = vbuf.data();
  VecBuf<V> Lbuf(K * K);
  V* L = Lbuf.ptr;
  Regs<V, DC> qv(D);
  Regs<V, DVC> acc(Dv);
  const T* rhead = rel + (g.Nr == 1 ? 0 : n) * K * K * D;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t a0 = std::max<int64_t>(0, i - r), a1 = std::min<int64_t>(H - 1, i + r);
    const int64_t cnt = (a1 - a0 + 1) * K;
    const T* qrow = qbuf.data() + (i - i0) * D * Wq;
    T* orow = obuf.data();
    T* lrow = lse ? lse + (bn * H + i) * W : nullptr;  // no lse: forward only
    for (int64_t j0 = 0; j0 < Wq; j0 += VL) {
      for (int64_t d = 0; d < D; ++d) qv[d] = vload<V>(qrow + d * Wq + j0);
      logits_for_lanes<T, DC, V>(g, qv, kimg, lo, rhead, bias, i, a0, a1, j0, L);
      V m = L[0];
      for (int64_t t = 1; t < cnt; ++t) m = vmax(m, L[t]);
      V sum = vsplat<V>(T(0));
      for (int64_t t = 0; t < cnt; ++t) {
        const V e = vexp(L[t] - m);
        L[t] = e;
        sum += e;
      }
      for (int64_t e = 0; e < Dv; ++e) acc[e] = vsplat<V>(T(0));
      int64_t t = 0;
      for (int64_t a = a0; a <= a1; ++a) {
        const T* vrow = vimg + (a - lo) * Dv * Wk + j0;
        for (int64_t dc = 0; dc < K; ++dc, ++t) {
          const V p = L[t];
          const T* vb = vrow + dc;
          for (int64_t e = 0; e < Dv; ++e) acc[e] += p * vload<V>(vb + e * Wk);
        }
      }
      const V inv = T(1) / sum;
      for (int64_t e = 0; e < Dv; ++e) vstore(orow + e * Wq + j0, acc[e] * inv);
      if (lrow)
        for (int l = 0; l < VL && j0 + l < W; ++l) lrow[j0 + l] = m[l] + std::log(sum[l]);
    }
    lanes_to_rows<T, false>(g, orow, Wq, 0, Dv, g.ct_out, bn, i, i + 1, out);
  }
}

// ---------------------------------------------------------------------------------------
// Backward for query rows [i0, i1) of image bn. Adds into dk/dv rows [i0 - r, i1 + r) and
// writes dq rows [i0, i1); drel_slot is this task's private (K, K, D) accumulator.
template <typename T, int DC, int DVC, int WIDE>
SASA_INLINE void backward_band_impl(const Geometry& g, const T* q, const T* k, const T* v, const T* rel,
                                    const T* bias, const T* out, const T* lse, const T* gout, T* dq, T* dk,
                                    T* dv, T* drel_slot, bool need_drel, int64_t bn, int64_t i0, int64_t i1) {
  using V = typename VecOf<T, WIDE>::type;
  constexpr int VL = VecOf<T, WIDE>::lanes;
  const int64_t D = dim_or<DC>(g.D), Dv = dim_or<DVC>(g.Dv);
  const int64_t H = g.H, W = g.W, K = g.K, r = K / 2, Wq = g.Wq, Wk = g.Wk, NV = Wq / VL;
  const int64_t n = bn % g.N;
  const int64_t lo = std::max<int64_t>(0, i0 - r), hi = std::min<int64_t>(H, i1 + r);
  const int64_t nq = i1 - i0, nk = hi - lo;
  std::vector<T> qbuf(static_cast<size_t>(nq * D * Wq)), gbuf(static_cast<size_t>(nq * Dv * Wq)),
      obuf(static_cast<size_t>(nq * Dv * Wq)), kbuf(static_cast<size_t>(nk * D * Wk)),
      vbuf(static_cast<size_t>(nk * Dv * Wk)), dqbuf(static_cast<size_t>(D * Wq)),
      dkbuf(static_cast<size_t>(nk * D * Wk)), dvbuf(static_cast<size_t>(nk * Dv * Wk)),
      lbuf(static_cast<size_t>(Wq));
  rows_to_lanes<T>(g, q, D, g.ct_in, bn, i0, i1, qbuf.data(), Wq, 0);
  scale_buffer(qbuf, g.scale);
  rows_to_lanes<T>(g, gout, Dv, g.ct_out, bn, i0, i1, gbuf.data(), Wq, 0);
  rows_to_lanes<T>(g, out, Dv, g.ct_out, bn, i0, i1, obuf.data(), Wq, 0);
  rows_to_lanes<T>(g, k, D, g.ct_in, bn, lo, hi, kbuf.data(), Wk, r);
  rows_to_lanes<T>(g, v, Dv, g.ct_in, bn, lo, hi, vbuf.data(), Wk, r);
  const T* kimg = kbuf.data();
  const T* vimg = vbuf.data();
  T* dkimg = dkbuf.data();
  T* dvimg = dvbuf.data();
  VecBuf<V> Pbuf(K * K * NV), DSbuf(K * K * NV), Lbuf(K * K);
  V* P = Pbuf.ptr;
  V* DS = DSbuf.ptr;
  V* L = Lbuf.ptr;
  Regs<V, DC> qv(D), dqacc(D);
  VecBuf<V> drbuf(need_drel ? K * K * D : 1);
  V* drv = drbuf.ptr;
  if (need_drel)
    for (int64_t x = 0; x < K * K * D; ++x) drv[x] = vsplat<V>(T(0));
  const T* rhead = rel + (g.Nr == 1 ? 0 : n) * K * K * D;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t a0 = std::max<int64_t>(0, i - r), a1 = std::min<int64_t>(H - 1, i + r);
    const T* qrow = qbuf.data() + (i - i0) * D * Wq;
    const T* grow = gbuf.data() + (i - i0) * Dv * Wq;
    const T* orow = obuf.data() + (i - i0) * Dv * Wq;
    T* lrow = lbuf.data();
    std::memcpy(lrow, lse + (bn * H + i) * W, sizeof(T) * W);  // padding lanes stay 0 (finite)
    T* dqrow = dqbuf.data();
    // Pass A (column vectors outer, offsets inner): p, ds = p (dout.v - delta), and dq in
    // registers; p and ds are kept in P/DS for pass B.
    for (int64_t jv = 0; jv < NV; ++jv) {
      const int64_t j0 = jv * VL;
      for (int64_t d = 0; d < D; ++d) qv[d] = vload<V>(qrow + d * Wq + j0);
      logits_for_lanes<T, DC, V>(g, qv, kimg, lo, rhead, bias, i, a0, a1, j0, L);
      const V l = vload<V>(lrow + j0);
      V delta = vsplat<V>(T(0));
      for (int64_t e = 0; e < Dv; ++e) delta += vload<V>(grow + e * Wq + j0) * vload<V>(orow + e * Wq + j0);
      for (int64_t d = 0; d < D; ++d) dqacc[d] = vsplat<V>(T(0));
      int64_t t = 0;
      for (int64_t a = a0; a <= a1; ++a) {
        const T* rrow = rhead + (a - i + r) * K * D;
        for (int64_t dc = 0; dc < K; ++dc, ++t) {
          const V p = vexp(L[t] - l);
          P[t * NV + jv] = p;
          const T* gp = grow + j0;
          const T* vp = vimg + (a - lo) * Dv * Wk + dc + j0;
          V dp0 = vsplat<V>(T(0)), dp1 = vsplat<V>(T(0));
          int64_t e = 0;
          for (; e + 1 < Dv; e += 2, gp += 2 * Wq, vp += 2 * Wk) {
            dp0 += vload<V>(gp) * vload<V>(vp);
            dp1 += vload<V>(gp + Wq) * vload<V>(vp + Wk);
          }
          if (e < Dv) dp0 += vload<V>(gp) * vload<V>(vp);
          const V ds = p * ((dp0 + dp1) - delta);
          DS[t * NV + jv] = ds;
          const T* kp = kimg + (a - lo) * D * Wk + dc + j0;
          const T* rr = rrow + dc * D;
          for (int64_t d = 0; d < D; ++d) dqacc[d] += ds * (vload<V>(kp + d * Wk) + rr[d]);
        }
      }
      const V dq_scale = vsplat<V>(static_cast<T>(g.scale));  // d/dq of q*scale
      for (int64_t d = 0; d < D; ++d) vstore(dqrow + d * Wq + j0, dqacc[d] * dq_scale);
    }
    lanes_to_rows<T, false>(g, dqrow, Wq, 0, D, g.ct_in, bn, i, i + 1, dq);
    // Pass B (offsets outer, so the shifted read-modify-writes of dk/dv never hit a store
    // still in flight): dv += p dout, dk += ds q, drel += sum over columns of ds q.
    int64_t t = 0;
    for (int64_t a = a0; a <= a1; ++a) {
      for (int64_t dc = 0; dc < K; ++dc, ++t) {
        const int64_t off = (a - i + r) * K + dc;
        T* dkb = dkimg + (a - lo) * D * Wk + dc;
        T* dvb = dvimg + (a - lo) * Dv * Wk + dc;
        const V* Pt = P + t * NV;
        const V* DSt = DS + t * NV;
        for (int64_t jv = 0; jv < NV; ++jv) {
          const int64_t j0 = jv * VL;
          const V p = Pt[jv], ds = DSt[jv];
          const T* gp = grow + j0;
          T* dvp = dvb + j0;
#pragma GCC unroll 4
          for (int64_t e = 0; e < Dv; ++e, gp += Wq, dvp += Wk) vstore(dvp, vload<V>(dvp) + p * vload<V>(gp));
          const T* qp = qrow + j0;
          T* dkp = dkb + j0;
#pragma GCC unroll 4
          for (int64_t d = 0; d < D; ++d, qp += Wq, dkp += Wk) vstore(dkp, vload<V>(dkp) + ds * vload<V>(qp));
        }
        if (need_drel) {  // lane-wise partial sums; one horizontal sum per band (below)
          V* dr = drv + off * D;
          for (int64_t d = 0; d < D; ++d) {
            const T* qp = qrow + d * Wq;
            V acc = vsplat<V>(T(0));
            for (int64_t jv = 0; jv < NV; ++jv) acc += DSt[jv] * vload<V>(qp + jv * VL);
            dr[d] += acc;
          }
        }
      }
    }
  }
  if (need_drel)
    for (int64_t x = 0; x < K * K * D; ++x) {
      T sum = 0;
      for (int l = 0; l < VL; ++l) sum += drv[x][l];
      drel_slot[x] += sum;
    }
  // dk/dv rows [lo, hi): no other task of this phase touches them (bands >= 2r apart)
  lanes_to_rows<T, true>(g, dkimg, Wk, r, D, g.ct_in, bn, lo, hi, dk);
  lanes_to_rows<T, true>(g, dvimg, Wk, r, Dv, g.ct_in, bn, lo, hi, dv);
}

// Two compiled copies of each kernel: baseline ISA and AVX2+FMA.
template <typename T, int DC, int DVC>
void forward_band_base(const Geometry& g, const T* q, const T* k, const T* v, const T* rel, const T* bias, T* out,
                       T* lse, int64_t bn, int64_t i0, int64_t i1) {
  forward_band_impl<T, DC, DVC, 0>(g, q, k, v, rel, bias, out, lse, bn, i0, i1);
}
template <typename T, int DC, int DVC>
void backward_band_base(const Geometry& g, const T* q, const T* k, const T* v, const T* rel, const T* bias,
                        const T* out, const T* lse, const T* gout, T* dq, T* dk, T* dv, T* drel, bool need_drel,
                        int64_t bn, int64_t i0, int64_t i1) {
  backward_band_impl<T, DC, DVC, 0>(g, q, k, v, rel, bias, out, lse, gout, dq, dk, dv, drel, need_drel, bn, i0, i1);
}
#if SASA_HAVE_AVX2_CLONE
template <typename T, int DC, int DVC>
SASA_TARGET_AVX2 void forward_band_avx2(const Geometry& g, const T* q, const T* k, const T* v, const T* rel,
                                        const T* bias, T* out, T* lse, int64_t bn, int64_t i0, int64_t i1) {
  forward_band_impl<T, DC, DVC, 0>(g, q, k, v, rel, bias, out, lse, bn, i0, i1);
}
template <typename T, int DC, int DVC>
SASA_TARGET_AVX2 void backward_band_avx2(const Geometry& g, const T* q, const T* k, const T* v, const T* rel,
                                         const T* bias, const T* out, const T* lse, const T* gout, T* dq, T* dk,
                                         T* dv, T* drel, bool need_drel, int64_t bn, int64_t i0, int64_t i1) {
  backward_band_impl<T, DC, DVC, 0>(g, q, k, v, rel, bias, out, lse, gout, dq, dk, dv, drel, need_drel, bn, i0, i1);
}
// 16 float lanes: Wq is then a multiple of 16 (see width_quantum).
template <int DC, int DVC>
SASA_TARGET_AVX512 void forward_band_avx512(const Geometry& g, const float* q, const float* k, const float* v,
                                            const float* rel, const float* bias, float* out, float* lse, int64_t bn,
                                            int64_t i0, int64_t i1) {
  forward_band_impl<float, DC, DVC, 1>(g, q, k, v, rel, bias, out, lse, bn, i0, i1);
}
template <int DC, int DVC>
SASA_TARGET_AVX512 void backward_band_avx512(const Geometry& g, const float* q, const float* k, const float* v,
                                             const float* rel, const float* bias, const float* out, const float* lse,
                                             const float* gout, float* dq, float* dk, float* dv, float* drel,
                                             bool need_drel, int64_t bn, int64_t i0, int64_t i1) {
  backward_band_impl<float, DC, DVC, 1>(g, q, k, v, rel, bias, out, lse, gout, dq, dk, dv, drel, need_drel, bn, i0,
                                        i1);
}
#endif

// Highest instruction set the kernels may use: 0 baseline, 1 AVX2+FMA, 2 AVX-512 (testing hooks lower it).
int g_max_isa = 2;

// Runs f(task) for task in [0, n) on torch's intra-op thread count with dynamic
// scheduling (robust to a loaded machine: an idle thread takes over the remaining tasks).
template <typename F>
void parallel_tasks(int64_t n, const F& f) {
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), n));
#ifdef _OPENMP
  if (threads > 1 && !at::in_parallel_region() && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t task = 0; task < n; ++task) f(task);
    return;
  }
#endif
  for (int64_t task = 0; task < n; ++task) f(task);
}

bool cpu_has_avx2() {
#if SASA_HAVE_AVX2_CLONE
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if SASA_HAVE_AVX2_CLONE
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  return has;
#else
  return false;
#endif
}

bool use_avx2() { return cpu_has_avx2() && g_max_isa >= 1; }
bool use_avx512() { return cpu_has_avx512() && g_max_isa >= 2; }

// float kernels run 16 lanes wide with AVX-512
template <typename T>
bool use_wide() {
  return std::is_same_v<T, float> && use_avx512();
}

template <typename T>
struct Pointers {
  const T *q, *k, *v, *rel, *bias, *out, *lse, *gout;
  T *out_w, *lse_w, *dq, *dk, *dv, *drel;
};

// Row bands of height `band` (>= min_height) so that there are about `per_thread` tasks
// per thread overall; one band per image when there are enough images.
std::pair<int64_t, int64_t> choose_bands(int64_t images, int64_t H, int64_t min_height, int64_t per_thread) {
  const int64_t threads = at::get_num_threads();
  if (images >= per_thread * threads || H <= std::max<int64_t>(min_height, 1)) return {H, 1};
  const int64_t want = (per_thread * threads + images - 1) / images;
  const int64_t band = std::max<int64_t>({min_height, int64_t(1), (H + want - 1) / want});
  const int64_t num = (H + band - 1) / band;
  if (num < 2) return {H, 1};
  return {band, num};
}

template <typename T>
struct FwdRun {
  const Geometry& g;
  Pointers<T> p;
  template <int DC, int DVC>
  void run() {
    const bool avx2 = use_avx2();
    const Geometry& geo = g;
    const Pointers<T> ptr = p;
    const int64_t images = geo.B * geo.N;
    const auto [bh, nb] = choose_bands(images, geo.H, 1, 4);
    parallel_tasks(images * nb, [&](int64_t task) {
      const int64_t bn = task / nb, band = task % nb;
      const int64_t i0 = band * bh, i1 = std::min(geo.H, i0 + bh);
#if SASA_HAVE_AVX2_CLONE
      if constexpr (std::is_same_v<T, float>) {
        if (geo.wide) {
          forward_band_avx512<DC, DVC>(geo, ptr.q, ptr.k, ptr.v, ptr.rel, ptr.bias, ptr.out_w, ptr.lse_w, bn, i0, i1);
          return;
        }
      }
      if (avx2) {
        forward_band_avx2<T, DC, DVC>(geo, ptr.q, ptr.k, ptr.v, ptr.rel, ptr.bias, ptr.out_w, ptr.lse_w, bn, i0, i1);
        return;
      }
#endif
      (void)avx2;
      forward_band_base<T, DC, DVC>(geo, ptr.q, ptr.k, ptr.v, ptr.rel, ptr.bias, ptr.out_w, ptr.lse_w, bn, i0, i1);
    });
  }
};

template <typename T>
struct BwdRun {
  const Geometry& g;
  Pointers<T> p;
  bool need_drel;
  int64_t band_height, num_bands;
  template <int DC, int DVC>
  void run() {
    const bool avx2 = use_avx2();
    const Geometry& geo = g;
    const Pointers<T> ptr = p;
    const int64_t images = geo.B * geo.N, slot = geo.K * geo.K * geo.D;
    const int64_t nb = num_bands, bh = band_height;
    const bool nd = need_drel;
    for (int64_t phase = 0; phase < (nb > 1 ? 2 : 1); ++phase) {
      const int64_t in_phase = nb > 1 ? (nb - phase + 1) / 2 : 1;  // bands phase, phase+2, ...
      parallel_tasks(images * in_phase, [&](int64_t task) {
        const int64_t bn = task / in_phase;
        const int64_t band = nb > 1 ? phase + 2 * (task % in_phase) : 0;
        const int64_t i0 = band * bh, i1 = std::min(geo.H, i0 + bh);
        T* drel = nd ? ptr.drel + (bn * nb + band) * slot : ptr.drel;
#if SASA_HAVE_AVX2_CLONE
        if constexpr (std::is_same_v<T, float>) {
          if (geo.wide) {
            backward_band_avx512<DC, DVC>(geo, ptr.q, ptr.k, ptr.v, ptr.rel, ptr.bias, ptr.out, ptr.lse, ptr.gout,
                                          ptr.dq, ptr.dk, ptr.dv, drel, nd, bn, i0, i1);
            return;
          }
        }
        if (avx2) {
          backward_band_avx2<T, DC, DVC>(geo, ptr.q, ptr.k, ptr.v, ptr.rel, ptr.bias, ptr.out, ptr.lse, ptr.gout,
                                         ptr.dq, ptr.dk, ptr.dv, drel, nd, bn, i0, i1);
          return;
        }
#endif
        backward_band_base<T, DC, DVC>(geo, ptr.q, ptr.k, ptr.v, ptr.rel, ptr.bias, ptr.out, ptr.lse, ptr.gout,
                                       ptr.dq, ptr.dk, ptr.dv, drel, nd, bn, i0, i1);
      });
    }
  }
};

// Calls f.run<DC, DVC>() with compile-time head sizes for the common cases (float only).
template <typename T, typename F>
void dispatch_dims(int64_t D, int64_t Dv, F& f) {
  if constexpr (std::is_same_v<T, float>) {
    if (D == 8 && Dv == 8) return f.template run<8, 8>();
    if (D == 16 && Dv == 16) return f.template run<16, 16>();
    if (D == 32 && Dv == 32) return f.template run<32, 32>();
  }
  return f.template run<0, 0>();
}

// Wq is a multiple of the lane count: 8 (float AVX2/baseline, double), 16 (float AVX-512)
int64_t width_quantum(bool wide) { return wide ? 16 : 8; }
bool wide_for(const torch::Tensor& t) { return t.scalar_type() == torch::kFloat && use_avx512(); }

Geometry geometry(const torch::Tensor& q, const torch::Tensor& v, const torch::Tensor& rel, int64_t K) {
  TORCH_CHECK(q.dim() == 5 && v.dim() == 5 && rel.dim() == 4, "sasa cpu kernel: bad ranks");
  TORCH_CHECK(K > 0 && K % 2 == 1, "sasa cpu kernel: kernel_size must be odd and positive");
  const int64_t W = q.size(3), r = K / 2;
  const bool wide = wide_for(q);
  const int64_t quantum = width_quantum(wide);
  const int64_t Wq = (W + quantum - 1) / quantum * quantum;
  Geometry g{q.size(0), q.size(1), q.size(2), W, q.size(4), v.size(4), K, rel.size(0), Wq, Wq + 2 * r};
  g.wide = wide;
  TORCH_CHECK(rel.size(1) == K && rel.size(2) == K && rel.size(3) == g.D && (g.Nr == 1 || g.Nr == g.N),
              "sasa cpu kernel: rel_pos must be (1 or N, K, K, D)");
  return g;
}

void check_inputs(std::initializer_list<const torch::Tensor*> ts, const torch::Tensor& q) {
  for (auto* t : ts) {
    TORCH_CHECK(t->device().is_cpu(), "sasa cpu kernel: tensors must be on the CPU");
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "sasa cpu kernel: dtype mismatch");
    TORCH_CHECK(t->is_contiguous(), "sasa cpu kernel: tensors must be contiguous");
  }
}

// bias[dc][j] = -1e30 where query column j < W sees key column j + dc - r outside the image.
torch::Tensor border_bias(const Geometry& g, const torch::TensorOptions& opts) {
  auto bias = torch::zeros({g.K, g.Wq}, opts.dtype(torch::kDouble));
  auto acc = bias.accessor<double, 2>();
  const int64_t r = g.K / 2;
  for (int64_t dc = 0; dc < g.K; ++dc)
    for (int64_t j = 0; j < g.W; ++j) {
      const int64_t c = j + dc - r;
      if (c < 0 || c >= g.W) acc[dc][j] = -1e30;
    }
  return bias.to(opts.dtype());
}

}  // namespace

namespace {

// Runs the forward kernel; q, k, v, out are base pointers in the layout g describes, lse may be
// null (forward only: no logsumexp computed or stored).
template <typename T>
void run_forward(const Geometry& g, const T* q, const T* k, const T* v, const torch::Tensor& rel,
                 const torch::Tensor& bias, T* out, T* lse) {
  Pointers<T> p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.rel = rel.data_ptr<T>();
  p.bias = bias.data_ptr<T>();
  p.out_w = out;
  p.lse_w = lse;
  FwdRun<T> runner{g, p};
  dispatch_dims<T>(g.D, g.Dv, runner);
}

// Runs the backward kernel; dk and dv must be zero on entry (they are accumulated).
template <typename T>
torch::Tensor run_backward(const Geometry& g, const T* q, const T* k, const T* v, const torch::Tensor& rel,
                           const T* out, const torch::Tensor& lse, const T* gout, T* dq, T* dk, T* dv,
                           bool need_drel, const torch::TensorOptions& opts) {
  // Bands of query rows: enough tasks per phase for all threads, each band >= 2r rows
  // high so that bands two apart never write the same key row.
  const auto [band_height, num_bands] = choose_bands(g.B * g.N, g.H, 2 * (g.K / 2), 4);
  auto bias = border_bias(g, opts);
  auto drel = need_drel ? torch::zeros({g.B, g.N, num_bands, g.K, g.K, g.D}, opts) : torch::zeros({1}, opts);
  Pointers<T> p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.rel = rel.data_ptr<T>();
  p.bias = bias.data_ptr<T>();
  p.out = out;
  p.lse = lse.data_ptr<T>();
  p.gout = gout;
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  p.drel = drel.data_ptr<T>();
  BwdRun<T> runner{g, p, need_drel, band_height, num_bands};
  dispatch_dims<T>(g.D, g.Dv, runner);
  return drel;
}

// Geometry of the packed layout: qkv (B, 3 N D, H, W), Dv = D.
Geometry packed_geometry(const torch::Tensor& qkv, const torch::Tensor& rel, int64_t K, int64_t N, double scale) {
  TORCH_CHECK(qkv.dim() == 4 && rel.dim() == 4, "sasa cpu kernel: bad ranks");
  TORCH_CHECK(K > 0 && K % 2 == 1, "sasa cpu kernel: kernel_size must be odd and positive");
  TORCH_CHECK(N > 0 && qkv.size(1) % (3 * N) == 0, "sasa cpu kernel: qkv channels must be 3 * num_heads * D");
  const int64_t W = qkv.size(3), r = K / 2, D = qkv.size(1) / (3 * N);
  const bool wide = wide_for(qkv);
  const int64_t quantum = width_quantum(wide);
  const int64_t Wq = (W + quantum - 1) / quantum * quantum;
  Geometry g{qkv.size(0), N, qkv.size(2), W, D, D, K, rel.size(0), Wq, Wq + 2 * r};
  g.wide = wide;
  g.ct_in = 3 * N * D;
  g.ct_out = N * D;
  g.scale = scale;
  TORCH_CHECK(rel.size(1) == K && rel.size(2) == K && rel.size(3) == D && (g.Nr == 1 || g.Nr == N),
              "sasa cpu kernel: rel_pos must be (1 or N, K, K, D)");
  return g;
}

}  // namespace

// q, k (B, N, H, W, D), v (B, N, H, W, Dv), rel (1 or N, K, K, D), all contiguous.
// Returns out (B, N, H, W, Dv) and lse (B, N, H, W); lse is empty when need_lse is false.
std::vector<torch::Tensor> local_attention_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                                   torch::Tensor rel, int64_t kernel_size, bool need_lse) {
  check_inputs({&q, &k, &v, &rel}, q);
  const Geometry g = geometry(q, v, rel, kernel_size);
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes().slice(0, 4) == q.sizes().slice(0, 4), "sasa cpu kernel: shapes");
  auto bias = border_bias(g, q.options());
  auto out = torch::empty({g.B, g.N, g.H, g.W, g.Dv}, q.options());
  auto lse = need_lse ? torch::empty({g.B, g.N, g.H, g.W}, q.options()) : torch::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sasa_local_attention_forward", [&] {
    run_forward<scalar_t>(g, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), rel, bias,
                          out.data_ptr<scalar_t>(), need_lse ? lse.data_ptr<scalar_t>() : nullptr);
  });
  return {out, lse};
}

// Returns dq, dk, dv and drel_partial (B, N, num_bands, K, K, D) (sum it over batch and
// bands for the per-head gradient); drel_partial is a dummy when need_drel is false.
std::vector<torch::Tensor> local_attention_backward(torch::Tensor gout, torch::Tensor q, torch::Tensor k,
                                                    torch::Tensor v, torch::Tensor rel, torch::Tensor out,
                                                    torch::Tensor lse, int64_t kernel_size, bool need_drel) {
  gout = gout.contiguous();
  check_inputs({&gout, &q, &k, &v, &rel, &out, &lse}, q);
  const Geometry g = geometry(q, v, rel, kernel_size);
  TORCH_CHECK(gout.sizes() == out.sizes() && out.sizes() == v.sizes(), "sasa cpu kernel: bad grad shape");
  auto dq = torch::empty_like(q);
  auto dk = torch::zeros_like(k);
  auto dv = torch::zeros_like(v);
  torch::Tensor drel;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sasa_local_attention_backward", [&] {
    drel = run_backward<scalar_t>(g, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), rel,
                                  out.data_ptr<scalar_t>(), lse, gout.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(),
                                  dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), need_drel, q.options());
  });
  return {dq, dk, dv, drel};
}

// Layout-native entry: qkv (B, 3 N D, H, W) as a 1x1 projection writes it (channels q | k | v,
// head-major within each), rel (1 or N, K, K, D); the logits use q * scale. Returns out
// (B, N D, H, W) and lse (B, N, H, W) (empty when need_lse is false). No layout copies.
std::vector<torch::Tensor> local_attention_forward_packed(torch::Tensor qkv, torch::Tensor rel, int64_t kernel_size,
                                                          int64_t num_heads, double scale, bool need_lse) {
  check_inputs({&qkv, &rel}, qkv);
  const Geometry g = packed_geometry(qkv, rel, kernel_size, num_heads, scale);
  auto bias = border_bias(g, qkv.options());
  auto out = torch::empty({g.B, g.N * g.Dv, g.H, g.W}, qkv.options());
  auto lse = need_lse ? torch::empty({g.B, g.N, g.H, g.W}, qkv.options()) : torch::empty({0}, qkv.options());
  const int64_t third = g.N * g.D * g.H * g.W;
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "sasa_local_attention_forward_packed", [&] {
    const scalar_t* base = qkv.data_ptr<scalar_t>();
    run_forward<scalar_t>(g, base, base + third, base + 2 * third, rel, bias, out.data_ptr<scalar_t>(),
                          need_lse ? lse.data_ptr<scalar_t>() : nullptr);
  });
  return {out, lse};
}

// Backward of the layout-native entry: returns dqkv (B, 3 N D, H, W) and drel_partial as above.
std::vector<torch::Tensor> local_attention_backward_packed(torch::Tensor gout, torch::Tensor qkv, torch::Tensor rel,
                                                           torch::Tensor out, torch::Tensor lse, int64_t kernel_size,
                                                           int64_t num_heads, double scale, bool need_drel) {
  gout = gout.contiguous();
  check_inputs({&gout, &qkv, &rel, &out, &lse}, qkv);
  const Geometry g = packed_geometry(qkv, rel, kernel_size, num_heads, scale);
  TORCH_CHECK(gout.sizes() == out.sizes() && out.size(1) == g.N * g.D, "sasa cpu kernel: bad grad shape");
  const int64_t third = g.N * g.D * g.H * g.W;
  auto dqkv = torch::empty_like(qkv);
  dqkv.narrow(1, g.N * g.D, 2 * g.N * g.D).zero_();  // dk, dv are accumulated; dq is written
  torch::Tensor drel;
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "sasa_local_attention_backward_packed", [&] {
    const scalar_t* base = qkv.data_ptr<scalar_t>();
    scalar_t* dbase = dqkv.data_ptr<scalar_t>();
    drel = run_backward<scalar_t>(g, base, base + third, base + 2 * third, rel, out.data_ptr<scalar_t>(), lse,
                                  gout.data_ptr<scalar_t>(), dbase, dbase + third, dbase + 2 * third, need_drel,
                                  qkv.options());
  });
  return {dqkv, drel};
}

bool sasa_use_avx2() { return use_avx2(); }  // for attention_stem_cpu.cpp

// attention_stem_cpu.cpp: the attention stem's fused block attention
std::vector<torch::Tensor> stem_forward(torch::Tensor pixels, torch::Tensor bilinear, torch::Tensor rel,
                                        torch::Tensor mix, torch::Tensor w, bool stats);
std::vector<torch::Tensor> stem_backward(torch::Tensor gpeak, torch::Tensor gsum, torch::Tensor ggram,
                                         torch::Tensor pixels, torch::Tensor bilinear, torch::Tensor rel,
                                         torch::Tensor mix, torch::Tensor w, bool stats, bool need_pixels);

std::string isa() { return use_avx512() ? "avx512" : use_avx2() ? "avx2" : "baseline"; }
void force_baseline_isa(bool force) { g_max_isa = force ? 0 : 2; }
// Testing: the highest instruction set the kernels may use ("baseline", "avx2" or "avx512").
void limit_isa(const std::string& name) {
  TORCH_CHECK(name == "baseline" || name == "avx2" || name == "avx512", "limit_isa: unknown ISA ", name);
  g_max_isa = name == "baseline" ? 0 : name == "avx2" ? 1 : 2;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("forward", &local_attention_forward, "fused local attention forward -> [out, lse]", py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("rel"), py::arg("kernel_size"), py::arg("need_lse") = true);
  m.def("backward", &local_attention_backward, "fused local attention backward -> [dq, dk, dv, drel_partial]");
  m.def("forward_packed", &local_attention_forward_packed,
        "layout-native forward: qkv (B, 3ND, H, W) -> [out (B, ND, H, W), lse]", py::arg("qkv"), py::arg("rel"),
        py::arg("kernel_size"), py::arg("num_heads"), py::arg("scale") = 1.0, py::arg("need_lse") = true);
  m.def("backward_packed", &local_attention_backward_packed,
        "layout-native backward -> [dqkv (B, 3ND, H, W), drel_partial]");
  m.def("stem_forward", &stem_forward, "attention stem block attention -> [peak, ysum_partial, gram_partial]");
  m.def("stem_backward", &stem_backward,
        "attention stem backward -> [dbilinear, drel, dmix, dw (per-chunk partials), dpixels]");
  m.def("isa", &isa, "instruction set the kernels run with ('avx2' or 'baseline')");
  m.def("force_baseline_isa", &force_baseline_isa, "testing: run the baseline-ISA kernels even with AVX2");
  m.def("limit_isa", &limit_isa, "testing: highest ISA the kernels may use ('baseline', 'avx2', 'avx512')");
}
