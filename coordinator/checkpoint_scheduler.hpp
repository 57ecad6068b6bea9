// When the coordinator writes checkpoints. A checkpoint of version s (s optimizer steps applied)
// is a consistent cut: the coordinator orders it before beginning step s+1, and every server
// writes its shard at version s exactly (coordinator.cpp, CheckpointShard).
#pragma once

#include <cstdint>

namespace ptrain {

class CheckpointScheduler {
 public:
  // every_steps = 0: only the final step.
  CheckpointScheduler(int64_t every_steps, int64_t total_steps)
      : every_(every_steps), total_(total_steps) {}
  // After `step` applied steps: every `every_steps`, and always at the final step.
  bool due(int64_t step) const {
    return step == total_ || (every_ > 0 && step > 0 && step % every_ == 0);
  }

 private:
  int64_t every_;
  int64_t total_;
};

}  // namespace ptrain
