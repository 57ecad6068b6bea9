// TrainStep: the worker's per-step compute (train_step.hpp).
#include "worker/train_step.hpp"

#include "common/error.hpp"
#include "worker/batch_loader.hpp"

#include <cstring>

namespace ptrain {

TrainStep::TrainStep(const ParamLayout& layout, Backend& backend, int64_t micro_batch)
    : layout_(layout),
      be_(backend),
      micro_batch_(micro_batch),
      gpt_(layout, backend, micro_batch),
      state_(layout, backend),
      weights_host_(backend.alloc_host<float>(layout.total())),
      grads_host_(backend.alloc_host<float>(layout.total())) {}

void TrainStep::upload_weights() { state_.upload_params_async(weights_host_); }

void TrainStep::set_weights(std::span<const float> weights) {
  PTRAIN_ENFORCE(static_cast<int64_t>(weights.size()) == layout_.total(),
                 "weights: expected {} floats, got {}", layout_.total(), weights.size());
  std::memcpy(weights_host_.data(), weights.data(), weights.size_bytes());
  upload_weights();
}

LossSum TrainStep::compute(std::span<const int32_t> windows, int64_t n) {
  const int64_t T = layout_.dims().T;
  PTRAIN_ENFORCE(n >= 0 && static_cast<int64_t>(windows.size()) == n * (T + 1),
                 "windows: expected {}·{} token ids, got {}", n, T + 1, windows.size());
  state_.zero_grads();
  LossSum sum;
  for (const auto& [b, e] : micro_batches(n, micro_batch_)) {
    const std::span<const int32_t> mb = windows.subspan(static_cast<size_t>(b * (T + 1)),
                                                        static_cast<size_t>((e - b) * (T + 1)));
    const LossSum ls = gpt_.forward_backward(state_, mb, e - b, T, 1.0f);
    sum.loss_sum += ls.loss_sum;
    sum.tokens += ls.tokens;
  }
  state_.download_grads_async(grads_host_);
  be_.synchronize();  // the download (and the upload before it) are complete: both buffers free
  return sum;
}

LossSum TrainStep::loss(std::span<const int32_t> windows, int64_t n) {
  const int64_t T = layout_.dims().T;
  PTRAIN_ENFORCE(n >= 1 && n <= micro_batch_ && static_cast<int64_t>(windows.size()) == n * (T + 1),
                 "loss: expected 1..{} windows of {} token ids, got {} ids for {}", micro_batch_,
                 T + 1, windows.size(), n);
  return gpt_.forward_loss(state_, windows, n, T);
}

LossSum TrainStep::compute(const BatchLoader& loader, std::span<const int64_t> window_ids) {
  PTRAIN_ENFORCE(loader.T() == layout_.dims().T, "batch loader T {} but the model's T is {}",
                 loader.T(), layout_.dims().T);
  loader.load(window_ids, tokens_);
  return compute(tokens_, static_cast<int64_t>(window_ids.size()));
}

}  // namespace ptrain
