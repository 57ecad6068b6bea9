// Matrix products on cuBLASLt for the CUDA backend, in the Backend's row-major terms. A row-major
// product D (M,N) = op(a)·op(b) is cuBLASLt's column-major Dᵀ (N,M) = op(b)ᵀ·op(a)ᵀ, so b goes in
// as cuBLASLt's A and a as its B, nothing is copied or transposed. The bias is cuBLASLt's BIAS
// epilogue (added per output column, fused into the product's store).
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

namespace ptrain {

enum class LtInput { kFp32, kBf16 };

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
};

class LtMatmul {
 public:
  LtMatmul(cudaStream_t stream, bool allow_tf32);
  ~LtMatmul();
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;

  // Queues the product on the stream. M, N, K > 0 (the backend handles empty ones).
  void run(const LtProduct& p);

  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what Hopper's kernels ask for

 private:
  cublasLtHandle_t handle_ = nullptr;
  cudaStream_t stream_;
  bool tf32_;
  void* workspace_ = nullptr;
  std::map<std::array<int64_t, 17>, cublasLtMatmulAlgo_t> algos_;
};

}  // namespace ptrain
