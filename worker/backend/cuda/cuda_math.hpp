// The arithmetic of the CUDA kernels (cuda_kernels.cu), one element or one reduction step at a
// time, as functions that compile both for the GPU (nvcc: __host__ __device__) and for the host
// (g++: plain inline). The kernels keep only indexing, shared memory and warp shuffles; the CPU-
// side test (tests/worker/test_cuda_math.cpp) runs these same functions against the CPU backend,
// the oracle, so the math is checked on machines without a GPU.
// Formulas follow worker/backend/cpu/cpu_backend.cpp term for term (same order of operations);
// results differ from it only where the CPU uses its polynomial exp and the GPU expf / erff.
// Header-only, no CUDA include: C++17.
#pragma once

#include <math.h>

#include <cstdint>

#if defined(__CUDACC__)
#define PTRAIN_HD __host__ __device__ __forceinline__
#else
#define PTRAIN_HD inline
#endif

namespace ptrain::cuda_math {

constexpr float kGeluS = 0.7978845608028654f;      // sqrt(2/pi)
constexpr float kGeluK = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;  // 1/sqrt(2·pi)
constexpr float kExpClamp = 88.0f;                  // expf(88) is finite; the CPU clamps there too

// e^x with the argument clamped above at 88, as the CPU's exp: keeps e·σ finite in GELU's
// backward for very negative x (inf·0 would be NaN).
PTRAIN_HD float exp_clamped(float x) { return expf(x < kExpClamp ? x : kExpClamp); }

// ---- GELU (tanh approximation): x·σ(2u), u = √(2/π)(x + 0.044715x³) ---------------------------
PTRAIN_HD float gelu_tanh(float x) {
  const float u = kGeluS * (x + kGeluK * x * x * x);
  return x / (1.0f + exp_clamped(-2.0f * u));
}
// d/dx x·σ(2u) = σ + x·σ·(1 − σ)·2·du/dx, with 1 − σ = e·σ for e = e^{−2u}.
PTRAIN_HD float gelu_tanh_grad(float x) {
  const float u = kGeluS * (x + kGeluK * x * x * x);
  const float e = exp_clamped(-2.0f * u);
  const float s = 1.0f / (1.0f + e);
  const float dudx = kGeluS * (1.0f + 3.0f * kGeluK * x * x);
  return s + 2.0f * x * dudx * s * (e * s);
}

// ---- exact GELU: 0.5·x·(1 + erf(x/√2)) ---------------------------------------------------------
PTRAIN_HD float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * kInvSqrt2)); }
// Φ(x) + x·φ(x).
PTRAIN_HD float gelu_erf_grad(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
  const float pdf = expf(-0.5f * x * x) * kInvSqrt2Pi;
  return cdf + x * pdf;
}

// tanh' from the saved output.
PTRAIN_HD float tanh_grad_from_out(float out) { return 1.0f - out * out; }

// ---- LayerNorm, one element ---------------------------------------------------------------------
// Forward: (x − mean)·rstd·w + b.
PTRAIN_HD float layernorm_out(float x, float mean, float rstd, float w, float b) {
  return (x - mean) * rstd * w + b;
}
PTRAIN_HD float layernorm_rstd(float var, float eps) { return 1.0f / sqrtf(var + eps); }
// Backward, the input gradient's term for one element, given the row's two means
// dn_mean = mean(w·dout) and dn_xhat_mean = mean(w·dout·x̂).
PTRAIN_HD float layernorm_dinp(float x, float d, float w, float mean, float rstd, float dn_mean,
                               float dn_xhat_mean) {
  const float xhat = (x - mean) * rstd;
  return (w * d - dn_mean - xhat * dn_xhat_mean) * rstd;
}

// ---- online softmax statistics (cross-entropy) --------------------------------------------------
// The running maximum m and Σ e^{x − m} of the values seen so far; {−inf, 0} is empty. Values are
// folded in one at a time (push) and partial results combined (combine), in any fixed tree.
struct MaxSum {
  float m;
  float s;
};
PTRAIN_HD MaxSum maxsum_empty() { return {-INFINITY, 0.0f}; }
PTRAIN_HD MaxSum maxsum_push(MaxSum a, float x) {
  if (x > a.m) {
    a.s = a.s * expf(a.m - x) + 1.0f;  // e^{−inf} = 0 for the first value
    a.m = x;
  } else {
    a.s += expf(x - a.m);
  }
  return a;
}
// combine(a, b) and combine(b, a) are the same bits: the operands are put in a canonical order
// first (larger m, then larger s), so a compiler fusing the multiply-add (nvcc does by default)
// cannot make the two lanes of a butterfly disagree.
PTRAIN_HD MaxSum maxsum_combine(MaxSum a, MaxSum b) {
  if (a.s == 0.0f) return b;  // empty sides carry m = −inf: e^{−inf − (−inf)} would be NaN
  if (b.s == 0.0f) return a;
  if (b.m > a.m || (b.m == a.m && b.s > a.s)) {
    const MaxSum t = a;
    a = b;
    b = t;
  }
  return {a.m, a.s + b.s * expf(b.m - a.m)};
}
// −log softmax(x)[y] from the row's statistics and x_y.
PTRAIN_HD float crossentropy_loss(MaxSum st, float xy) { return logf(st.s) - (xy - st.m); }
// d(dloss·loss)/dx_i = dloss·(softmax_i − [i = y]); `scale` = dloss / st.s.
PTRAIN_HD float crossentropy_grad(float x, bool is_target, MaxSum st, float scale, float dloss) {
  const float g = expf(x - st.m) * scale;
  return is_target ? g - dloss : g;
}

// ---- argmax: the larger value wins, the smaller index on a tie ----------------------------------
struct ArgMax {
  float v;
  int64_t i;
};
PTRAIN_HD ArgMax argmax_combine(ArgMax a, ArgMax b) {
  if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
  return a;
}

}  // namespace ptrain::cuda_math
