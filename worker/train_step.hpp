// One worker-side training step, the single place a step's gradient is computed: weights in →
// windows (token ids) → micro-batches of forward/backward folded on the backend → the token-sum
// gradient and the loss out. Used by the worker loop (worker.cpp) and meant for benchmarks and
// tests alike, so that what is timed is the step that trains. No network, no optimizer: the caller
// brings the weights (a pull, or its own vector) and decides what to do with the gradient (push
// it, or hand it to the servers' update code).
//
// Transfers per step: one upload of the weights and one download of the gradient, both through
// the backend's pinned host buffers (weights_host(), grads_host()); per micro-batch only token ids
// go in and N losses come out.
//
// Numerics: every micro-batch's gradient of Σ token losses (grad_scale 1) is computed from zero
// and folded into the step's sum in fp32, in window order (gpt_state.hpp), the fold the servers
// apply to workers' pushes; so splitting a step between workers at micro-batch boundaries gives
// bitwise the same sum.
//
// BERT (layout arch bert): each window becomes a masked [CLS] … [SEP] sequence
// (common/data/mlm.hpp) keyed by (mask_seed = run.seed, step, window index); training windows are
// keyed by their step, validation windows by the fixed evaluation key, so every worker count
// gives the same masks. The loss and the token count are over the predicted positions only (the
// servers' mean is then the mean over the step's predicted positions, as BertForMaskedLM's loss).
//
// Not thread-safe: one TrainStep per worker thread.
#pragma once

#include "common/tensor/param_layout.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/bert.hpp"
#include "worker/model/gpt.hpp"
#include "worker/model/gpt_state.hpp"
#include "worker/step_transfers.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace ptrain {

class BatchLoader;

class TrainStep {
 public:
  // micro_batch: most sequences per forward/backward (>= 1). `layout` and `backend` must outlive
  // the TrainStep.
  TrainStep(const ParamLayout& layout, Backend& backend, int64_t micro_batch,
            uint64_t mask_seed = 0);

  // The pinned host buffer of the weights (layout.total() floats): write the step's weights into
  // it (e.g. pull them there), then upload_weights().
  std::span<float> weights_host() { return weights_host_.span(); }
  // Queues one upload of weights_host() to the backend; the next compute() runs on these weights.
  // weights_host() must not change until compute() returns.
  void upload_weights();
  // Convenience for callers that keep the weights elsewhere: copies `weights` (total() floats)
  // into weights_host() and uploads it.
  void set_weights(std::span<const float> weights);

  // windows: n·(T+1) token ids, n >= 1, T = layout.dims().T; micro-batches of at most
  // micro_batch windows in order. Returns Σ token losses and the token count (n·T); the
  // token-sum gradient is in grads_host() when it returns (every transfer complete).
  // BERT: window_ids (n) and step key the masks (required); GPT ignores them.
  // `transfers` (step_transfers.hpp): with a WeightSource, the caller has NOT uploaded the
  // weights: each range is waited for and uploaded just before the first micro-batch's forward
  // reads it; with a GradientSink, the last micro-batch's ranges are folded, downloaded and handed
  // to it as their backward finishes (GPT; BERT: the whole vector before and after).
  LossSum compute(std::span<const int32_t> windows, int64_t n,
                  std::span<const int64_t> window_ids = {}, int64_t step = 0,
                  const StepTransfers& transfers = {});
  // The same for windows named by index in a token file (worker/batch_loader.hpp).
  LossSum compute(const BatchLoader& loader, std::span<const int64_t> window_ids,
                  int64_t step = 0, const StepTransfers& transfers = {});

  // Validation: Σ token losses and the token count of `n` windows (n·(T+1) token ids, n <=
  // micro_batch) under the uploaded weights — one forward pass, no gradient work. Used with
  // val_batches (common/data/val_loss.hpp) so that the sum order is `ptrain eval`'s.
  // BERT: window_ids (n) key the fixed evaluation masks (required).
  LossSum loss(std::span<const int32_t> windows, int64_t n,
               std::span<const int64_t> window_ids = {});

  // The token-sum gradient of the last compute() (layout.total() floats, pinned host memory);
  // valid until the next compute().
  std::span<const float> grads_host() const { return grads_host_.span(); }

  const ParamLayout& layout() const { return layout_; }
  Backend& backend() const { return be_; }
  int64_t micro_batch() const { return micro_batch_; }
  // Whether LossSum::correct means something (masked-LM accuracy: model.arch bert).
  bool has_accuracy() const { return bert_ != nullptr; }
  // The model state on the backend (parameters and the gradient sum), e.g. for inspection.
  GptState& state() { return state_; }

 private:
  const ParamLayout& layout_;
  Backend& be_;
  int64_t micro_batch_;
  uint64_t mask_seed_;
  std::unique_ptr<Gpt> gpt_;    // model.arch gpt
  std::unique_ptr<Bert> bert_;  // model.arch bert
  GptState state_;
  HostBuffer<float> weights_host_, grads_host_;
  std::vector<int32_t> tokens_;  // compute(loader, ids)'s windows
  std::vector<int32_t> mlm_inputs_, mlm_labels_;  // BERT: one micro-batch's masked sequences

  // BERT: the masked sequences of windows [b, e) of `windows` into mlm_inputs_/mlm_labels_.
  void mask_windows(std::span<const int32_t> windows, int64_t b, int64_t e,
                    std::span<const int64_t> window_ids, int64_t step, bool eval);
};

}  // namespace ptrain
