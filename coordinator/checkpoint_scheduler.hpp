// When the coordinator writes checkpoints and how it assembles one from the servers' slices.
// A checkpoint of version s (s optimizer steps applied) is a consistent cut: the coordinator asks
// for it before committing step s+1, and every server answers with version s exactly.
#pragma once

#include "common/io/checkpoint.hpp"
#include "common/proto/messages.hpp"
#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <vector>

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

// Collects CheckpointReply messages (one per server) into whole flat vectors.
class CheckpointAssembler {
 public:
  CheckpointAssembler(int64_t total, std::vector<proto::KeyRange> server_ranges);
  void begin(int64_t version, uint64_t request_id);
  // False for a reply of another request or a duplicate; throws ProtocolError for a reply whose
  // range is not the server's.
  bool add(proto::CheckpointReply&& reply);
  bool complete() const;
  // The assembled tensors (valid once complete()); meta is the caller's.
  CheckpointData take(CheckpointMeta meta);

 private:
  int64_t total_;
  std::vector<proto::KeyRange> ranges_;
  int64_t version_ = -1;
  uint64_t request_id_ = 0;
  std::vector<bool> have_;
  CheckpointData data_;
};

}  // namespace ptrain
