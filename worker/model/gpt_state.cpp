// GptState: parameter and gradient buffers in backend memory, and the micro-batch fold
// (gpt_state.hpp says why the fold has this exact shape).
#include "worker/model/gpt_state.hpp"

#include "common/error.hpp"

namespace ptrain {

GptState::GptState(const ParamLayout& layout, Backend& backend)
    : layout_(layout), be_(backend), params_(backend.alloc<float>(layout.total())) {}

void GptState::check_size(size_t n, const char* what) const {
  PTRAIN_ENFORCE(static_cast<int64_t>(n) == layout_.total(), "{}: expected {} floats, got {}",
                 what, layout_.total(), n);
}

void GptState::upload_params(std::span<const float> host) {
  check_size(host.size(), "upload_params");
  be_.copy_to_device(params_.data(), host.data(), host.size_bytes());
}

void GptState::upload_params_async(const HostBuffer<float>& host) {
  check_size(static_cast<size_t>(host.size()), "upload_params_async");
  be_.copy_to_device_async(params_.data(), host.data(), static_cast<size_t>(host.size_bytes()));
}

void GptState::upload_params_range_async(const HostBuffer<float>& host, int64_t begin,
                                         int64_t end) {
  check_size(static_cast<size_t>(host.size()), "upload_params_range_async");
  PTRAIN_ENFORCE(0 <= begin && begin <= end && end <= layout_.total(),
                 "upload of [{}, {}) outside [0, {})", begin, end, layout_.total());
  be_.copy_to_device_async(params_.data() + begin, host.data() + begin,
                           static_cast<size_t>(end - begin) * sizeof(float));
}

void GptState::zero_grads() {
  if (grads_.empty()) grads_ = be_.alloc<float>(layout_.total());
  be_.fill(grads_.data(), 0.0f, layout_.total());
  folded_ = 0;
  open_ = false;
}

float* GptState::micro_batch_grads() {
  PTRAIN_ENFORCE(folded_ >= 0, "zero_grads() must start a gradient sum before a micro-batch");
  PTRAIN_ENFORCE(!open_, "the previous micro-batch was not folded in");
  open_ = true;
  if (folded_ == 0) return grads_.data();  // already zero
  if (mb_grads_.empty()) mb_grads_ = be_.alloc<float>(layout_.total());
  be_.fill(mb_grads_.data(), 0.0f, layout_.total());
  return mb_grads_.data();
}

void GptState::fold_micro_batch() {
  PTRAIN_ENFORCE(open_, "fold_micro_batch() without micro_batch_grads()");
  if (range_folded_ == 0) {
    if (folded_ > 0) be_.residual_forward(grads_.data(), grads_.data(), mb_grads_.data(), layout_.total());
  } else {
    PTRAIN_ENFORCE(range_folded_ == layout_.total(),
                   "fold_range() covered {} of {} gradient elements", range_folded_,
                   layout_.total());
  }
  range_folded_ = 0;
  open_ = false;
  ++folded_;
}

void GptState::fold_range(int64_t begin, int64_t end) {
  PTRAIN_ENFORCE(open_, "fold_range() without micro_batch_grads()");
  PTRAIN_ENFORCE(0 <= begin && begin <= end && end <= layout_.total(),
                 "fold of [{}, {}) outside [0, {})", begin, end, layout_.total());
  if (folded_ > 0) {
    be_.residual_forward(grads_.data() + begin, grads_.data() + begin, mb_grads_.data() + begin,
                         end - begin);
  }
  range_folded_ += end - begin;
}

void GptState::download_grads_range_async(HostBuffer<float>& host, int64_t begin, int64_t end) {
  check_size(static_cast<size_t>(host.size()), "download_grads_range_async");
  PTRAIN_ENFORCE(0 <= begin && begin <= end && end <= layout_.total(),
                 "download of [{}, {}) outside [0, {})", begin, end, layout_.total());
  be_.copy_to_host_async(host.data() + begin, grads_.data() + begin,
                         static_cast<size_t>(end - begin) * sizeof(float));
}

void GptState::download_grads(std::span<float> host) {
  check_size(host.size(), "download_grads");
  PTRAIN_ENFORCE(folded_ >= 0 && !open_, "download_grads() needs a complete gradient sum");
  be_.copy_to_host(host.data(), grads_.data(), host.size_bytes());
}

void GptState::download_grads_async(HostBuffer<float>& host) {
  check_size(static_cast<size_t>(host.size()), "download_grads_async");
  PTRAIN_ENFORCE(folded_ >= 0 && !open_, "download_grads_async() needs a complete gradient sum");
  be_.copy_to_host_async(host.data(), grads_.data(), static_cast<size_t>(host.size_bytes()));
}

}  // namespace ptrain
