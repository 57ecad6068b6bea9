// The job a server or worker process joins, rebuilt from the coordinator's Welcome: the resolved
// config (parsed here, where config is parsed, not in the network layer), the tokenizer, and the
// check that this build computes the same parameter layout as the coordinator.
#pragma once

#include <chrono>
#include <memory>

#include "common/config/config.hpp"
#include "common/data/tokenizer.hpp"
#include "common/proto/messages.hpp"

namespace ptrain {

struct JobFromWelcome {
  Config config;
  std::unique_ptr<Tokenizer> tokenizer;
  // cluster.heartbeat_s and cluster.peer_timeout_s, for TcpNode::set_liveness.
  std::chrono::milliseconds heartbeat{0};
  std::chrono::milliseconds peer_timeout{0};
};

// Throws ConfigError when the config or tokenizer does not parse, or when the layout hash this
// process computes differs from welcome.layout_hash (different ptrain builds).
JobFromWelcome job_from_welcome(const proto::Welcome& welcome);

}  // namespace ptrain
