// How a server or worker process joins a job over TCP: connect to the coordinator (HMAC
// handshake), Register, wait for the Welcome, and rebuild the job's config, tokenizer and layout
// from it (the layout hash must match the coordinator's, else ConfigError). No Asio here.
#pragma once

#include "common/config/config.hpp"
#include "common/data/tokenizer.hpp"
#include "common/net/tcp_transport.hpp"
#include "common/proto/messages.hpp"

#include <memory>
#include <string>
#include <vector>

namespace ptrain::net {

struct JoinOptions {
  std::string coordinator;  // HOST:PORT
  Role role = Role::kWorker;
  std::string listen_address;  // servers: their data listener ("HOST:PORT" or ":PORT")
  std::chrono::milliseconds connect_timeout{30'000};
};

struct Joined {
  std::shared_ptr<TcpNode> node;
  proto::Welcome welcome;
  Config config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<std::string> server_addresses;
};

// `node` must already listen when role is kServer. Blocks until the Welcome (or throws: PeerLost
// when the coordinator goes away, Error with the coordinator's reason when it refuses us,
// ConfigError on a layout-hash mismatch).
Joined join_cluster(std::shared_ptr<TcpNode> node, const JoinOptions& options);

// Node options for a server/worker: only the coordinator's loss is fatal.
TcpNodeOptions member_node_options(Role role);

}  // namespace ptrain::net
