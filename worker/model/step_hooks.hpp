// Where a training step's forward and backward stand, for the caller that moves parameters and
// gradients over the network while the model computes (worker/step_transfers.hpp). The model
// knows nothing of networks: it only says which ranges of the flat parameter vector (ParamLayout
// offsets) it is about to read and which gradient ranges it has finished.
//   before_forward: forward order (embeddings, layer 0 … last layer, final LayerNorm), called
//                   before the forward pass reads the range's parameters.
//   after_backward: backward order (final LayerNorm, last layer … layer 0, embeddings last),
//                   called once the micro-batch's gradient of the range is complete.
// Each covers [0, total) exactly once per micro-batch.
#pragma once

#include <cstdint>

namespace ptrain {

class StepHooks {
 public:
  virtual ~StepHooks() = default;
  virtual void before_forward(int64_t begin, int64_t end) {}
  virtual void after_backward(int64_t begin, int64_t end) {}
};

}  // namespace ptrain
