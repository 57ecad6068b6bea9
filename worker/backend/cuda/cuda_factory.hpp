// The CUDA backend's entry point for the backend factory, free of CUDA headers (the factory and
// the rest of the worker compile without the toolkit's include paths). Only declared in a build
// with CUDA (PTRAIN_HAS_CUDA); the class itself is in cuda_backend.hpp.
#pragma once

#include "common/config/config.hpp"
#include "worker/model/backend.hpp"

#include <memory>
#include <string>
#include <utility>

namespace ptrain {

struct CudaBackendOptions {
  int device = 0;  // the N of cuda:N (CUDA's device numbering, after CUDA_VISIBLE_DEVICES)
  DevicePrecision precision = DevicePrecision::kFp32;
  bool allow_tf32 = false;  // fp32 products may use TF32 tensor cores
  // The MLP's bias + GELU (and its backward) in cuBLASLt's epilogues where cuBLASLt has them;
  // false: the separate GELU kernels (tests compare both with the CPU backend).
  bool fuse_epilogues = true;
};

// Opens GPU `options.device`. Throws DeviceError saying which of these failed: no usable CUDA
// driver, no GPU, no GPU with that number, a GPU older than the build's architectures.
// `origin` ("--device", "device.type") starts every message.
std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options,
                                           const std::string& origin);

// Checks that GPU `index` can be opened (driver, device, architecture) without building a backend;
// throws as make_cuda_backend.
void check_cuda_device(int index, const std::string& origin);

// Whether `backend` was made by make_cuda_backend.
bool is_cuda_backend(const Backend& backend);
// For `backend` made by make_cuda_backend (else InternalError): the GPU's dense bf16 matrix
// product rate measured now — cuBLASLt, an n×n·n×n product with bf16 inputs and fp32
// accumulation and output, best of 5 timed runs after 2 untimed — in FLOP/s.
double cuda_bf16_matmul_peak(Backend& backend, int64_t n);
// Device memory of the backend's GPU: bytes in use (all processes) and total.
std::pair<size_t, size_t> cuda_memory(Backend& backend);
// For `backend` made by make_cuda_backend: how its GELU epilogue products ran so far — how many
// fused forward and backward (with the bias gradient, or without), how many fell back to the
// unfused kernels and cuBLASLt's last reason — in one line.
std::string cuda_epilogue_report(Backend& backend);

}  // namespace ptrain
