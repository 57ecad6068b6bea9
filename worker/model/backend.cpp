// The default bodies of the Backend's optional ops: the fused MLP ops and the ticketed transfers
// as the plain in-order sequence they replace (bitwise what a backend without them computes);
// the encoder (BERT) ops stop with NotImplementedError naming the backend and the op, never a
// silent no-op.
#include "worker/model/backend.hpp"

#include "common/error.hpp"

#include <fmt/format.h>

namespace ptrain {
namespace {

[[noreturn]] void missing(const Backend& be, const char* op) {
  throw NotImplementedError(fmt::format(
      "backend {}: op {} (needed by model.arch bert) is not implemented yet", be.name(), op));
}

}  // namespace

void Backend::matmul_gelu_forward(float* out, float* pre, const float* inp, const float* w,
                                  const float* bias, int64_t N, int64_t IC, int64_t OC) {
  matmul_forward(pre, inp, w, bias, N, IC, OC);
  gelu_forward(out, pre, N * OC);
}

void Backend::matmul_gelu_backward(const GeluMlpBackward& g) {
  matmul_backward(g.dpre, g.dw2, g.db2, g.dy, g.h, g.w2, g.N, g.H, g.OC);
  gelu_backward(g.dpre, g.pre, g.dpre, g.N * g.H);
  matmul_backward(g.dinp, g.dw1, g.db1, g.dpre, g.inp, g.w1, g.N, g.IC, g.H);
}

TransferTicket Backend::start_upload(void* dst, const void* src_host, size_t bytes) {
  copy_to_device_async(dst, src_host, bytes);
  return TransferTicket{0};
}
void Backend::order_after(TransferTicket) {}  // the in-order upload is already ahead of later ops
TransferTicket Backend::start_download(void* dst_host, const void* src, size_t bytes) {
  copy_to_host_async(dst_host, src, bytes);
  return TransferTicket{0};
}
bool Backend::transfer_done(TransferTicket) {
  synchronize();
  return true;
}
void Backend::wait_transfer(TransferTicket) { synchronize(); }

void Backend::linear_forward(float*, int64_t, const float*, const float*, const float*, int64_t,
                             int64_t, int64_t) {
  missing(*this, "linear_forward");
}
void Backend::linear_backward(float*, bool, float*, float*, const float*, int64_t, const float*,
                              const float*, int64_t, int64_t, int64_t) {
  missing(*this, "linear_backward");
}
void Backend::layernorm_forward_eps(float*, float*, float*, const float*, const float*,
                                    const float*, int64_t, int64_t, float) {
  missing(*this, "layernorm_forward_eps");
}
void Backend::gelu_erf_forward(float*, const float*, int64_t) { missing(*this, "gelu_erf_forward"); }
void Backend::gelu_erf_backward(float*, const float*, const float*, int64_t) {
  missing(*this, "gelu_erf_backward");
}
void Backend::tanh_forward(float*, const float*, int64_t) { missing(*this, "tanh_forward"); }
void Backend::tanh_backward(float*, const float*, const float*, int64_t) {
  missing(*this, "tanh_backward");
}
void Backend::embedding_forward(float*, const int32_t*, const int32_t*, const float*, const float*,
                                const float*, int64_t, int64_t, int64_t) {
  missing(*this, "embedding_forward");
}
void Backend::embedding_backward(float*, float*, float*, const float*, const int32_t*,
                                 const int32_t*, int64_t, int64_t, int64_t) {
  missing(*this, "embedding_backward");
}
void Backend::gather_rows(float*, const float*, const int32_t*, int64_t, int64_t) {
  missing(*this, "gather_rows");
}
void Backend::scatter_rows(float*, const float*, const int32_t*, int64_t, int64_t) {
  missing(*this, "scatter_rows");
}
void Backend::argmax_rows(int32_t*, const float*, int64_t, int64_t, int64_t) {
  missing(*this, "argmax_rows");
}

}  // namespace ptrain
