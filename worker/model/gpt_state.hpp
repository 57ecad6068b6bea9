// The state of one GPT in a backend's memory: its flat parameter vector and its gradient sum (both
// laid out by the ParamLayout), plus the micro-batch gradient buffer the fold needs. The model
// (gpt.hpp) reads parameters from here and adds gradients into here; the host only moves whole
// vectors in and out: one upload of the weights and one download of the gradient per step.
//
// Gradient fold (what makes 1 vs 2 workers bitwise equal): after zero_grads(), the first
// micro-batch's gradient is accumulated straight into the (zeroed) sum; every later micro-batch's
// is computed from zero in a second buffer and then added into the sum element by element in fp32
// (Backend::residual_forward). That is the same left fold, in window order, that the servers apply
// to workers' pushes in worker-id order (paramserver/aggregator.hpp), so a step split between
// workers at micro-batch boundaries sums exactly the same fp32 values in the same order.
//
// Not thread-safe: one GptState per worker thread, used with Gpt objects on the same backend.
#pragma once

#include "common/tensor/param_layout.hpp"
#include "worker/model/backend.hpp"

#include <cstdint>
#include <span>

namespace ptrain {

class GptState {
 public:
  // Allocates the parameter vector (contents unspecified until an upload). Gradient buffers are
  // allocated on first use, so an inference-only state never pays for them.
  GptState(const ParamLayout& layout, Backend& backend);
  GptState(const GptState&) = delete;
  GptState& operator=(const GptState&) = delete;

  const ParamLayout& layout() const { return layout_; }
  Backend& backend() const { return be_; }

  // ---- parameters: layout.total() floats in backend memory ---------------------------------
  const float* params() const { return params_.data(); }
  // Blocking upload from any host memory (total() floats).
  void upload_params(std::span<const float> host);
  // Queued upload from this backend's pinned memory; complete at backend().synchronize(), and
  // ordered before every later op. `host` must not change until then.
  void upload_params_async(const HostBuffer<float>& host);
  // The same for host[begin, end) only (a step whose weights arrive range by range).
  void upload_params_range_async(const HostBuffer<float>& host, int64_t begin, int64_t end);

  // ---- gradients: the sum of the micro-batch gradients since zero_grads() ---------------------
  // Starts a new sum (fills it with zeros); the next micro-batch is the fold's first.
  void zero_grads();
  // Micro-batches folded into the sum since zero_grads().
  int64_t micro_batches() const { return folded_; }
  // The sum in backend memory (allocated by zero_grads()).
  const float* grads() const { return grads_.data(); }
  // Blocking download of the sum into any host memory (total() floats).
  void download_grads(std::span<float> host);
  // Queued download into this backend's pinned memory; `host` holds the sum only after
  // backend().synchronize().
  void download_grads_async(HostBuffer<float>& host);

  // ---- used by Gpt::forward_backward: one micro-batch of the fold ----------------------------
  // The zeroed buffer the next micro-batch's gradient is accumulated into: the sum itself for the
  // first micro-batch since zero_grads(), else the micro-batch buffer. Then fold_micro_batch().
  float* micro_batch_grads();
  // Adds the micro-batch buffer into the sum (nothing to do for the first micro-batch), except
  // the ranges fold_range() already added.
  void fold_micro_batch();
  // Adds the open micro-batch's [begin, end) into the sum now (a range whose backward is done, so
  // that it can leave before the rest): the same element-wise fp32 add, so the sum is bitwise the
  // one fold_micro_batch() makes. Ranges folded this way must cover [0, total) exactly once by
  // the micro-batch's fold_micro_batch().
  void fold_range(int64_t begin, int64_t end);
  // Queued download of the sum's [begin, end) into host[begin, end).
  void download_grads_range_async(HostBuffer<float>& host, int64_t begin, int64_t end);

 private:
  void check_size(size_t n, const char* what) const;

  const ParamLayout& layout_;
  Backend& be_;
  Buffer<float> params_;
  Buffer<float> grads_;     // the step's sum
  Buffer<float> mb_grads_;  // a later micro-batch's gradient before it is folded in
  int64_t folded_ = -1;     // -1: zero_grads() not called yet
  bool open_ = false;
  int64_t range_folded_ = 0;  // elements of the open micro-batch folded by fold_range()       // micro_batch_grads() handed out, fold_micro_batch() not called yet
};

}  // namespace ptrain
