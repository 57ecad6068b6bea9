// What a model reports while one micro-batch runs, so that its caller can overlap transfers with
// compute (TrainStep: weights uploaded layer by layer just before forward reads them, gradients
// downloaded layer by layer as backward finishes them). The model holds no transfer or network
// code: it only says when. Called on the thread running the model, between its ops.
#pragma once

#include <cstdint>

namespace ptrain {

// What the model reports while one micro-batch runs, so that its caller can overlap transfers
// with compute. The model holds no transfer or network code: it only says when.
class StepHooks {
 public:
  virtual ~StepHooks() = default;
  // Forward is about to read parameters [begin, end) (flat ParamLayout offsets) for the first
  // time in this micro-batch: return once they are in backend memory. Called in forward
  // order; the ranges cover [0, total) once per micro-batch.
  virtual void before_forward(int64_t begin, int64_t end) { (void)begin; (void)end; }
  // Backward has written its last contribution of this micro-batch to gradient [begin, end).
  // Called in backward order (final LayerNorm, last layer … layer 0, embeddings last);
  // the ranges cover [0, total) once per micro-batch.
  virtual void after_backward(int64_t begin, int64_t end) { (void)begin; (void)end; }
};

}  // namespace ptrain
