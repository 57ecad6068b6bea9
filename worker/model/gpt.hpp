// The GPT-2 model, written once against the Backend interface (backend.hpp). It owns activation
// buffers sized for (max_batch, T) in backend memory; parameters and gradients live in a GptState
// (gpt_state.hpp), also in backend memory, laid out by a ParamLayout. Not thread-safe: one Gpt
// per worker thread.
#pragma once

#include "common/tensor/param_layout.hpp"
#include "worker/model/gpt_state.hpp"
#include "worker/model/step_hooks.hpp"

#include <cstdint>
#include <memory>
#include <span>

namespace ptrain {

struct LossSum {
  double loss_sum = 0.0;  // sum of per-target cross-entropy (nats)
  int64_t tokens = 0;     // targets counted
  int64_t correct = 0;    // BERT only: targets the model's argmax predicted (masked-LM accuracy)
  double mean() const { return tokens ? loss_sum / static_cast<double>(tokens) : 0.0; }
};

class Gpt {
 public:
  // `max_batch` sequences of at most layout.dims().T tokens per call.
  Gpt(const ParamLayout& layout, Backend& backend, int64_t max_batch);
  ~Gpt();
  Gpt(const Gpt&) = delete;
  Gpt& operator=(const Gpt&) = delete;

  // Every call reads the parameters in `state` (same layout and backend as this Gpt).
  // windows: (B, T+1) token ids on the host; inputs are [:, :T], targets [:, 1:].
  // B <= max_batch, T <= dims.T.

  // One micro-batch of the gradient fold (gpt_state.hpp): d(grad_scale · Σ token losses)/dθ is
  // computed from zero and folded into state's gradient sum (state.zero_grads() starts a sum).
  // Gradients of padded vocabulary rows are exactly 0. The loss is downloaded (N floats); the
  // gradient stays in backend memory. `hooks` (optional) hears of each range's forward and
  // backward (step_hooks.hpp).
  LossSum forward_backward(GptState& state, std::span<const int32_t> windows, int64_t B, int64_t T,
                           float grad_scale, StepHooks* hooks = nullptr);

  // Loss only (no gradient work beyond the forward pass).
  LossSum forward_loss(const GptState& state, std::span<const int32_t> windows, int64_t B,
                       int64_t T);

  // logits: (B, T, Vp) on the host for inputs (B, T); padded vocabulary columns are -inf.
  void forward_logits(const GptState& state, std::span<const int32_t> inputs, int64_t B, int64_t T,
                      std::span<float> logits);

  const ParamLayout& layout() const { return layout_; }

 private:
  struct Impl;
  const ParamLayout& layout_;
  std::unique_ptr<Impl> impl_;
};

// Incremental decoding with a KV cache, for `generate`: feed tokens one at a time, get the
// next-token logits (Vp, padded columns -inf) on the host. At most dims.T positions. The
// parameters are read from `state` (same layout and backend) at every step.
class GptDecoder {
 public:
  GptDecoder(const ParamLayout& layout, Backend& backend);
  ~GptDecoder();
  void reset();
  int64_t position() const;
  std::span<const float> step(const GptState& state, int32_t token);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain
