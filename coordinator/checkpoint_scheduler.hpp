// When the coordinator writes checkpoints. A checkpoint of version s (s optimizer steps applied)
// is a consistent cut: the coordinator orders it before beginning step s+1, and every server
// writes its shard at version s exactly (coordinator.cpp, CheckpointShard).
#pragma once

#include <cstdint>

namespace ptrain {

class CheckpointScheduler {
 public:
  // every_steps = 0 and every_minutes = 0: only the final step.
  CheckpointScheduler(int64_t every_steps, int64_t total_steps, double every_minutes = 0.0)
      : every_(every_steps), total_(total_steps), minutes_(every_minutes) {}
  // After `step` applied steps, `minutes_since_last` minutes after the last checkpoint (or the
  // start of this run): every `every_steps`, once `every_minutes` have passed, and always at the
  // final step.
  bool due(int64_t step, double minutes_since_last = 0.0) const {
    return step == total_ || (every_ > 0 && step > 0 && step % every_ == 0) ||
           (minutes_ > 0 && minutes_since_last >= minutes_);
  }

 private:
  int64_t every_;
  int64_t total_;
  double minutes_;
};

}  // namespace ptrain
