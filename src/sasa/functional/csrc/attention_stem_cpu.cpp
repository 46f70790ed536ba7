// Fused CPU kernel of the attention stem's reduced block attention (sasa.layers.attention_stem,
// _stem_chunk): per block of S pixels and per head, the S×S logits x_pᵀ B x_j + x_p·rel[p, j],
// their softmax P, y_p = Σ_j P_pj (mix_j ⊗ x_j) (K = m·C_in numbers), out_p = W y_p (D channels),
// and only what the stem keeps: the per-block max over p of out (peak) and, for BN's batch
// statistics, Σ y and Σ y yᵀ in float64. The backward recomputes a block from its pixels and
// routes the peak's gradient to the arg-max pixels (split evenly among ties, as amax's backward).
//
// Everything of a block lives in small per-task buffers: nothing of size pixels × D is ever
// allocated. Blocks are processed in fixed chunks of kChunk blocks, each with its own slot for the
// reductions (statistics, parameter gradients), summed in Python: results do not depend on the
// number of threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#define STEM_INLINE inline __attribute__((always_inline))

namespace sasa_stem {

constexpr int64_t kChunk = 64;  // blocks per reduction slot

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));

// exp of 8 floats: Cephes polynomial (~1 ulp), 0 below -87.3 (same as the attention kernel's).
STEM_INLINE f8 exp8(f8 x) {
  const f8 lo = f8{} - 87.0f, hi = f8{} + 88.0f;
  const auto underflow = x < (f8{} - 87.3f);
  f8 xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const f8 magic = f8{} + 12582912.0f;
  const f8 n = (xc * 1.44269504088896341f + magic) - magic;
  f8 r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  f8 p = f8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const i8 bits = (__builtin_convertvector(n, i8) + 127) << 23;
  const f8 result = p * (f8)bits;
  return underflow ? f8{} : result;
}

STEM_INLINE f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof(f8));
  return v;
}
STEM_INLINE void store8(float* p, f8 v) { std::memcpy(p, &v, sizeof(f8)); }

// x[i] = exp(x[i]) for i < n.
STEM_INLINE void exp_inplace(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    f8 v;
    std::memcpy(&v, x + i, sizeof(f8));
    v = exp8(v);
    std::memcpy(x + i, &v, sizeof(f8));
  }
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}
STEM_INLINE void exp_inplace(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

struct Dims {
  int64_t M, S, C, N, D, m, K;
};

template <int V>
STEM_INLINE int64_t dim(int64_t runtime) {
  return V > 0 ? V : runtime;
}

// Parameters of the block attention (all contiguous): bilinear (N, C, C), relp (N, S_key, C, S_query) (rel with
// the query pixel last), mix (S, m), w (N, D, K) and wt (N, K, D).
template <typename T>
struct Params {
  const T *bilinear, *relp, *mix, *w, *wt;
};

// Per-task buffers of one (block, head). The loops run along the block's query pixels p (S = 16 in the
// default stem: two AVX2 vectors), so everything is vertical: transposed tensors carry a T suffix.
template <typename T>
struct Block {
  std::vector<T> xT, uT, PT, mixed, yT, out, peak;
  std::vector<int32_t> arg, ties;
  explicit Block(const Dims& d)
      : xT(d.C * d.S), uT(d.C * d.S), PT(d.S * d.S), mixed(d.S * d.K), yT(d.K * d.S), out(d.S * d.D), peak(d.D),
        arg(d.D), ties(d.D) {}
};

// Block attention of pixels x (S, C) for head n: fills xT, uT (Bᵀ x_p), PT[j][p] = P_pj, mixed, yT, out and
// peak (with the first arg-max pixel and the number of ties when `ties`).
template <typename T, int SC, int CC, int MC, int DC>
STEM_INLINE void block_forward(const Dims& d, const Params<T>& prm, const T* x, int64_t n, Block<T>& b, bool ties) {
  const int64_t S = dim<SC>(d.S), C = dim<CC>(d.C), m = dim<MC>(d.m), K = m * C, D = dim<DC>(d.D);
  const T* B = prm.bilinear + n * C * C;
  const T* relp = prm.relp + n * S * S * C;
  T* __restrict xT = b.xT.data();
  T* __restrict uT = b.uT.data();
  T* __restrict PT = b.PT.data();
  T* __restrict yT = b.yT.data();
  T* __restrict mixed = b.mixed.data();
  for (int64_t p = 0; p < S; ++p)
    for (int64_t c = 0; c < C; ++c) xT[c * S + p] = x[p * C + c];
  for (int64_t c = 0; c < C; ++c) {
    T* __restrict uc = uT + c * S;
    for (int64_t p = 0; p < S; ++p) uc[p] = 0;
    for (int64_t a = 0; a < C; ++a) {
      const T bac = B[a * C + c];
      for (int64_t p = 0; p < S; ++p) uc[p] += bac * xT[a * S + p];
    }
  }
  // logits x_pᵀ B x_j + x_p·rel[p, j] and the softmax over keys j, all along p
  for (int64_t j = 0; j < S; ++j) {
    T* __restrict lj = PT + j * S;
    for (int64_t p = 0; p < S; ++p) lj[p] = 0;
    for (int64_t c = 0; c < C; ++c) {
      const T xjc = x[j * C + c];
      const T* rjc = relp + (j * C + c) * S;
      for (int64_t p = 0; p < S; ++p) lj[p] += xjc * uT[c * S + p] + xT[c * S + p] * rjc[p];
    }
  }
  T mx[SC > 0 ? SC : 64], sum[SC > 0 ? SC : 64];  // S <= 64 is checked by dims_of
  for (int64_t p = 0; p < S; ++p) mx[p] = PT[p];
  for (int64_t j = 1; j < S; ++j)
    for (int64_t p = 0; p < S; ++p) mx[p] = std::max(mx[p], PT[j * S + p]);
  for (int64_t j = 0; j < S; ++j)
    for (int64_t p = 0; p < S; ++p) PT[j * S + p] -= mx[p];
  exp_inplace(PT, S * S);
  for (int64_t p = 0; p < S; ++p) sum[p] = 0;
  for (int64_t j = 0; j < S; ++j)
    for (int64_t p = 0; p < S; ++p) sum[p] += PT[j * S + p];
  for (int64_t p = 0; p < S; ++p) sum[p] = T(1) / sum[p];
  for (int64_t j = 0; j < S; ++j)
    for (int64_t p = 0; p < S; ++p) PT[j * S + p] *= sum[p];
  for (int64_t j = 0; j < S; ++j)
    for (int64_t mi = 0; mi < m; ++mi)
      for (int64_t c = 0; c < C; ++c) mixed[j * K + mi * C + c] = prm.mix[j * m + mi] * x[j * C + c];
  // y_p = Σ_j P_pj mixed_j (explicit vectors along p in the specialised case: left to itself the compiler
  // interchanges the loops into scalar code)
  for (int64_t k = 0; k < K; ++k) {
    T* __restrict yk = yT + k * S;
    if constexpr (std::is_same_v<T, float> && SC == 16) {
      f8 a0 = f8{}, a1 = f8{};
      for (int64_t j = 0; j < S; ++j) {
        const float mjk = mixed[j * K + k];
        a0 += mjk * load8(PT + j * S);
        a1 += mjk * load8(PT + j * S + 8);
      }
      store8(yk, a0);
      store8(yk + 8, a1);
      continue;
    }
    for (int64_t p = 0; p < S; ++p) yk[p] = 0;
    for (int64_t j = 0; j < S; ++j) {
      const T mjk = mixed[j * K + k];
      for (int64_t p = 0; p < S; ++p) yk[p] += mjk * PT[j * S + p];
    }
  }
  // out_p = W y_p along D, and the running max over p
  const T* __restrict wt = prm.wt + n * K * D;
  T* __restrict peak = b.peak.data();
  for (int64_t p = 0; p < S; ++p) {
    T* __restrict op = b.out.data() + p * D;
    if constexpr (std::is_same_v<T, float> && DC == 64) {
      f8 a[8] = {};
      for (int64_t k = 0; k < K; ++k) {
        const float yk = yT[k * S + p];
        const float* wk = wt + k * D;
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) a[q] += yk * load8(wk + 8 * q);
      }
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) store8(op + 8 * q, a[q]);
    } else {
      for (int64_t e = 0; e < D; ++e) op[e] = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T yk = yT[k * S + p];
        const T* wk = wt + k * D;
        for (int64_t e = 0; e < D; ++e) op[e] += yk * wk[e];
      }
    }
    if (p == 0) {
      for (int64_t e = 0; e < D; ++e) peak[e] = op[e];
    } else {
      for (int64_t e = 0; e < D; ++e) peak[e] = std::max(peak[e], op[e]);
    }
  }
  if (!ties) return;
  for (int64_t e = 0; e < D; ++e) {
    b.ties[e] = 0;
    b.arg[e] = -1;
  }
  int32_t* __restrict tie = b.ties.data();
  int32_t* __restrict arg = b.arg.data();
  for (int64_t p = S - 1; p >= 0; --p) {  // branch-free, so that it vectorises along D
    const T* __restrict op = b.out.data() + p * D;
    for (int64_t e = 0; e < D; ++e) {
      const bool hit = op[e] == peak[e];
      tie[e] += hit ? 1 : 0;
      arg[e] = hit ? static_cast<int32_t>(p) : arg[e];
    }
  }
}

// Blocks [b0, b1): peak (N, M, D); with stats, ysum (N, K) and gram (N, K, K) of this chunk's slot.
template <typename T, int SC, int CC, int MC, int DC>
STEM_INLINE void forward_chunk(const Dims& d, const Params<T>& prm, const T* pixels, T* peak, double* ysum,
                               double* gram, int64_t b0, int64_t b1) {
  const int64_t S = dim<SC>(d.S), C = dim<CC>(d.C), K = dim<MC>(d.m) * C, D = dim<DC>(d.D);
  Block<T> b(d);
  std::vector<double> y64(K * S);
  for (int64_t blk = b0; blk < b1; ++blk) {
    const T* x = pixels + blk * S * C;
    for (int64_t n = 0; n < d.N; ++n) {
      block_forward<T, SC, CC, MC, DC>(d, prm, x, n, b, false);
      std::memcpy(peak + (n * d.M + blk) * D, b.peak.data(), sizeof(T) * D);
      if (!ysum) continue;
      double* ys = ysum + n * K;
      double* gr = gram + n * K * K;
      for (int64_t i = 0; i < K * S; ++i) y64[i] = b.yT[i];
      for (int64_t k = 0; k < K; ++k) {
        const double* yk = y64.data() + k * S;
        double s = 0;
        for (int64_t p = 0; p < S; ++p) s += yk[p];
        ys[k] += s;
        for (int64_t l = 0; l <= k; ++l) {
          const double* yl = y64.data() + l * S;
          double acc[4] = {0, 0, 0, 0};  // 4 partial sums: vectorisable without reassociating
          int64_t p = 0;
          for (; p + 4 <= S; p += 4)
            for (int q = 0; q < 4; ++q) acc[q] += yk[p + q] * yl[p + q];
          for (; p < S; ++p) acc[0] += yk[p] * yl[p];
          const double v = (acc[0] + acc[1]) + (acc[2] + acc[3]);
          gr[k * K + l] += v;
          if (l != k) gr[l * K + k] += v;
        }
      }
    }
  }
}

// Gradient slots of one chunk: bilinear (N, C, C), relp (N, S, C, S), mix (S, m), w (N, D, K).
template <typename T>
struct Grads {
  T *bilinear, *relp, *mix, *w;
};

// Σ_p a[p] b[p] over the block's pixels with 8 partial sums (vectorisable without reassociation).
template <typename T, int SC>
STEM_INLINE T dot_p(const T* a, const T* b, int64_t S) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t p = 0;
  for (; p + 8 <= S; p += 8)
    for (int q = 0; q < 8; ++q) acc[q] += a[p + q] * b[p + q];
  for (; p < S; ++p) acc[0] += a[p] * b[p];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Backward of blocks [b0, b1): gpeak (N, M, D); gsum (N, K) and gsym (N, K, K) = G + Gᵀ of the gram's
