// Scalar arithmetic shared by the CPU backend and the CUDA kernels: one definition of each small
// formula (e^x, one step of online softmax, the softmax backward), compiled as host code for the
// CPU backend and as __host__ __device__ code under nvcc. The CPU tests (PyTorch parity of both
// models, the attention op tests) therefore exercise the same per-element math the GPU runs; only
// the indexing, tiling and memory movement around it differ per backend.
//
// Plain C++ with no standard-library calls beyond <cmath>'s logf, <cstdint> and a host-only memcpy, so nvcc accepts it
// in device code. Not a tensor library: each function works on one element or one row state.
#pragma once

#include <cmath>
#include <cstdint>
#if !defined(__CUDA_ARCH__)
#include <cstring>
#endif

#if defined(__CUDACC__)
#define PTRAIN_HD __host__ __device__ __forceinline__
#else
#define PTRAIN_HD [[gnu::always_inline]] inline
#endif

namespace ptrain::kmath {

// -∞ as a constant that needs no <limits> in device code.
PTRAIN_HD float neg_inf() { return -__builtin_huge_valf(); }

PTRAIN_HD float bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  // memcpy, not std::bit_cast: nvcc's host pass compiles .cu files as C++17. Compilers turn it
  // into a register move (it still vectorises).
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// e^x in fp32: Cephes-style range reduction and a degree-6 polynomial, ≤ 2 ulp on [-87, 88],
// clamped outside (so e^-∞ is e^-87 ≈ 1.6e-38, not 0: callers that need an exact 0 test for -∞).
// n = round(x·log2 e) by the 1.5·2^23 trick, which vectorises on the CPU (no floor call).
PTRAIN_HD float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// ---- attention ---------------------------------------------------------------------------------
// Scores s = q·k/√hd of query row t against key s_idx, with invisible keys set to -∞: later
// positions when causal, and keys whose key_valid entry is 0 (padding). key_valid_row may be null.
PTRAIN_HD bool key_visible(bool causal, const int32_t* key_valid_row, int64_t t, int64_t s) {
  if (causal && s > t) return false;
  return key_valid_row == nullptr || key_valid_row[s] != 0;
}

// Where one (batch b, head h) finds its operands. qkv (B,T,3C) has row stride 3C: Q at column h·hd,
// K at C + h·hd, V at 2C + h·hd (qkv_at: the offset of its Q block, for dqkv as well); arrays of
// shape (B,T,C) (out, dout) have it at io_at, row stride C; (B,NH,T) arrays (lse, D) at stat_at.
struct HeadView {
  const float* q;
  const float* k;
  const float* v;
  const int32_t* valid;  // (T) key mask of batch b, or null
  int64_t qkv_at, io_at, stat_at;
};
PTRAIN_HD HeadView head_view(const float* qkv, const int32_t* key_valid, int64_t b, int64_t h,
                             int64_t T, int64_t C, int64_t NH) {
  const int64_t hd = C / NH;
  const int64_t qkv_at = b * T * 3 * C + h * hd;
  return HeadView{qkv + qkv_at,    qkv + qkv_at + C,   qkv + qkv_at + 2 * C,
                  key_valid != nullptr ? key_valid + b * T : nullptr,
                  qkv_at,          b * T * C + h * hd, (b * NH + h) * T};
}

// The running state of one query row under online softmax: m the largest score seen so far,
// l = Σ e^(s − m) over the scores seen so far. A key tile is folded in by
//   corr = begin_tile(max of the tile's scores);  acc ·= corr;  l ·= corr (done here);
//   p_j = prob(s_j);  l += Σ p_j;  acc += Σ p_j·v_j
// and after the last tile out = acc / l, lse = m + log l. A tile whose scores are all -∞ leaves
// the state unchanged (corr = 1), so rows may see fully masked tiles first.
struct OnlineSoftmaxRow {
  float m = neg_inf();
  float l = 0.0f;

  PTRAIN_HD float begin_tile(float tile_max) {
    if (!(tile_max > m)) return 1.0f;  // also covers tile_max = -∞
    const float corr = m == neg_inf() ? 0.0f : exp_approx(m - tile_max);
    m = tile_max;
    l *= corr;
    return corr;
  }
  // e^(s − m) for a score of the current tile; exactly 0 for a masked (-∞) score.
  PTRAIN_HD float prob(float s) const { return s == neg_inf() ? 0.0f : exp_approx(s - m); }
  // The row's log-sum-exp (what backward recomputes probabilities from). A row needs at least
  // one visible key; with none it is -∞.
  PTRAIN_HD float lse() const { return l > 0.0f ? m + logf(l) : neg_inf(); }
  PTRAIN_HD float inv_l() const { return l > 0.0f ? 1.0f / l : 0.0f; }
};

// Backward: the probability recomputed from the saved log-sum-exp (exactly 0 for a masked score).
PTRAIN_HD float prob_from_lse(float s, float lse) {
  return s == neg_inf() ? 0.0f : exp_approx(s - lse);
}

// Backward through softmax and the 1/√hd scale: dS = P ∘ (dP − D)·scale, where dP = dO·vᵀ and
// D = rowsum(dO ∘ O) = Σ_j P_j·dP_j (the same quantity, computed from the saved output).
PTRAIN_HD float score_grad(float p, float dp, float d, float scale) { return p * (dp - d) * scale; }

}  // namespace ptrain::kmath
