#include "paramserver/shard_store.hpp"

#include "common/error.hpp"

namespace ptrain {

ShardStore::ShardStore(proto::KeyRange range) : range_(range) {
  PTRAIN_ENFORCE(range.begin >= 0 && range.end >= range.begin, "bad shard range [{}, {})",
                 range.begin, range.end);
}

void ShardStore::load(int64_t version, std::vector<float> weights, std::vector<float> m,
                      std::vector<float> v, std::vector<float> momentum) {
  const auto n = static_cast<size_t>(range_.size());
  PTRAIN_ENFORCE(weights.size() == n && m.size() == n && v.size() == n,
                 "shard [{}, {}) loaded with {} weights, {} m, {} v", range_.begin, range_.end,
                 weights.size(), m.size(), v.size());
  PTRAIN_ENFORCE(momentum.empty() || momentum.size() == n,
                 "shard [{}, {}) loaded with {} momentum values", range_.begin, range_.end,
                 momentum.size());
  PTRAIN_ENFORCE(version >= 0, "negative version {}", version);
  weights_ = std::move(weights);
  m_ = std::move(m);
  v_ = std::move(v);
  momentum_ = std::move(momentum);
  version_ = version;
  loaded_ = true;
}

std::vector<float> ShardStore::copy_weights(const proto::KeyRange& r) const {
  PTRAIN_ENFORCE(r.begin >= range_.begin && r.end <= range_.end && r.begin <= r.end,
                 "range [{}, {}) is not inside the shard [{}, {})", r.begin, r.end, range_.begin,
                 range_.end);
  const auto* first = weights_.data() + (r.begin - range_.begin);
  return std::vector<float>(first, first + r.size());
}

}  // namespace ptrain
