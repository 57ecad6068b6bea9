// TrainStep: the worker's per-step compute (train_step.hpp).
#include "worker/train_step.hpp"

#include "common/data/mlm.hpp"
#include "common/error.hpp"
#include "worker/batch_loader.hpp"

#include <cstring>
#include <deque>

namespace ptrain {
namespace {

// The StepHooks compute() hands the model: in the first micro-batch each weight range is uploaded
// once the WeightSource has it (nothing to wait for in later micro-batches: the weights are
// there); in the last micro-batch each gradient range, final in the state's sum, is downloaded
// on the copy queue and handed to the GradientSink once complete — polled after every range
// (never blocking the backward that is being queued), waited for at the end, always in order.
class TransferHooks final : public StepHooks {
 public:
  TransferHooks(const StepTransfers& transfers, GptState& state, const HostBuffer<float>& weights,
                HostBuffer<float>& grads)
      : t_(transfers), state_(state), be_(state.backend()), weights_(weights), grads_(grads) {}

  void set_micro_batch(bool first, bool last) {
    first_ = first;
    last_ = last;
  }

  void before_forward(int64_t begin, int64_t end) override {
    if (!first_ || t_.weights == nullptr) return;
    t_.weights->wait_weights(begin, end);
    // No queued op touches params [begin, end) yet: forward reads each range first here, and the
    // previous compute() ended with a synchronize().
    be_.order_after(state_.start_upload_params(weights_, begin, end));
  }

  void after_backward(int64_t begin, int64_t end) override {
    if (!last_ || t_.gradients == nullptr) return;
    // The sum's range is final: no later op of this step writes it.
    pending_.push_back({begin, end, state_.start_download_grads(grads_, begin, end)});
    deliver(false);
  }

  // Hands completed downloads to the sink in backward order; with `wait`, all of them.
  void deliver(bool wait) {
    while (!pending_.empty()) {
      const Pending p = pending_.front();
      if (wait) {
        be_.wait_transfer(p.ticket);
      } else if (!be_.transfer_done(p.ticket)) {
        return;
      }
      pending_.pop_front();
      t_.gradients->gradient_ready(grads_.span(), p.begin, p.end);
    }
  }

 private:
  struct Pending {
    int64_t begin, end;
    TransferTicket ticket;
  };
  const StepTransfers& t_;
  GptState& state_;
  Backend& be_;
  const HostBuffer<float>& weights_;
  HostBuffer<float>& grads_;
  bool first_ = false, last_ = false;
  std::deque<Pending> pending_;
};

}  // namespace

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

LossSum TrainStep::compute(std::span<const int32_t> windows, int64_t n,
                           std::span<const int64_t> window_ids, int64_t step,
                           const StepTransfers& transfers) {
  const int64_t T = layout_.dims().T;
  PTRAIN_ENFORCE(n >= 0 && static_cast<int64_t>(windows.size()) == n * (T + 1),
                 "windows: expected {}·{} token ids, got {}", n, T + 1, windows.size());
  const bool ranged = transfers.weights != nullptr || transfers.gradients != nullptr;
  TransferHooks hooks(transfers, state_, weights_host_, grads_host_);
  const auto mbs = micro_batches(n, micro_batch_);
  const auto window_span = [&](int64_t b, int64_t e) {
    return windows.subspan(static_cast<size_t>(b * (T + 1)), static_cast<size_t>((e - b) * (T + 1)));
  };
  LossSum sum;
  try {
    state_.zero_grads();
    if (mbs.empty() && transfers.weights != nullptr) {  // no forward to ask: all weights now
      transfers.weights->wait_weights(0, layout_.total());
      be_.order_after(state_.start_upload_params(weights_host_, 0, layout_.total()));
    }
    for (size_t i = 0; i < mbs.size(); ++i) {
      const auto [b, e] = mbs[i];
      hooks.set_micro_batch(i == 0, i + 1 == mbs.size());
      StepHooks* h = ranged ? &hooks : nullptr;
      LossSum ls;
      if (bert_) {
        mask_windows(windows, b, e, window_ids, step, false);
        ls = bert_->mlm_forward_backward(state_, mlm_inputs_, mlm_labels_, e - b, T, 1.0f, h);
      } else {
        ls = gpt_->forward_backward(state_, window_span(b, e), e - b, T, 1.0f, h);
        // The next micro-batch's ids go up while this one's backward runs.
        if (i + 1 < mbs.size()) {
          const auto [nb, ne] = mbs[i + 1];
          gpt_->prefetch(window_span(nb, ne), ne - nb, T);
        }
      }
      sum.loss_sum += ls.loss_sum;
      sum.tokens += ls.tokens;
      sum.correct += ls.correct;
    }
    if (transfers.gradients != nullptr) {
      if (mbs.empty()) {  // no backward to report ranges: the (zero) sum in one piece
        hooks.set_micro_batch(false, true);
        hooks.after_backward(0, layout_.total());
      }
      hooks.deliver(true);
    } else {
      state_.download_grads_async(grads_host_);
    }
    be_.synchronize();  // every transfer is complete: both host buffers are free
  } catch (...) {
    // Leave no copy running into or out of the pinned buffers the caller gets back.
    try {
      be_.synchronize();
    } catch (...) {
    }
    throw;
  }
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
