#include "coordinator/checkpoint_scheduler.hpp"

#include "common/error.hpp"
#include "common/proto/codec.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace ptrain {

CheckpointAssembler::CheckpointAssembler(int64_t total, std::vector<proto::KeyRange> ranges)
    : total_(total), ranges_(std::move(ranges)) {}

void CheckpointAssembler::begin(int64_t version, uint64_t request_id) {
  version_ = version;
  request_id_ = request_id;
  have_.assign(ranges_.size(), false);
  data_ = CheckpointData{};
  data_.params.assign(static_cast<size_t>(total_), 0.0f);
  data_.m.assign(static_cast<size_t>(total_), 0.0f);
  data_.v.assign(static_cast<size_t>(total_), 0.0f);
}

bool CheckpointAssembler::add(proto::CheckpointReply&& r) {
  if (r.request_id != request_id_ || r.version != version_ || r.server_id < 0 ||
      r.server_id >= static_cast<int32_t>(ranges_.size()) ||
      have_[static_cast<size_t>(r.server_id)]) {
    return false;
  }
  const auto& want = ranges_[static_cast<size_t>(r.server_id)];
  if (r.range != want) {
    throw proto::ProtocolError(fmt::format(
        "server {} sent checkpoint range [{}, {}), its shard is [{}, {})", r.server_id,
        r.range.begin, r.range.end, want.begin, want.end));
  }
  std::copy(r.weights.begin(), r.weights.end(), data_.params.begin() + want.begin);
  std::copy(r.m.begin(), r.m.end(), data_.m.begin() + want.begin);
  std::copy(r.v.begin(), r.v.end(), data_.v.begin() + want.begin);
  have_[static_cast<size_t>(r.server_id)] = true;
  return true;
}

bool CheckpointAssembler::complete() const {
  return !have_.empty() && std::all_of(have_.begin(), have_.end(), [](bool b) { return b; });
}

CheckpointData CheckpointAssembler::take(CheckpointMeta meta) {
  PTRAIN_ENFORCE(complete(), "checkpoint taken before every server replied");
  data_.meta = std::move(meta);
  CheckpointData out = std::move(data_);
  data_ = CheckpointData{};
  have_.clear();
  return out;
}

}  // namespace ptrain
