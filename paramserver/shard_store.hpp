// A parameter server's state: its slice [begin, end) of the flat parameter vector in fp32, the
// AdamW moments m and v of that slice, with cluster.sync local the outer SGD's momentum buffer of
// that slice, and the version (optimizer steps applied). Nothing else: no networking, no
// optimizer logic.
#pragma once

#include "common/proto/messages.hpp"

#include <cstdint>
#include <span>
#include <vector>

namespace ptrain {

class ShardStore {
 public:
  explicit ShardStore(proto::KeyRange range);

  // Replaces the whole state (start or resume). Sizes must equal range().size(); `momentum` may
  // also be empty (no outer optimizer).
  void load(int64_t version, std::vector<float> weights, std::vector<float> m,
            std::vector<float> v, std::vector<float> momentum = {});

  const proto::KeyRange& range() const { return range_; }
  bool loaded() const { return loaded_; }
  int64_t version() const { return version_; }
  void set_version(int64_t v) { version_ = v; }

  std::span<float> weights() { return weights_; }
  std::span<float> m() { return m_; }
  std::span<float> v() { return v_; }
  std::span<const float> weights() const { return weights_; }
  std::span<const float> m() const { return m_; }
  std::span<const float> v() const { return v_; }
  // The outer SGD's momentum buffer (cluster.sync local; empty otherwise).
  std::span<float> momentum() { return momentum_; }
  std::span<const float> momentum() const { return momentum_; }

  // Copies of a sub-range [r.begin, r.end) (global offsets) of the weights.
  std::vector<float> copy_weights(const proto::KeyRange& r) const;

 private:
  proto::KeyRange range_;
  bool loaded_ = false;
  int64_t version_ = -1;
  std::vector<float> weights_, m_, v_, momentum_;
};

}  // namespace ptrain
