// How a training step's weights come in and its gradient goes out range by range, so that the
// worker's communication overlaps the step's compute (TrainStep::compute): the weights of a layer
// are uploaded as soon as they have arrived and just before forward reads them; a layer's
// gradient is handed over as soon as it is final on the host, while backward goes on with the
// layers below. Ranges are flat ParamLayout offsets [begin, end); the model's ranges (embeddings,
// each layer, the top) are step_hooks.hpp's. No network code here: the worker's communication
// layer implements these.
#pragma once

#include <cstdint>
#include <span>

namespace ptrain {

// Takes the step's token-sum gradient range by range as soon as each is final on the host.
class GradientSink {
 public:
  virtual ~GradientSink() = default;
  // grads_host[begin, end) (pinned host memory, the whole flat vector is passed) holds the final
  // token-sum gradient of the step for that range. Called on the compute thread in backward
  // order, each element exactly once per step; must not block for long (queue a send).
  virtual void gradient_ready(std::span<const float> grads_host, int64_t begin, int64_t end) = 0;
};

// Says when the step's weights have arrived in the weights buffer, range by range.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Blocks until weights_host()[begin, end) hold the step's weights (throws on failure).
  virtual void wait_weights(int64_t begin, int64_t end) = 0;
};

struct StepTransfers {
  WeightSource* weights = nullptr;   // null: weights_host() is complete before compute()
  GradientSink* gradients = nullptr; // null: read grads_host() after compute() returns
};

}  // namespace ptrain
