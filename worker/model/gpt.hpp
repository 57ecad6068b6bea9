// The GPT-2 model, written once against the Backend interface (backend.hpp). It owns activation
// buffers sized for (max_batch, T); parameters and gradients live in caller-owned flat vectors
// described by a ParamLayout. Not thread-safe: one Gpt per worker thread.
#pragma once

#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <memory>
#include <span>

namespace ptrain {

class Backend;

struct LossSum {
  double loss_sum = 0.0;  // sum of per-target cross-entropy (nats)
  int64_t tokens = 0;     // targets counted
  double mean() const { return tokens ? loss_sum / static_cast<double>(tokens) : 0.0; }
};

class Gpt {
 public:
  // `max_batch` sequences of at most layout.dims().T tokens per call.
  Gpt(const ParamLayout& layout, Backend& backend, int64_t max_batch);
  ~Gpt();
  Gpt(const Gpt&) = delete;
  Gpt& operator=(const Gpt&) = delete;

  // windows: (B, T+1) token ids; inputs are [:, :T], targets [:, 1:]. B <= max_batch, T <= dims.T.
  // Adds d(grad_scale · Σ token losses)/dθ into `grads` (+=, so micro-batches accumulate).
  // Gradients of padded vocabulary rows are exactly 0.
  LossSum forward_backward(std::span<const float> params, std::span<float> grads,
                           std::span<const int32_t> windows, int64_t B, int64_t T,
                           float grad_scale);

  // Loss only (no gradient work beyond the forward pass).
  LossSum forward_loss(std::span<const float> params, std::span<const int32_t> windows, int64_t B,
                       int64_t T);

  // logits: (B, T, Vp) for inputs (B, T); padded vocabulary columns are -inf.
  void forward_logits(std::span<const float> params, std::span<const int32_t> inputs, int64_t B,
                      int64_t T, std::span<float> logits);

  const ParamLayout& layout() const { return layout_; }

 private:
  struct Impl;
  const ParamLayout& layout_;
  std::unique_ptr<Impl> impl_;
};

// Incremental decoding with a KV cache, for `generate`: feed tokens one at a time, get the
// next-token logits (Vp, padded columns -inf). At most dims.T positions.
class GptDecoder {
 public:
  GptDecoder(const ParamLayout& layout, Backend& backend);
  ~GptDecoder();
  void reset();
  int64_t position() const;
  std::span<const float> step(std::span<const float> params, int32_t token);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain
