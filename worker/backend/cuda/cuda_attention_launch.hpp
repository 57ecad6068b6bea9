// Internal seam between the attention kernels (cuda_attention.cu, compiled by nvcc) and their
// public entry points (cuda_attention.cpp, plain C++: validation and exceptions). Not for other
// callers: use cuda_attention.hpp.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace ptrain::cuda::detail {

constexpr int kTile = 32;    // query rows / key rows per block and per tile (one warp)
constexpr int kMaxHd = 128;  // largest head size the shared-memory plan allows

// Problem sizes as the kernels see them (validated by cuda_attention.cpp).
struct Dims {
  int64_t B, T, C, NH;
  int hd;
  float scale;               // 1/√hd
  bool causal;
  const int32_t* key_valid;  // (B,T) device memory, or null
};

// The outcome of a launch sequence: the first failing call, its name and source line.
struct LaunchStatus {
  cudaError_t err = cudaSuccess;
  const char* what = "";
  int line = 0;
};

LaunchStatus launch_forward(float* out, float* lse, const float* qkv, const Dims& d,
                            cudaStream_t stream);
LaunchStatus launch_backward(float* dqkv, float* scratch, const float* dout, const float* out,
                             const float* qkv, const float* lse, const Dims& d,
                             cudaStream_t stream);

}  // namespace ptrain::cuda::detail
