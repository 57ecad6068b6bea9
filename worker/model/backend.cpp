// The default bodies of the Backend's encoder (BERT) ops: a backend that has not built one stops
// with NotImplementedError naming itself and the op, never a silent no-op.
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
