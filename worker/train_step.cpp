// TrainStep: the worker's per-step compute (train_step.hpp).
#include "worker/train_step.hpp"

#include "common/data/mlm.hpp"
#include "common/error.hpp"
#include "worker/batch_loader.hpp"

#include <cstring>

namespace ptrain {

TrainStep::TrainStep(const ParamLayout& layout, Backend& backend, int64_t micro_batch,
                     uint64_t mask_seed)
    : layout_(layout),
      be_(backend),
      micro_batch_(micro_batch),
      mask_seed_(mask_seed),
      gpt_(layout.dims().arch == ModelArch::kGpt ? std::make_unique<Gpt>(layout, backend, micro_batch)
                                                 : nullptr),
      bert_(layout.dims().arch == ModelArch::kBert
                ? std::make_unique<Bert>(layout, backend, micro_batch)
                : nullptr),
      state_(layout, backend),
      weights_host_(backend.alloc_host<float>(layout.total())),
      grads_host_(backend.alloc_host<float>(layout.total())) {
  if (layout.dims().num_labels > 0) {
    throw ConfigError(fmt::format(
        "model.num_labels is {}: this is a sequence classifier (`ptrain finetune` trains and "
        "evaluates it); masked-LM training and evaluation need a checkpoint without one",
        layout.dims().num_labels));
  }
}

void TrainStep::upload_weights() { state_.upload_params_async(weights_host_); }

void TrainStep::set_weights(std::span<const float> weights) {
  PTRAIN_ENFORCE(static_cast<int64_t>(weights.size()) == layout_.total(),
                 "weights: expected {} floats, got {}", layout_.total(), weights.size());
  std::memcpy(weights_host_.data(), weights.data(), weights.size_bytes());
  upload_weights();
}

void TrainStep::mask_windows(std::span<const int32_t> windows, int64_t b, int64_t e,
                             std::span<const int64_t> window_ids, int64_t step, bool eval) {
  const int64_t T = layout_.dims().T;
  PTRAIN_ENFORCE(static_cast<int64_t>(window_ids.size()) >= e,
                 "BERT needs the window ids of its windows (got {} for {})", window_ids.size(), e);
  const BertTokens tok = bert_tokens(layout_.dims());
  mlm_inputs_.resize(static_cast<size_t>((e - b) * T));
  mlm_labels_.resize(mlm_inputs_.size());
  for (int64_t i = b; i < e; ++i) {
    const int64_t w = window_ids[static_cast<size_t>(i)];
    const uint64_t key = eval ? mlm_mask_key(0, kEvalMaskStep, w) : mlm_mask_key(mask_seed_, step, w);
    const auto out = static_cast<size_t>((i - b) * T);
    mlm_example(windows.subspan(static_cast<size_t>(i * (T + 1)), static_cast<size_t>(T + 1)), T,
                tok, key, std::span<int32_t>(mlm_inputs_).subspan(out, static_cast<size_t>(T)),
                std::span<int32_t>(mlm_labels_).subspan(out, static_cast<size_t>(T)));
  }
}

namespace {

// Turns the model's range events into the step's transfers: the first micro-batch waits for
// and uploads each weight range before reading it; the last one folds, downloads and hands out
// each gradient range once its backward is done.
class TransferHooks final : public StepHooks {
 public:
  TransferHooks(const StepTransfers& t, GptState& state, Backend& be, HostBuffer<float>& weights,
                HostBuffer<float>& grads)
      : t_(t), state_(state), be_(be), weights_(weights), grads_(grads) {}
  bool first = false, last = false;
  int64_t waited = 0, handed = 0;  // elements through each side, for the fallbacks

  void before_forward(int64_t begin, int64_t end) override {
    if (!first || t_.weights == nullptr) return;
    t_.weights->wait_weights(begin, end);
    state_.upload_params_range_async(weights_, begin, end);
    waited += end - begin;
  }
  void after_backward(int64_t begin, int64_t end) override {
    if (!last || t_.gradients == nullptr) return;
    state_.fold_range(begin, end);
    state_.download_grads_range_async(grads_, begin, end);
    be_.synchronize();
    t_.gradients->gradient_ready(grads_.span(), begin, end);
    handed += end - begin;
  }

 private:
  const StepTransfers& t_;
  GptState& state_;
  Backend& be_;
  HostBuffer<float>& weights_;
  HostBuffer<float>& grads_;
};

}  // namespace

LossSum TrainStep::compute(std::span<const int32_t> windows, int64_t n,
                           std::span<const int64_t> window_ids, int64_t step,
                           const StepTransfers& transfers) {
  const int64_t T = layout_.dims().T;
  const int64_t total = layout_.total();
  PTRAIN_ENFORCE(n >= 0 && static_cast<int64_t>(windows.size()) == n * (T + 1),
                 "windows: expected {}·{} token ids, got {}", n, T + 1, windows.size());
  TransferHooks hooks(transfers, state_, be_, weights_host_, grads_host_);
  if (transfers.weights != nullptr && (bert_ || n == 0)) {  // no per-range hooks: all at once
    transfers.weights->wait_weights(0, total);
    upload_weights();
    hooks.waited = total;
  }
  state_.zero_grads();
  LossSum sum;
  const auto mbs = micro_batches(n, micro_batch_);
  for (size_t i = 0; i < mbs.size(); ++i) {
    const auto [b, e] = mbs[i];
    hooks.first = i == 0 && hooks.waited == 0;
    hooks.last = i + 1 == mbs.size();
    const std::span<const int32_t> mb = windows.subspan(static_cast<size_t>(b * (T + 1)),
                                                        static_cast<size_t>((e - b) * (T + 1)));
    LossSum ls;
    if (bert_) {
      mask_windows(windows, b, e, window_ids, step, false);
      ls = bert_->mlm_forward_backward(state_, mlm_inputs_, mlm_labels_, e - b, T, 1.0f);
    } else {
      ls = gpt_->forward_backward(state_, mb, e - b, T, 1.0f, &hooks);
    }
    sum.loss_sum += ls.loss_sum;
    sum.tokens += ls.tokens;
    sum.correct += ls.correct;
  }
  PTRAIN_ENFORCE(transfers.weights == nullptr || hooks.waited == total,
                 "the step waited for {} of {} weights", hooks.waited, total);
  if (transfers.gradients != nullptr && hooks.handed == total) {
    be_.synchronize();  // every range was downloaded already
    return sum;
  }
  PTRAIN_ENFORCE(hooks.handed == 0, "the step handed out {} of {} gradients", hooks.handed, total);
  state_.download_grads_async(grads_host_);
  be_.synchronize();  // the download (and the upload before it) are complete: both buffers free
  if (transfers.gradients != nullptr) transfers.gradients->gradient_ready(grads_host_.span(), 0, total);
  return sum;
}

LossSum TrainStep::loss(std::span<const int32_t> windows, int64_t n,
                        std::span<const int64_t> window_ids) {
  const int64_t T = layout_.dims().T;
  PTRAIN_ENFORCE(n >= 1 && n <= micro_batch_ && static_cast<int64_t>(windows.size()) == n * (T + 1),
                 "loss: expected 1..{} windows of {} token ids, got {} ids for {}", micro_batch_,
                 T + 1, windows.size(), n);
  if (bert_) {
    mask_windows(windows, 0, n, window_ids, 0, true);
    return bert_->mlm_loss(state_, mlm_inputs_, mlm_labels_, n, T);
  }
  return gpt_->forward_loss(state_, windows, n, T);
}

LossSum TrainStep::compute(const BatchLoader& loader, std::span<const int64_t> window_ids,
                           int64_t step, const StepTransfers& transfers) {
  PTRAIN_ENFORCE(loader.T() == layout_.dims().T, "batch loader T {} but the model's T is {}",
                 loader.T(), layout_.dims().T);
  loader.load(window_ids, tokens_);
  return compute(tokens_, static_cast<int64_t>(window_ids.size()), window_ids, step, transfers);
}

}  // namespace ptrain
