// The throwing half of cuda_check.hpp.
#include "worker/backend/cuda/cuda_check.hpp"

#include "common/error.hpp"

#include <fmt/format.h>

namespace ptrain::cuda_detail {

void throw_cuda_error(cudaError_t status, const char* expr, const char* file, int line) {
  throw DeviceError(fmt::format("{}:{}: CUDA error {} ({}): {}", file, line,
                                cudaGetErrorName(status), cudaGetErrorString(status), expr));
}

void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line) {
  throw DeviceError(fmt::format("{}:{}: cuBLASLt error {} ({}): {}", file, line,
                                cublasLtGetStatusName(status), cublasLtGetStatusString(status),
                                expr));
}

}  // namespace ptrain::cuda_detail
