// CPU backend kernels. Matrix products go to OpenBLAS (row-major cblas_sgemm with the transposes
// chosen so nothing is copied); everything else is an OpenMP loop whose inner loop is written for
// the vectoriser (`omp simd`, 16 independent lanes for reductions).
//
// Determinism: no OpenMP `reduction` clause anywhere. A reduction over rows (bias gradients,
// LayerNorm parameter gradients) is done per column block by one thread, rows in order, in
// 64-row chunks whose partials are added in chunk order; a reduction within a row uses 16 lanes
// combined in a fixed tree. The order therefore depends only on the shapes.
// Every sgemm call is made inside an OpenMP region (one output block per thread, or the loop over
// (batch, head) in attention), where OpenBLAS runs single-threaded (it checks omp_in_parallel()):
// each output element comes from one call over the whole K, so products are deterministic too.
// Products below kSerialGemm flops are one plain call (OpenBLAS keeps those single-threaded).
#include "worker/backend/cpu/cpu_backend.hpp"

#include "common/error.hpp"
#include "worker/backend/kernel_math.hpp"

#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

namespace ptrain {
namespace {

constexpr float kLayerNormEps = 1e-5f;
constexpr int kLanes = 16;          // accumulators per in-row reduction
constexpr int64_t kRowChunk = 64;   // rows per partial sum in column reductions
constexpr int64_t kColBlock = 64;   // columns per task in column reductions
constexpr int64_t kAttRows = 64;    // query rows per attention tile
constexpr int64_t kAttCols = 128;   // key columns per attention tile
constexpr int64_t kRowAlign = 16;   // row blocks of a product per thread are multiples of this
constexpr int64_t kColAlign = 64;   // column blocks likewise (also the column-sum block width)
constexpr int64_t kSerialGemm = int64_t{1} << 18;  // M·N·K below which a product runs on one thread
constexpr float kGeluS = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluK = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;  // 1/sqrt(2·pi)

// One definition of e^x for this backend and the CUDA kernels (worker/backend/kernel_math.hpp).
[[gnu::always_inline]] inline float fast_exp(float x) { return kmath::exp_approx(x); }

inline float reduce_lanes(float* acc) {
  for (int w = kLanes / 2; w >= 1; w /= 2) {
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return acc[0];
}

inline float row_max(const float* x, int64_t n) {
  float acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  }
  for (; i < n; ++i) acc[0] = x[i] > acc[0] ? x[i] : acc[0];
  float m = acc[0];
  for (int j = 1; j < kLanes; ++j) m = acc[j] > m ? acc[j] : m;
  return m;
}

inline float row_sum(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j];
  }
  for (; i < n; ++i) acc[i - (n / kLanes) * kLanes] += x[i];
  return reduce_lanes(acc);
}

inline float row_dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) acc[i - (n / kLanes) * kLanes] += a[i] * b[i];
  return reduce_lanes(acc);
}

// x[i] = exp(x[i] − mx) for i < n; returns Σ x[i] (lanes, fixed order).
inline float exp_shift_sum(float* x, float mx, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const float e = fast_exp(x[i + j] - mx);
      x[i + j] = e;
      acc[j] += e;
    }
  }
  for (; i < n; ++i) {
    const float e = fast_exp(x[i] - mx);
    x[i] = e;
    acc[i - (n / kLanes) * kLanes] += e;
  }
  return reduce_lanes(acc);
}

// Σ exp(x[i] − mx) without storing.
inline float exp_shift_sum_const(const float* x, float mx, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) acc[j] += fast_exp(x[i + j] - mx);
  }
  for (; i < n; ++i) acc[i - (n / kLanes) * kLanes] += fast_exp(x[i] - mx);
  return reduce_lanes(acc);
}

inline void scale_row(float* x, float s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

// Scores of query row t against keys c0..c1-1 (row[j] is key c0 + j): invisible keys set to -∞
// (kmath::key_visible: later keys when causal, padding keys).
inline void mask_scores(float* row, bool causal, const int32_t* valid, int64_t t, int64_t c0,
                        int64_t c1) {
  const float ninf = kmath::neg_inf();
  if (valid != nullptr || (causal && c1 > t + 1)) {
    for (int64_t s = c0; s < c1; ++s) {
      if (!kmath::key_visible(causal, valid, t, s)) row[s - c0] = ninf;
    }
  }
}

// row[j] = st.prob(row[j]) (e^(s − m), 0 for -∞); returns Σ row[j] (lanes, fixed order).
inline float probs_sum(float* x, const kmath::OnlineSoftmaxRow& st, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const float e = st.prob(x[i + j]);
      x[i + j] = e;
      acc[j] += e;
    }
  }
  for (; i < n; ++i) {
    const float e = st.prob(x[i]);
    x[i] = e;
    acc[i - (n / kLanes) * kLanes] += e;
  }
  return reduce_lanes(acc);
}

struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
  bool empty() const { return end <= begin; }
};

// This thread's share of [0, n) in the current OpenMP region: balanced, in units of `align`.
Range part(int64_t n, int64_t align) {
  const int64_t parts = omp_get_num_threads(), idx = omp_get_thread_num();
  const int64_t units = (n + align - 1) / align;
  return {std::min(n, units * idx / parts * align), std::min(n, units * (idx + 1) / parts * align)};
}

// Whether to split an (M,N) product by rows rather than columns across threads: rows unless M is
// both smaller than N and too short for each thread to get several hundred rows (measured on
// the benchmark shapes: docs/benchmarks.md).
bool prefer_rows(int64_t M, int64_t N, int threads) { return M >= N || M >= 512 * threads; }

CBLAS_TRANSPOSE cblas_trans(Trans t) { return t == Trans::kYes ? CblasTrans : CblasNoTrans; }

void sgemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // c = beta·c
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, cblas_trans(ta), cblas_trans(tb), static_cast<blasint>(M),
              static_cast<blasint>(N), static_cast<blasint>(K), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : nt_(threads > 0 ? threads : omp_get_num_procs()) {
    openblas_set_num_threads(nt_);
  }

  std::string name() const override {
    return fmt::format("cpu (OpenBLAS {}, {} threads)", openblas_get_corename(), nt_);
  }
  int threads() const override { return nt_; }
  bool host_accessible() const override { return true; }

  // Large buffers (activations, logits) are 2 MiB-aligned and advised as transparent huge pages:
  // the products stream through tens of MB, and with 4 KiB pages the TLB misses show (THP is
  // commonly in `madvise` mode, so nothing happens without the advice).
  void* allocate_bytes(size_t bytes) override {
    constexpr size_t kHuge = size_t{2} << 20;
    if (bytes >= 2 * kHuge) {
      const size_t n = (bytes + kHuge - 1) / kHuge * kHuge;
      void* p = std::aligned_alloc(kHuge, n);
      if (p == nullptr) throw std::bad_alloc();
      madvise(p, n, MADV_HUGEPAGE);  // advice only: failure is harmless
      return p;
    }
    const size_t n = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, n);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void free_bytes(void* p) noexcept override { std::free(p); }
  // Host and backend memory are the same here: transfer buffers are ordinary allocations, and
  // every op completes before it returns, so an "asynchronous" copy is a memcpy done at once.
  void* allocate_host_bytes(size_t bytes) override { return allocate_bytes(bytes); }
  void free_host_bytes(void* p) noexcept override { std::free(p); }
  void copy_to_device(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_to_device_async(void* dst, const void* src, size_t bytes) override {
    copy_to_device(dst, src, bytes);
  }
  void copy_to_host_async(void* dst, const void* src, size_t bytes) override {
    copy_to_host(dst, src, bytes);
  }
  void copy(float* dst, const float* src, int64_t n) override {
    if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  }
  void fill(float* dst, float value, int64_t n) override {
#pragma omp parallel for num_threads(nt_) schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) dst[i] = value;
  }
  void fill_columns(float* dst, float value, int64_t rows, int64_t col_begin, int64_t col_end,
                    int64_t ld) override {
    if (col_end <= col_begin) return;
#pragma omp parallel for num_threads(nt_) schedule(static) if (rows > 64)
    for (int64_t r = 0; r < rows; ++r) {
      float* row = dst + r * ld;
      for (int64_t c = col_begin; c < col_end; ++c) row[c] = value;
    }
  }
  void synchronize() override {}

  // Every product is split into one block of rows or columns of c per thread, each block a
  // single-threaded sgemm (OpenBLAS does not thread inside an OpenMP region): one barrier per
  // product instead of OpenBLAS's per-panel synchronisation, which costs a third of the CPU time
  // at these sizes (docs/benchmarks.md). Each element of c is computed by one call over the whole
  // K, so the result does not depend on the partition.
  void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* a,
            int64_t lda, const float* b, int64_t ldb, float beta, float* c,
            int64_t ldc) override {
    if (M * N * K < kSerialGemm || nt_ == 1) {
      sgemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
    }
    const bool by_rows = prefer_rows(M, N, nt_);
#pragma omp parallel num_threads(nt_)
    {
      if (by_rows) {
        const Range r = part(M, kRowAlign);
        if (!r.empty()) {
          sgemm(ta, tb, r.size(), N, K, alpha, ta == Trans::kNo ? a + r.begin * lda : a + r.begin,
                lda, b, ldb, beta, c + r.begin * ldc, ldc);
        }
      } else {
        const Range r = part(N, kColAlign);
        if (!r.empty()) {
          sgemm(ta, tb, M, r.size(), K, alpha, a, lda,
                tb == Trans::kNo ? b + r.begin : b + r.begin * ldb, ldb, beta, c + r.begin, ldc);
        }
      }
    }
  }

  void matmul_forward(float* out, const float* inp, const float* w, const float* bias, int64_t N,
                      int64_t IC, int64_t OC) override {
    matmul_residual_forward(out, nullptr, inp, w, bias, N, IC, OC);
  }

  void matmul_residual_forward(float* out, const float* residual, const float* inp, const float* w,
                               const float* bias, int64_t N, int64_t IC, int64_t OC) override {
    // Rows split across threads; each thread presets its rows of out to bias (+ residual) and
    // accumulates its product onto them (beta = 1).
    const bool serial = N * IC * OC < kSerialGemm || nt_ == 1;
#pragma omp parallel num_threads(serial ? 1 : nt_)
    {
      const Range r = part(N, kRowAlign);
      if (!r.empty()) {
        float beta = 0.0f;
        if (bias != nullptr || residual != nullptr) {
          for (int64_t n = r.begin; n < r.end; ++n) {
            float* o = out + n * OC;
            if (residual != nullptr && bias != nullptr) {
              const float* x = residual + n * OC;
#pragma omp simd
              for (int64_t c = 0; c < OC; ++c) o[c] = x[c] + bias[c];
            } else if (residual != nullptr) {
              if (o != residual + n * OC) std::memcpy(o, residual + n * OC, OC * sizeof(float));
            } else {
              std::memcpy(o, bias, OC * sizeof(float));
            }
          }
          beta = 1.0f;
        }
        sgemm(Trans::kNo, Trans::kNo, r.size(), OC, IC, 1.0f, inp + r.begin * IC, IC, w, OC, beta,
              out + r.begin * OC, OC);
      }
    }
  }

  void matmul_backward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                       const float* w, int64_t N, int64_t IC, int64_t OC) override {
    // dinp by rows of N; dw by rows or columns (prefer_rows); dbias by columns of OC (each
    // column's sum stays with one thread).
    const bool serial = N * IC * OC < kSerialGemm || nt_ == 1;
#pragma omp parallel num_threads(serial ? 1 : nt_)
    {
      if (dinp != nullptr) {
        const Range r = part(N, kRowAlign);
        if (!r.empty()) {
          sgemm(Trans::kNo, Trans::kYes, r.size(), IC, OC, 1.0f, dout + r.begin * OC, OC, w, OC,
                0.0f, dinp + r.begin * IC, IC);
        }
      }
      if (prefer_rows(IC, OC, nt_)) {
        const Range r = part(IC, kRowAlign);
        if (!r.empty()) {
          sgemm(Trans::kYes, Trans::kNo, r.size(), OC, N, 1.0f, inp + r.begin, IC, dout, OC, 1.0f,
                dw + r.begin * OC, OC);
        }
      } else {
        const Range c = part(OC, kColAlign);
        if (!c.empty()) {
          sgemm(Trans::kYes, Trans::kNo, IC, c.size(), N, 1.0f, inp, IC, dout + c.begin, OC, 1.0f,
                dw + c.begin, OC);
        }
      }
      if (dbias != nullptr) {
        const Range c = part(OC, kColAlign);
        if (!c.empty()) column_sums_add(dbias, dout, N, c.begin, c.end, OC);
      }
    }
  }

  void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                       int64_t B, int64_t T, int64_t C) override {
    const int64_t N = B * T;
#pragma omp parallel for num_threads(nt_) schedule(static) if (N * C > (1 << 15))
    for (int64_t n = 0; n < N; ++n) {
      const float* e = wte + static_cast<int64_t>(tokens[n]) * C;
      const float* p = wpe + (n % T) * C;
      float* o = out + n * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = e[c] + p[c];
    }
  }

  void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                        int64_t B, int64_t T, int64_t C) override {
    // Column blocks in parallel; within a block rows in order n = 0..N-1: fixed summation order.
    const int64_t N = B * T;
    const int64_t nblk = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel for num_threads(nt_) schedule(static) if (N * C > (1 << 14))
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t c0 = blk * kColBlock;
      const int64_t w = std::min(kColBlock, C - c0);
      for (int64_t n = 0; n < N; ++n) {
        const float* d = dout + n * C + c0;
        float* e = dwte + static_cast<int64_t>(tokens[n]) * C + c0;
        float* p = dwpe + (n % T) * C + c0;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) {
          e[j] += d[j];
          p[j] += d[j];
        }
      }
    }
  }

  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                         const float* b, int64_t N, int64_t C) override {
    layernorm_forward_eps(out, mean, rstd, inp, w, b, N, C, kLayerNormEps);
  }

  void layernorm_forward_eps(float* out, float* mean, float* rstd, const float* inp,
                             const float* w, const float* b, int64_t N, int64_t C,
                             float eps) override {
    const float inv_c = 1.0f / static_cast<float>(C);
#pragma omp parallel for num_threads(nt_) schedule(static) if (N * C > (1 << 14))
    for (int64_t n = 0; n < N; ++n) {
      const float* x = inp + n * C;
      const float m = row_sum(x, C) * inv_c;
      float acc[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= C; i += kLanes) {
#pragma omp simd
        for (int j = 0; j < kLanes; ++j) {
          const float d = x[i + j] - m;
          acc[j] += d * d;
        }
      }
      for (; i < C; ++i) acc[i - (C / kLanes) * kLanes] += (x[i] - m) * (x[i] - m);
      const float var = reduce_lanes(acc) * inv_c;
      const float s = 1.0f / std::sqrt(var + eps);
      float* o = out + n * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = (x[c] - m) * s * w[c] + b[c];
      if (mean != nullptr) mean[n] = m;
      if (rstd != nullptr) rstd[n] = s;
    }
  }

  void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                          const float* w, const float* mean, const float* rstd, int64_t N,
                          int64_t C) override {
    const float inv_c = 1.0f / static_cast<float>(C);
    const int64_t nblk = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel num_threads(nt_) if (N * C > (1 << 14))
    {
#pragma omp for schedule(static) nowait
      for (int64_t n = 0; n < N; ++n) {
        const float* x = inp + n * C;
        const float* d = dout + n * C;
        const float m = mean[n];
        const float s = rstd[n];
        float a1[kLanes] = {}, a2[kLanes] = {};
        int64_t i = 0;
        for (; i + kLanes <= C; i += kLanes) {
#pragma omp simd
          for (int j = 0; j < kLanes; ++j) {
            const float dn = w[i + j] * d[i + j];
            a1[j] += dn;
            a2[j] += dn * (x[i + j] - m) * s;
          }
        }
        for (; i < C; ++i) {
          const float dn = w[i] * d[i];
          a1[i - (C / kLanes) * kLanes] += dn;
          a2[i - (C / kLanes) * kLanes] += dn * (x[i] - m) * s;
        }
        const float dn_mean = reduce_lanes(a1) * inv_c;
        const float dn_xhat_mean = reduce_lanes(a2) * inv_c;
        float* di = dinp + n * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float xhat = (x[c] - m) * s;
          di[c] += (w[c] * d[c] - dn_mean - xhat * dn_xhat_mean) * s;
        }
      }
      // Parameter gradients: column blocks, rows in 64-row chunks, partials in chunk order.
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < nblk; ++blk) {
        const int64_t c0 = blk * kColBlock;
        const int64_t cw = std::min(kColBlock, C - c0);
        float tw[kColBlock] = {}, tb[kColBlock] = {};
        for (int64_t r0 = 0; r0 < N; r0 += kRowChunk) {
          float pw[kColBlock] = {}, pb[kColBlock] = {};
          const int64_t r1 = std::min(N, r0 + kRowChunk);
          for (int64_t n = r0; n < r1; ++n) {
            const float* x = inp + n * C + c0;
            const float* d = dout + n * C + c0;
            const float m = mean[n];
            const float s = rstd[n];
#pragma omp simd
            for (int64_t j = 0; j < cw; ++j) {
              pw[j] += d[j] * ((x[j] - m) * s);
              pb[j] += d[j];
            }
          }
#pragma omp simd
          for (int64_t j = 0; j < cw; ++j) {
            tw[j] += pw[j];
            tb[j] += pb[j];
          }
        }
        for (int64_t j = 0; j < cw; ++j) {
          dw[c0 + j] += tw[j];
          db[c0 + j] += tb[j];
        }
      }
    }
  }

  void residual_forward(float* out, const float* a, const float* b, int64_t n) override {
#pragma omp parallel for simd num_threads(nt_) schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
  }

  // 0.5·(1 + tanh(u)) is written as the logistic σ(2u) = 1/(1 + e^{−2u}): no cancellation for
  // negative u, where 1 + tanh(u) would lose all its digits.
  void gelu_forward(float* out, const float* inp, int64_t n) override {
#pragma omp parallel for simd num_threads(nt_) schedule(static) if (n > (1 << 14))
    for (int64_t i = 0; i < n; ++i) {
      const float x = inp[i];
      const float u = kGeluS * (x + kGeluK * x * x * x);
      out[i] = x / (1.0f + fast_exp(-2.0f * u));
    }
  }

  // d/dx x·σ(2u) = σ + x·σ·(1 − σ)·2·du/dx, with 1 − σ = e·σ for e = e^{−2u}.
  void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) override {
#pragma omp parallel for simd num_threads(nt_) schedule(static) if (n > (1 << 14))
    for (int64_t i = 0; i < n; ++i) {
      const float x = inp[i];
      const float u = kGeluS * (x + kGeluK * x * x * x);
      const float e = fast_exp(-2.0f * u);
      const float s = 1.0f / (1.0f + e);
      const float dudx = kGeluS * (1.0f + 3.0f * kGeluK * x * x);
      const float local = s + 2.0f * x * dudx * s * (e * s);
      dinp[i] = local * dout[i];
    }
  }

  // Flash-style, one (batch, head) per thread: query tiles of kAttRows rows against key tiles of
  // kAttCols keys; scores of one tile live in a per-thread buffer, the softmax is folded in tile
  // by tile (online softmax, kmath::OnlineSoftmaxRow) with the output accumulated in place in
  // `out`, and only each row's log-sum-exp is kept for backward. Causal rows skip key tiles that
  // lie wholly after them.
  void attention_forward(float* out, float* lse, const float* qkv,
                         const AttentionShape& sh) override {
    const int64_t B = sh.B, T = sh.T, C = sh.C, NH = sh.NH;
    const int64_t hd = C / NH;
    const int64_t C3 = 3 * C;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel num_threads(nt_)
    {
      std::vector<float> tile(static_cast<size_t>(kAttRows * kAttCols));
      kmath::OnlineSoftmaxRow rows[kAttRows];
#pragma omp for collapse(2) schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < NH; ++h) {
          const kmath::HeadView hv = kmath::head_view(qkv, sh.key_valid, b, h, T, C, NH);
          const float *q = hv.q, *k = hv.k, *v = hv.v;
          const int32_t* valid = hv.valid;
          float* o = out + hv.io_at;
          float* L = lse + hv.stat_at;
          for (int64_t r0 = 0; r0 < T; r0 += kAttRows) {
            const int64_t r1 = std::min(T, r0 + kAttRows);
            for (int64_t t = r0; t < r1; ++t) {
              rows[t - r0] = {};
              std::fill_n(o + t * C, hd, 0.0f);
            }
            const int64_t kend = sh.causal ? r1 : T;
            for (int64_t c0 = 0; c0 < kend; c0 += kAttCols) {
              const int64_t c1 = std::min(kend, c0 + kAttCols);
              const int64_t w = c1 - c0;
              float* S = tile.data();
              sgemm(Trans::kNo, Trans::kYes, r1 - r0, w, hd, scale, q + r0 * C3, C3, k + c0 * C3,
                    C3, 0.0f, S, w);
              for (int64_t t = r0; t < r1; ++t) {
                float* row = S + (t - r0) * w;
                mask_scores(row, sh.causal, valid, t, c0, c1);
                kmath::OnlineSoftmaxRow& st = rows[t - r0];
                const float corr = st.begin_tile(row_max(row, w));
                if (corr != 1.0f) scale_row(o + t * C, corr, hd);
                st.l += probs_sum(row, st, w);
              }
              sgemm(Trans::kNo, Trans::kNo, r1 - r0, hd, w, 1.0f, S, w, v + c0 * C3, C3, 1.0f,
                    o + r0 * C, C);
            }
            for (int64_t t = r0; t < r1; ++t) {
              scale_row(o + t * C, rows[t - r0].inv_l(), hd);
              L[t] = rows[t - r0].lse();
            }
          }
        }
      }
    }
  }

  // Recomputes each tile's probabilities from the saved log-sum-exp: P = e^(S − lse),
  // dP = dO·Vᵀ, dS = P∘(dP − D)·scale with D = rowsum(dO∘O); then dQ += dS·K, dK += dSᵀ·Q,
  // dV += Pᵀ·dO. One (batch, head) per thread and tiles in a fixed order: deterministic.
  void attention_backward(float* dqkv, float* scratch, const float* dout, const float* out,
                          const float* qkv, const float* lse, const AttentionShape& sh) override {
    const int64_t B = sh.B, T = sh.T, C = sh.C, NH = sh.NH;
    const int64_t hd = C / NH;
    const int64_t C3 = 3 * C;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel num_threads(nt_)
    {
      std::vector<float> ptile(static_cast<size_t>(kAttRows * kAttCols));
      std::vector<float> dtile(static_cast<size_t>(kAttRows * kAttCols));
#pragma omp for collapse(2) schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < NH; ++h) {
          const kmath::HeadView hv = kmath::head_view(qkv, sh.key_valid, b, h, T, C, NH);
          const float *q = hv.q, *k = hv.k, *v = hv.v;
          const int32_t* valid = hv.valid;
          float* dq = dqkv + hv.qkv_at;
          float* dk = dq + C;
          float* dv = dq + 2 * C;
          const float* dO = dout + hv.io_at;
          const float* O = out + hv.io_at;
          const float* L = lse + hv.stat_at;
          float* D = scratch + hv.stat_at;
          for (int64_t t = 0; t < T; ++t) {
            D[t] = row_dot(dO + t * C, O + t * C, hd);
            std::fill_n(dq + t * C3, hd, 0.0f);
            std::fill_n(dk + t * C3, hd, 0.0f);
            std::fill_n(dv + t * C3, hd, 0.0f);
          }
          for (int64_t r0 = 0; r0 < T; r0 += kAttRows) {
            const int64_t r1 = std::min(T, r0 + kAttRows);
            const int64_t m = r1 - r0;
            const int64_t kend = sh.causal ? r1 : T;
            for (int64_t c0 = 0; c0 < kend; c0 += kAttCols) {
              const int64_t c1 = std::min(kend, c0 + kAttCols);
              const int64_t w = c1 - c0;
              float* P = ptile.data();
              float* dS = dtile.data();
              sgemm(Trans::kNo, Trans::kYes, m, w, hd, scale, q + r0 * C3, C3, k + c0 * C3, C3,
                    0.0f, P, w);
              sgemm(Trans::kNo, Trans::kYes, m, w, hd, 1.0f, dO + r0 * C, C, v + c0 * C3, C3,
                    0.0f, dS, w);
              for (int64_t t = r0; t < r1; ++t) {
                float* prow = P + (t - r0) * w;
                float* drow = dS + (t - r0) * w;
                mask_scores(prow, sh.causal, valid, t, c0, c1);
                const float lt = L[t], dt = D[t];
#pragma omp simd
                for (int64_t j = 0; j < w; ++j) {
                  prow[j] = kmath::prob_from_lse(prow[j], lt);
                  drow[j] = kmath::score_grad(prow[j], drow[j], dt, scale);
                }
              }
              sgemm(Trans::kNo, Trans::kNo, m, hd, w, 1.0f, dS, w, k + c0 * C3, C3, 1.0f,
                    dq + r0 * C3, C3);
              sgemm(Trans::kYes, Trans::kNo, w, hd, m, 1.0f, dS, w, q + r0 * C3, C3, 1.0f,
                    dk + c0 * C3, C3);
              sgemm(Trans::kYes, Trans::kNo, w, hd, m, 1.0f, P, w, dO + r0 * C, C, 1.0f,
                    dv + c0 * C3, C3);
            }
          }
        }
      }
    }
  }

  void attention_decode(float* out, float* scratch, const float* q, const float* kcache,
                        const float* vcache, int64_t npos, int64_t ld, int64_t C,
                        int64_t NH) override {
    const int64_t hd = C / NH;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    for (int64_t h = 0; h < NH; ++h) {
      const float* qh = q + h * hd;
      for (int64_t j = 0; j < npos; ++j) scratch[j] = row_dot(qh, kcache + j * ld + h * hd, hd) * scale;
      const float mx = row_max(scratch, npos);
      const float sum = exp_shift_sum(scratch, mx, npos);
      scale_row(scratch, 1.0f / sum, npos);
      float* oh = out + h * hd;
      for (int64_t i = 0; i < hd; ++i) oh[i] = 0.0f;
      for (int64_t j = 0; j < npos; ++j) {
        const float p = scratch[j];
        const float* vj = vcache + j * ld + h * hd;
#pragma omp simd
        for (int64_t i = 0; i < hd; ++i) oh[i] += p * vj[i];
      }
    }
  }

  void crossentropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                            int64_t V, int64_t ld) override {
#pragma omp parallel for num_threads(nt_) schedule(static) if (N * V > (1 << 14))
    for (int64_t n = 0; n < N; ++n) {
      const float* row = logits + n * ld;
      const float mx = row_max(row, V);
      const float sum = exp_shift_sum_const(row, mx, V);
      losses[n] = std::log(sum) - (row[targets[n]] - mx);
    }
  }

  void crossentropy_forward_backward(float* losses, float* logits, const int32_t* targets,
                                     float dloss, int64_t N, int64_t V, int64_t ld) override {
#pragma omp parallel for num_threads(nt_) schedule(static) if (N * V > (1 << 14))
    for (int64_t n = 0; n < N; ++n) {
      float* row = logits + n * ld;
      const int32_t y = targets[n];
      const float mx = row_max(row, V);
      const float zy = row[y] - mx;
      const float sum = exp_shift_sum(row, mx, V);
      losses[n] = std::log(sum) - zy;
      scale_row(row, dloss / sum, V);
      row[y] -= dloss;
    }
  }


  // ---- encoder (BERT) ops -------------------------------------------------------------------

  void linear_forward(float* out, int64_t ldo, const float* inp, const float* w, const float* bias,
                      int64_t N, int64_t IC, int64_t OC) override {
    // As matmul_residual_forward: rows split across threads, each presets its rows to the bias
    // and accumulates its product onto them.
    const bool serial = N * IC * OC < kSerialGemm || nt_ == 1;
#pragma omp parallel num_threads(serial ? 1 : nt_)
    {
      const Range r = part(N, kRowAlign);
      if (!r.empty()) {
        float beta = 0.0f;
        if (bias != nullptr) {
          for (int64_t n = r.begin; n < r.end; ++n) {
            std::memcpy(out + n * ldo, bias, static_cast<size_t>(OC) * sizeof(float));
          }
          beta = 1.0f;
        }
        sgemm(Trans::kNo, Trans::kYes, r.size(), OC, IC, 1.0f, inp + r.begin * IC, IC, w, IC, beta,
              out + r.begin * ldo, ldo);
      }
    }
  }

  void linear_backward(float* dinp, bool accumulate_dinp, float* dw, float* dbias,
                       const float* dout, int64_t lddo, const float* inp, const float* w,
                       int64_t N, int64_t IC, int64_t OC) override {
    const bool serial = N * IC * OC < kSerialGemm || nt_ == 1;
#pragma omp parallel num_threads(serial ? 1 : nt_)
    {
      if (dinp != nullptr) {
        const Range r = part(N, kRowAlign);
        if (!r.empty()) {
          sgemm(Trans::kNo, Trans::kNo, r.size(), IC, OC, 1.0f, dout + r.begin * lddo, lddo, w, IC,
                accumulate_dinp ? 1.0f : 0.0f, dinp + r.begin * IC, IC);
        }
      }
      if (prefer_rows(OC, IC, nt_)) {
        const Range r = part(OC, kRowAlign);
        if (!r.empty()) {
          sgemm(Trans::kYes, Trans::kNo, r.size(), IC, N, 1.0f, dout + r.begin, lddo, inp, IC, 1.0f,
                dw + r.begin * IC, IC);
        }
      } else {
        const Range c = part(IC, kColAlign);
        if (!c.empty()) {
          sgemm(Trans::kYes, Trans::kNo, OC, c.size(), N, 1.0f, dout, lddo, inp + c.begin, IC, 1.0f,
                dw + c.begin, IC);
        }
      }
      if (dbias != nullptr) {
        const Range c = part(OC, kColAlign);
        if (!c.empty()) column_sums_add(dbias, dout, N, c.begin, c.end, lddo);
      }
    }
  }

  void gelu_erf_forward(float* out, const float* inp, int64_t n) override {
#pragma omp parallel for num_threads(nt_) schedule(static) if (n > (1 << 14))
    for (int64_t i = 0; i < n; ++i) {
      const float x = inp[i];
      out[i] = 0.5f * x * (1.0f + std::erf(x * kInvSqrt2));
    }
  }

  // gelu'(x) = Φ(x) + x·φ(x), Φ(x) = 0.5·(1 + erf(x/√2)), φ(x) = e^{−x²/2}/√(2π).
  void gelu_erf_backward(float* dinp, const float* inp, const float* dout, int64_t n) override {
#pragma omp parallel for num_threads(nt_) schedule(static) if (n > (1 << 14))
    for (int64_t i = 0; i < n; ++i) {
      const float x = inp[i];
      const float cdf = 0.5f * (1.0f + std::erf(x * kInvSqrt2));
      const float pdf = std::exp(-0.5f * x * x) * kInvSqrt2Pi;
      dinp[i] = dout[i] * (cdf + x * pdf);
    }
  }

  void tanh_forward(float* out, const float* inp, int64_t n) override {
#pragma omp parallel for num_threads(nt_) schedule(static) if (n > (1 << 14))
    for (int64_t i = 0; i < n; ++i) out[i] = std::tanh(inp[i]);
  }

  void tanh_backward(float* dinp, const float* out, const float* dout, int64_t n) override {
#pragma omp parallel for simd num_threads(nt_) schedule(static) if (n > (1 << 14))
    for (int64_t i = 0; i < n; ++i) dinp[i] = dout[i] * (1.0f - out[i] * out[i]);
  }

  void embedding_forward(float* out, const int32_t* tokens, const int32_t* types, const float* wte,
                         const float* wpe, const float* wtt, int64_t B, int64_t T,
                         int64_t C) override {
    const int64_t N = B * T;
#pragma omp parallel for num_threads(nt_) schedule(static) if (N * C > (1 << 15))
    for (int64_t n = 0; n < N; ++n) {
      const float* e = wte + static_cast<int64_t>(tokens[n]) * C;
      const float* y = wtt + static_cast<int64_t>(types != nullptr ? types[n] : 0) * C;
      const float* p = wpe + (n % T) * C;
      float* o = out + n * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = (e[c] + y[c]) + p[c];
    }
  }

  void embedding_backward(float* dwte, float* dwpe, float* dwtt, const float* dout,
                          const int32_t* tokens, const int32_t* types, int64_t B, int64_t T,
                          int64_t C) override {
    // As encoder_backward: column blocks in parallel, rows in order within a block.
    const int64_t N = B * T;
    const int64_t nblk = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel for num_threads(nt_) schedule(static) if (N * C > (1 << 14))
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t c0 = blk * kColBlock;
      const int64_t w = std::min(kColBlock, C - c0);
      for (int64_t n = 0; n < N; ++n) {
        const float* d = dout + n * C + c0;
        float* e = dwte + static_cast<int64_t>(tokens[n]) * C + c0;
        float* y = dwtt + static_cast<int64_t>(types != nullptr ? types[n] : 0) * C + c0;
        float* p = dwpe + (n % T) * C + c0;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) {
          e[j] += d[j];
          y[j] += d[j];
          p[j] += d[j];
        }
      }
    }
  }

  void gather_rows(float* dst, const float* src, const int32_t* idx, int64_t M,
                   int64_t C) override {
#pragma omp parallel for num_threads(nt_) schedule(static) if (M * C > (1 << 15))
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(dst + m * C, src + static_cast<int64_t>(idx[m]) * C,
                  static_cast<size_t>(C) * sizeof(float));
    }
  }

  void scatter_rows(float* dst, const float* src, const int32_t* idx, int64_t M,
                    int64_t C) override {
#pragma omp parallel for num_threads(nt_) schedule(static) if (M * C > (1 << 15))
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(dst + static_cast<int64_t>(idx[m]) * C, src + m * C,
                  static_cast<size_t>(C) * sizeof(float));
    }
  }

  void argmax_rows(int32_t* out, const float* logits, int64_t N, int64_t V, int64_t ld) override {
#pragma omp parallel for num_threads(nt_) schedule(static) if (N * V > (1 << 15))
    for (int64_t n = 0; n < N; ++n) {
      const float* row = logits + n * ld;
      int64_t best = 0;
      for (int64_t v = 1; v < V; ++v) best = row[v] > row[best] ? v : best;
      out[n] = static_cast<int32_t>(best);
    }
  }

 private:
  // dst[c] += Σ_n src[n·ld + c] for c in [c_begin, c_end), by the calling thread: 64-column
  // blocks, rows in 64-row chunks, chunk partials added in order.
  static void column_sums_add(float* dst, const float* src, int64_t N, int64_t c_begin,
                              int64_t c_end, int64_t ld) {
    for (int64_t c0 = c_begin; c0 < c_end; c0 += kColBlock) {
      const int64_t cw = std::min(kColBlock, c_end - c0);
      float tot[kColBlock] = {};
      for (int64_t r0 = 0; r0 < N; r0 += kRowChunk) {
        float part_sum[kColBlock] = {};
        const int64_t r1 = std::min(N, r0 + kRowChunk);
        for (int64_t n = r0; n < r1; ++n) {
          const float* s = src + n * ld + c0;
#pragma omp simd
          for (int64_t j = 0; j < cw; ++j) part_sum[j] += s[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < cw; ++j) tot[j] += part_sum[j];
      }
      for (int64_t j = 0; j < cw; ++j) dst[c0 + j] += tot[j];
    }
  }

  int nt_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  PTRAIN_ENFORCE(threads >= 0, "thread count must be >= 0, got {}", threads);
  return std::make_unique<CpuBackend>(threads);
}

namespace cpu_detail {
float exp_approx(float x) { return fast_exp(x); }
}  // namespace cpu_detail

}  // namespace ptrain
