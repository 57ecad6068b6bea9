// The public side of the flash attention kernels: validates the shape, launches through
// cuda_attention.cu and turns any CUDA error into an exception naming the kernel, the source
// file:line of the failing call and CUDA's message.
#include "worker/backend/cuda/cuda_attention.hpp"

#include "common/error.hpp"
#include "worker/backend/cuda/cuda_attention_launch.hpp"

#include <cmath>

namespace ptrain::cuda {
namespace {

detail::Dims make_dims(const AttentionShape& s) {
  if (!(s.B > 0 && s.T > 0 && s.C > 0 && s.NH > 0 && s.C % s.NH == 0)) {
    throw InternalError(fmt::format("cuda flash attention: bad shape B={} T={} C={} NH={}", s.B,
                                    s.T, s.C, s.NH));
  }
  const int64_t hd = s.C / s.NH;
  if (hd > detail::kMaxHd) {
    throw NotImplementedError(fmt::format(
        "cuda flash attention: head size {} (n_embd {} / n_head {}) is above the supported {}", hd,
        s.C, s.NH, detail::kMaxHd));
  }
  if (s.NH > 65535 || s.B > 65535 || (s.T + detail::kTile - 1) / detail::kTile > 0x7fffffff) {
    throw InternalError(fmt::format("cuda flash attention: grid too large for B={} T={} NH={}",
                                    s.B, s.T, s.NH));
  }
  return detail::Dims{s.B, s.T, s.C, s.NH, static_cast<int>(hd),
                      1.0f / std::sqrt(static_cast<float>(hd)), s.causal, s.key_valid};
}

void check(const detail::LaunchStatus& st) {
  if (st.err == cudaSuccess) return;
  throw InternalError(fmt::format("worker/backend/cuda/cuda_attention.cu:{}: {}: {} ({})", st.line,
                                  st.what, cudaGetErrorName(st.err),
                                  cudaGetErrorString(st.err)));
}

}  // namespace

void flash_attention_forward(float* out, float* lse, const float* qkv, const AttentionShape& s,
                             cudaStream_t stream) {
  check(detail::launch_forward(out, lse, qkv, make_dims(s), stream));
}

void flash_attention_backward(float* dqkv, float* scratch, const float* dout, const float* out,
                              const float* qkv, const float* lse, const AttentionShape& s,
                              cudaStream_t stream) {
  check(detail::launch_backward(dqkv, scratch, dout, out, qkv, lse, make_dims(s), stream));
}

}  // namespace ptrain::cuda