// gradient (float64; null without stats); gx (M, S, C) or null.
template <typename T, int SC, int CC, int MC, int DC>
STEM_INLINE void backward_chunk(const Dims& d, const Params<T>& prm, const T* pixels, const T* gpeak,
                                const double* gsum, const double* gsym, T* gx, const Grads<T>& gr, int64_t b0,
                                int64_t b1) {
  const int64_t S = dim<SC>(d.S), C = dim<CC>(d.C), m = dim<MC>(d.m), K = m * C, D = dim<DC>(d.D);
  Block<T> b(d);
  std::vector<T> gyT(K * S), gPT(S * S), gmixed(S * K), tT(C * S), gxT(C * S), gxj(S * C);
  std::vector<T> gsumT, gsymT;
  if (gsum) gsumT.assign(gsum, gsum + d.N * K), gsymT.assign(gsym, gsym + d.N * K * K);
  for (int64_t blk = b0; blk < b1; ++blk) {
    const T* x = pixels + blk * S * C;
    std::fill(gxT.begin(), gxT.end(), T(0));
    std::fill(gxj.begin(), gxj.end(), T(0));
    for (int64_t n = 0; n < d.N; ++n) {
      block_forward<T, SC, CC, MC, DC>(d, prm, x, n, b, true);
      const T* gp = gpeak + (n * d.M + blk) * D;
      const T* B = prm.bilinear + n * C * C;
      const T* relp = prm.relp + n * S * S * C;
      const T* w = prm.w + n * D * K;
      T* gw = gr.w + n * D * K;
      const T *xT = b.xT.data(), *uT = b.uT.data(), *PT = b.PT.data(), *yT = b.yT.data();
      // dL/dy_p from the statistics (in T: float32 rounding of a float64 gradient is below the tests'
      // tolerance and keeps the loop in 8 lanes), then from the arg-max pixels of out
      if (gsum) {
        for (int64_t k = 0; k < K; ++k) {
          T* __restrict gk = gyT.data() + k * S;
          const T* gs = gsymT.data() + (n * K + k) * K;
          for (int64_t p = 0; p < S; ++p) gk[p] = gsumT[n * K + k];
          for (int64_t l = 0; l < K; ++l) {
            const T gkl = gs[l];
            for (int64_t p = 0; p < S; ++p) gk[p] += gkl * yT[l * S + p];
          }
        }
      } else {
        std::fill(gyT.begin(), gyT.end(), T(0));
      }
      for (int64_t e = 0; e < D; ++e) {
        if (gp[e] == T(0)) continue;
        const T g = gp[e] / static_cast<T>(b.ties[e]);
        for (int64_t p = b.arg[e], left = b.ties[e]; left > 0; ++p) {
          if (b.out[p * D + e] != b.peak[e]) continue;
          --left;
          for (int64_t k = 0; k < K; ++k) {
            gyT[k * S + p] += g * w[e * K + k];
            gw[e * K + k] += g * yT[k * S + p];
          }
        }
      }
      // y_p = Σ_j P_pj mixed_j
      for (int64_t j = 0; j < S; ++j) {
        T* gpj = gPT.data() + j * S;
        for (int64_t p = 0; p < S; ++p) gpj[p] = 0;
        for (int64_t k = 0; k < K; ++k) {
          const T mjk = b.mixed[j * K + k];
          for (int64_t p = 0; p < S; ++p) gpj[p] += mjk * gyT[k * S + p];
          gmixed[j * K + k] = dot_p<T, SC>(PT + j * S, gyT.data() + k * S, S);
        }
      }
      // mixed_j = mix_j ⊗ x_j
      for (int64_t j = 0; j < S; ++j)
        for (int64_t mi = 0; mi < m; ++mi) {
          const T* g = gmixed.data() + j * K + mi * C;
          const T wm = prm.mix[j * m + mi];
          T s = 0;
          for (int64_t c = 0; c < C; ++c) {
            s += g[c] * x[j * C + c];
            gxj[j * C + c] += g[c] * wm;
          }
          gr.mix[j * m + mi] += s;
        }
      // softmax: gl = P (gP - Σ_j P gP), along p
      T dot[SC > 0 ? SC : 64];
      for (int64_t p = 0; p < S; ++p) dot[p] = 0;
      for (int64_t j = 0; j < S; ++j)
        for (int64_t p = 0; p < S; ++p) dot[p] += PT[j * S + p] * gPT[j * S + p];
      for (int64_t j = 0; j < S; ++j)
        for (int64_t p = 0; p < S; ++p) gPT[j * S + p] = PT[j * S + p] * (gPT[j * S + p] - dot[p]);
      // logits x_pᵀ B x_j + x_p·rel[p, j]
      T* gB = gr.bilinear + n * C * C;
      T* grelp = gr.relp + n * S * S * C;
      std::fill(tT.begin(), tT.end(), T(0));
      for (int64_t j = 0; j < S; ++j) {
        const T* gl = gPT.data() + j * S;
        for (int64_t c = 0; c < C; ++c) {
          const T xjc = x[j * C + c];
          const T* rjc = relp + (j * C + c) * S;
          T* grjc = grelp + (j * C + c) * S;
          T* tc = tT.data() + c * S;
          T* gxc = gxT.data() + c * S;
          for (int64_t p = 0; p < S; ++p) {
            tc[p] += gl[p] * xjc;
            grjc[p] += gl[p] * xT[c * S + p];
            gxc[p] += gl[p] * rjc[p];
          }
          gxj[j * C + c] += dot_p<T, SC>(gl, uT + c * S, S);
        }
      }
      for (int64_t a = 0; a < C; ++a)
        for (int64_t c = 0; c < C; ++c) {
          const T bac = B[a * C + c];
          gB[a * C + c] += dot_p<T, SC>(xT + a * S, tT.data() + c * S, S);
          for (int64_t p = 0; p < S; ++p) gxT[a * S + p] += bac * tT[c * S + p];
        }
    }
    if (gx)
      for (int64_t p = 0; p < S; ++p)
        for (int64_t c = 0; c < C; ++c) gx[(blk * S + p) * C + c] = gxT[c * S + p] + gxj[p * C + c];
  }
}

// Baseline-ISA and AVX2+FMA copies, chosen at run time (no -march=native: the build cache is portable).
template <typename T, int SC, int CC, int MC, int DC>
void forward_chunk_base(const Dims& d, const Params<T>& prm, const T* px, T* peak, double* ys, double* gram,
                        int64_t b0, int64_t b1) {
  forward_chunk<T, SC, CC, MC, DC>(d, prm, px, peak, ys, gram, b0, b1);
}
template <typename T, int SC, int CC, int MC, int DC>
void backward_chunk_base(const Dims& d, const Params<T>& prm, const T* px, const T* gpeak, const double* gsum,
                         const double* gsym, T* gx, const Grads<T>& gr, int64_t b0, int64_t b1) {
  backward_chunk<T, SC, CC, MC, DC>(d, prm, px, gpeak, gsum, gsym, gx, gr, b0, b1);
}
#if defined(__x86_64__) || defined(__i386__)
#define STEM_HAVE_AVX2 1
template <typename T, int SC, int CC, int MC, int DC>
__attribute__((target("avx2,fma"))) void forward_chunk_avx2(const Dims& d, const Params<T>& prm, const T* px, T* peak,
                                                            double* ys, double* gram, int64_t b0, int64_t b1) {
  forward_chunk<T, SC, CC, MC, DC>(d, prm, px, peak, ys, gram, b0, b1);
}
template <typename T, int SC, int CC, int MC, int DC>
__attribute__((target("avx2,fma"))) void backward_chunk_avx2(const Dims& d, const Params<T>& prm, const T* px,
                                                             const T* gpeak, const double* gsum, const double* gsym,
                                                             T* gx, const Grads<T>& gr, int64_t b0, int64_t b1) {
  backward_chunk<T, SC, CC, MC, DC>(d, prm, px, gpeak, gsum, gsym, gx, gr, b0, b1);
}
#else
#define STEM_HAVE_AVX2 0
#endif

Dims dims_of(const torch::Tensor& pixels, const torch::Tensor& bilinear, const torch::Tensor& rel,
             const torch::Tensor& mix, const torch::Tensor& w) {
  for (const auto* t : {&pixels, &bilinear, &rel, &mix, &w}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "sasa stem kernel: tensors must be contiguous CPU tensors");
    TORCH_CHECK(t->scalar_type() == pixels.scalar_type(), "sasa stem kernel: dtype mismatch");
  }
  TORCH_CHECK(pixels.dim() == 3 && bilinear.dim() == 3 && rel.dim() == 4 && mix.dim() == 2 && w.dim() == 3,
              "sasa stem kernel: bad ranks");
  Dims d{pixels.size(0), pixels.size(1), pixels.size(2), bilinear.size(0), w.size(1), mix.size(1), w.size(2)};
  TORCH_CHECK(bilinear.size(1) == d.C && bilinear.size(2) == d.C && rel.size(0) == d.N && rel.size(1) == d.S &&
                  rel.size(2) == d.S && rel.size(3) == d.C && mix.size(0) == d.S && w.size(0) == d.N &&
                  d.K == d.m * d.C && d.S <= 64,
              "sasa stem kernel: inconsistent shapes");
  return d;
}

int64_t num_chunks(const Dims& d) { return (d.M + kChunk - 1) / kChunk; }

}  // namespace sasa_stem

bool sasa_use_avx2();  // the attention kernel's run-time ISA choice (honours its testing hooks)

namespace sasa_stem {

// f(<compile-time dims>): the default stem (4×4 blocks, RGB, 4 value mixtures, 64 channels per head)
// specialised, everything else with run-time sizes.
template <typename F>
void dispatch_dims(const Dims& d, const F& f) {
  if (d.S == 16 && d.C == 3 && d.m == 4 && d.D == 64) return f(std::integral_constant<int, 1>{});
  return f(std::integral_constant<int, 0>{});
}

}  // namespace sasa_stem

// pixels (M, S, C), bilinear (N, C, C), rel (N, S, S, C), mix (S, m), w (N, D, m·C) -> peak (N, M, D) and,
// with stats, per-chunk partial Σ y (chunks, N, K) and Σ y yᵀ (chunks, N, K, K) in float64.
std::vector<torch::Tensor> stem_forward(torch::Tensor pixels, torch::Tensor bilinear, torch::Tensor rel,
                                        torch::Tensor mix, torch::Tensor w, bool stats) {
  using namespace sasa_stem;
  const Dims d = dims_of(pixels, bilinear, rel, mix, w);
  const int64_t chunks = num_chunks(d);
  auto peak = torch::empty({d.N, d.M, d.D}, pixels.options());
  auto f64 = pixels.options().dtype(torch::kDouble);
  auto ysum = stats ? torch::zeros({chunks, d.N, d.K}, f64) : torch::zeros({0}, f64);
  auto gram = stats ? torch::zeros({chunks, d.N, d.K, d.K}, f64) : torch::zeros({0}, f64);
  auto wt = w.transpose(1, 2).contiguous();
  auto relp = rel.permute({0, 2, 3, 1}).contiguous();
  const bool avx2 = STEM_HAVE_AVX2 && sasa_use_avx2();
  AT_DISPATCH_FLOATING_TYPES(pixels.scalar_type(), "sasa_stem_forward", [&] {
    using T = scalar_t;
    const Params<T> prm{bilinear.data_ptr<T>(), relp.data_ptr<T>(), mix.data_ptr<T>(), w.data_ptr<T>(),
                        wt.data_ptr<T>()};
    const T* px = pixels.data_ptr<T>();
    T* pk = peak.data_ptr<T>();
    double* ys = stats ? ysum.data_ptr<double>() : nullptr;
    double* gr = stats ? gram.data_ptr<double>() : nullptr;
    dispatch_dims(d, [&](auto fixed) {
      constexpr bool F = decltype(fixed)::value == 1;
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t b0 = c * kChunk, b1 = std::min(d.M, b0 + kChunk);
          double* ysc = ys ? ys + c * d.N * d.K : nullptr;
          double* grc = gr ? gr + c * d.N * d.K * d.K : nullptr;
#if STEM_HAVE_AVX2
          if (avx2) {
            forward_chunk_avx2<T, F ? 16 : 0, F ? 3 : 0, F ? 4 : 0, F ? 64 : 0>(d, prm, px, pk, ysc, grc, b0, b1);
            continue;
          }
#endif
          forward_chunk_base<T, F ? 16 : 0, F ? 3 : 0, F ? 4 : 0, F ? 64 : 0>(d, prm, px, pk, ysc, grc, b0, b1);
        }
      });
    });
  });
  return {peak, ysum, gram};
}

// Backward of stem_forward: gpeak (N, M, D), gsum (N, K) and ggram (N, K, K) (float64; ignored without
// stats). Returns per-chunk partial gradients of bilinear (chunks, N, C, C), rel (chunks, N, S, S, C),
// mix (chunks, S, m), w (chunks, N, D, K), and the pixels' gradient (M, S, C) (empty unless need_pixels).
std::vector<torch::Tensor> stem_backward(torch::Tensor gpeak, torch::Tensor gsum, torch::Tensor ggram,
                                         torch::Tensor pixels, torch::Tensor bilinear, torch::Tensor rel,
                                         torch::Tensor mix, torch::Tensor w, bool stats, bool need_pixels) {
  using namespace sasa_stem;
  const Dims d = dims_of(pixels, bilinear, rel, mix, w);
  gpeak = gpeak.contiguous();
  TORCH_CHECK(gpeak.scalar_type() == pixels.scalar_type() && gpeak.sizes() == torch::IntArrayRef({d.N, d.M, d.D}),
              "sasa stem kernel: bad peak gradient");
  const int64_t chunks = num_chunks(d);
  auto opts = pixels.options();
  auto gB = torch::zeros({chunks, d.N, d.C, d.C}, opts);
  auto grelp = torch::zeros({chunks, d.N, d.S, d.C, d.S}, opts);
  auto gmix = torch::zeros({chunks, d.S, d.m}, opts);
  auto gw = torch::zeros({chunks, d.N, d.D, d.K}, opts);
  auto gx = need_pixels ? torch::empty_like(pixels) : torch::empty({0}, opts);
  torch::Tensor gs, gsym;
  if (stats) {
    gs = gsum.to(torch::kDouble).contiguous();
    auto g = ggram.to(torch::kDouble);
    gsym = (g + g.transpose(1, 2)).contiguous();
    TORCH_CHECK(gs.numel() == d.N * d.K && gsym.numel() == d.N * d.K * d.K, "sasa stem kernel: bad stats gradient");
  }
  auto wt = w.transpose(1, 2).contiguous();
  auto relp = rel.permute({0, 2, 3, 1}).contiguous();
  const bool avx2 = STEM_HAVE_AVX2 && sasa_use_avx2();
  AT_DISPATCH_FLOATING_TYPES(pixels.scalar_type(), "sasa_stem_backward", [&] {
    using T = scalar_t;
    const Params<T> prm{bilinear.data_ptr<T>(), relp.data_ptr<T>(), mix.data_ptr<T>(), w.data_ptr<T>(),
                        wt.data_ptr<T>()};
    const T* px = pixels.data_ptr<T>();
    const T* gp = gpeak.data_ptr<T>();
    const double* gsp = stats ? gs.data_ptr<double>() : nullptr;
    const double* gyp = stats ? gsym.data_ptr<double>() : nullptr;
    T* gxp = need_pixels ? gx.data_ptr<T>() : nullptr;
    dispatch_dims(d, [&](auto fixed) {
      constexpr bool F = decltype(fixed)::value == 1;
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t b0 = c * kChunk, b1 = std::min(d.M, b0 + kChunk);
          const Grads<T> g{gB.data_ptr<T>() + c * d.N * d.C * d.C, grelp.data_ptr<T>() + c * d.N * d.S * d.S * d.C,
                           gmix.data_ptr<T>() + c * d.S * d.m, gw.data_ptr<T>() + c * d.N * d.D * d.K};
#if STEM_HAVE_AVX2
          if (avx2) {
            backward_chunk_avx2<T, F ? 16 : 0, F ? 3 : 0, F ? 4 : 0, F ? 64 : 0>(d, prm, px, gp, gsp, gyp, gxp, g, b0,
                                                                                b1);
            continue;
          }
#endif
          backward_chunk_base<T, F ? 16 : 0, F ? 3 : 0, F ? 4 : 0, F ? 64 : 0>(d, prm, px, gp, gsp, gyp, gxp, g, b0,
                                                                              b1);
        }
      });
    });
  });
  return {gB, grelp.permute({0, 1, 4, 2, 3}), gmix, gw, gx};
}
