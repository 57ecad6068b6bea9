// The BERT model (Hugging Face BertForMaskedLM, or BertForSequenceClassification when the layout
// has labels), written once against the Backend interface like the GPT model (gpt.hpp): post-LN
// blocks, exact (erf) GELU, LayerNorm eps 1e-12, bidirectional attention with a key-padding mask,
// the MLM head (dense + GELU + LayerNorm + decoder tied to the word embeddings + its own bias).
// Parameters and gradients live in a GptState (the model state of either architecture: a flat
// vector in backend memory and its gradient fold). No dropout. Token types are all 0 (one
// segment); the token-type table is kept so the weights load as BERT's.
//
// Masked-LM loss = Σ over predicted positions (label ≠ kIgnoreLabel) of the cross-entropy; the
// head runs only on those rows (gathered), as the loss needs nothing else.
// Not thread-safe: one Bert per worker thread.
#pragma once

#include "common/tensor/param_layout.hpp"
#include "worker/model/gpt.hpp"
#include "worker/model/gpt_state.hpp"
#include "worker/model/step_hooks.hpp"

#include <cstdint>
#include <memory>
#include <span>

namespace ptrain {

// A label that is not predicted (PyTorch's cross-entropy ignore_index).
constexpr int32_t kIgnoreLabel = -100;

class Bert {
 public:
  // `max_batch` sequences of at most layout.dims().T tokens per call; layout.dims().arch is bert.
  Bert(const ParamLayout& layout, Backend& backend, int64_t max_batch);
  ~Bert();
  Bert(const Bert&) = delete;
  Bert& operator=(const Bert&) = delete;

  // ---- masked LM (layout without labels) ----------------------------------------------------
  // inputs (B,T): token ids, [MASK] etc. already applied; labels (B,T): the target id at predicted
  // positions, kIgnoreLabel elsewhere. Returns Σ losses over predicted positions, their count
  // (tokens) and how many the argmax got right (correct). forward_backward folds
  // d(grad_scale · Σ losses)/dθ into state's gradient sum (gpt_state.hpp).
  // hooks (may be null; step_hooks.hpp): ranges [0, layer 0) (embeddings), each layer, [head,
  // total) (the MLM head or the pooler and classifier); forward in that order, backward head,
  // layers L-1 … 0, embeddings (the tied decoder's last contribution to the word embeddings is
  // their scatter), each reported once folded into state's sum.
  LossSum mlm_forward_backward(GptState& state, std::span<const int32_t> inputs,
                               std::span<const int32_t> labels, int64_t B, int64_t T,
                               float grad_scale, StepHooks* hooks = nullptr);
  LossSum mlm_loss(const GptState& state, std::span<const int32_t> inputs,
                   std::span<const int32_t> labels, int64_t B, int64_t T);
  // logits (B,T,Vp) on the host for every position; padded vocabulary columns -inf.
  void mlm_logits(const GptState& state, std::span<const int32_t> inputs, int64_t B, int64_t T,
                  std::span<float> logits);

  // ---- sequence classification (layout with num_labels K) -----------------------------------
  // inputs (B,T) with padding; key_valid (B,T) 1 for real tokens, 0 for padding; labels (B) in
  // [0, K). The [CLS] row (position 0) feeds the pooler (dense + tanh) and the classifier.
  LossSum classify_forward_backward(GptState& state, std::span<const int32_t> inputs,
                                    std::span<const int32_t> key_valid,
                                    std::span<const int32_t> labels, int64_t B, int64_t T,
                                    float grad_scale, StepHooks* hooks = nullptr);
  // Loss and correct count; `logits` (B,K) on the host when not empty.
  LossSum classify_loss(const GptState& state, std::span<const int32_t> inputs,
                        std::span<const int32_t> key_valid, std::span<const int32_t> labels,
                        int64_t B, int64_t T, std::span<float> logits = {});

  const ParamLayout& layout() const { return layout_; }

 private:
  struct Impl;
  const ParamLayout& layout_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain
