// Checks every CUDA runtime and cuBLASLt call: a failure throws DeviceError with the call's
// file:line, the expression, and the library's own name and message for the status. Host code
// only (kernel launches are checked by the caller with PTRAIN_CUDA_CHECK(cudaGetLastError())).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

namespace ptrain::cuda_detail {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file,
                                     int line);

}  // namespace ptrain::cuda_detail

#define PTRAIN_CUDA_CHECK(expr)                                                      \
  do {                                                                               \
    const cudaError_t ptrain_status_ = (expr);                                       \
    if (ptrain_status_ != cudaSuccess) {                                             \
      ::ptrain::cuda_detail::throw_cuda_error(ptrain_status_, #expr, __FILE__, __LINE__); \
    }                                                                                \
  } while (0)

#define PTRAIN_CUBLAS_CHECK(expr)                                                      \
  do {                                                                                 \
    const cublasStatus_t ptrain_status_ = (expr);                                      \
    if (ptrain_status_ != CUBLAS_STATUS_SUCCESS) {                                     \
      ::ptrain::cuda_detail::throw_cublas_error(ptrain_status_, #expr, __FILE__, __LINE__); \
    }                                                                                  \
  } while (0)

// After a kernel launch: a bad launch configuration is reported here; an error inside the kernel
// surfaces at the next synchronising call, which is checked too.
#define PTRAIN_CUDA_CHECK_LAUNCH() PTRAIN_CUDA_CHECK(cudaGetLastError())
