// The network side of a training step, as TrainStep::compute sees it: where the step's weights
// come from and where its finished gradient ranges go, range by range, so that pulls and pushes
// overlap the forward and backward passes (worker/overlap.hpp implements both over a PsClient).
#pragma once

#include <cstdint>
#include <span>

namespace ptrain {

class GradientSink {
 public:
  virtual ~GradientSink() = default;
  // grads_host[begin,end) holds the step's final token-sum gradient for that range; compute
  // thread, backward order, each element exactly once per step; must not block for long.
  virtual void gradient_ready(std::span<const float> grads_host, int64_t begin, int64_t end) = 0;
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Blocks until weights_host()[begin,end) hold the step's weights (throws on failure).
  virtual void wait_weights(int64_t begin, int64_t end) = 0;
};

struct StepTransfers {
  WeightSource* weights = nullptr;
  GradientSink* gradients = nullptr;
};

}  // namespace ptrain
