// Matrix products on cuBLASLt for the CUDA backend, in the Backend's row-major terms. A row-major
// product D (M,N) = op(a)·op(b) is cuBLASLt's column-major Dᵀ (N,M) = op(b)ᵀ·op(a)ᵀ, so b goes in
// as cuBLASLt's A and a as its B, nothing is copied or transposed. The bias is cuBLASLt's BIAS
// epilogue (added per output column, fused into the product's store).
// GELU epilogues (the MLP's c_fc): GELU_AUX(_BIAS) applies bias and GELU in the store and also
// stores the pre-activation (the aux matrix); DGELU(_BGRAD) multiplies the product by GELU's
// derivative at a saved pre-activation (and writes the column sums of the result: the bias
// gradient). cuBLASLt's GELU is the tanh approximation, GPT-2's.
// Inputs fp32 (compute fp32, or TF32 tensor cores when allowed) or bf16 (compute and outputs
// fp32). The algorithm for each shape, layout and pointer alignment is chosen once by cuBLASLt's
// heuristic and kept, so repeated products use the same kernel (bitwise repeatable).
// Host code; one user thread at a time, like the backend that owns it.
#pragma once

#include "worker/model/backend.hpp"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>

namespace ptrain {

enum class LtInput { kFp32, kBf16 };

// What the product's store does besides alpha·product + beta·c (+ bias when `bias` is set).
enum class LtEpilogue {
  kNone,
  kGeluAux,     // d = gelu(product (+ bias)); aux = product (+ bias): the GELU input
  kDGelu,       // d = product ⊙ gelu'(aux)
  kDGeluBgrad,  // the same, and bias_grad (N) = Σ over the M rows of d (written, not added)
};

// Row-major: d (M,N; ldd) = alpha·op(a)·op(b) + beta·c (+ bias (N) when not null). op(a) (M,K),
// op(b) (K,N); a, b of type `input`; c, d, bias fp32. c may be d (in place) or null (beta 0).
struct LtProduct {
  Trans ta = Trans::kNo, tb = Trans::kNo;
  int64_t M = 0, N = 0, K = 0;
  float alpha = 1.0f;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  float beta = 0.0f;
  const float* c = nullptr;
  int64_t ldc = 0;
  float* d = nullptr;
  int64_t ldd = 0;
  const float* bias = nullptr;
  LtInput input = LtInput::kFp32;
  LtEpilogue epilogue = LtEpilogue::kNone;
  float* aux = nullptr;  // (M,N) row-major with row stride ld_aux (a multiple of 8, >= N)
  int64_t ld_aux = 0;
  float* bias_grad = nullptr;  // (N), kDGeluBgrad
};

class LtMatmul {
 public:
  LtMatmul(cudaStream_t stream, bool allow_tf32);
  ~LtMatmul();
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;

  // Queues the product on the stream. M, N, K > 0 (the backend handles empty ones). Returns false
  // (queuing nothing) only for a product with a GELU epilogue that cuBLASLt has no algorithm for
  // (not every type, layout and alignment has one): the caller then runs the unfused sequence.
  // `why` (when not null) then says what cuBLASLt answered. Plain products throw instead.
  bool run(const LtProduct& p, std::string* why = nullptr);

  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what Hopper's kernels ask for

 private:
  cublasLtHandle_t handle_ = nullptr;
  cudaStream_t stream_;
  bool tf32_;
  void* workspace_ = nullptr;
  // The chosen algorithm per key; an epilogue product cuBLASLt refused maps to nothing (and the
  // reason), so it is asked once.
  struct Choice {
    bool found = false;
    cublasLtMatmulAlgo_t algo{};
    std::string why;
  };
  std::map<std::array<int64_t, 21>, Choice> algos_;
};

}  // namespace ptrain
