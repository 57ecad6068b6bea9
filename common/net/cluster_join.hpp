// How a server or worker process joins a job over TCP: connect to the coordinator (HMAC
// handshake), Register, and wait for the Welcome. What the Welcome says about the job (config,
// tokenizer, layout hash, liveness settings) is read by the caller (job_from_welcome in
// common/config): the network layer knows nothing of the application config. No Asio here.
#pragma once

#include "common/net/tcp_transport.hpp"
#include "common/proto/messages.hpp"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ptrain::net {

struct JoinOptions {
  std::string coordinator;  // HOST:PORT
  Role role = Role::kWorker;
  std::string listen_address;  // servers: their data listener ("HOST:PORT" or ":PORT")
  // How the coordinator names this member (/status, loss messages); "" = the host name. The MPI
  // launch adds the rank ("vm, MPI rank 3").
  std::string name;
  std::chrono::milliseconds connect_timeout{30'000};
};

struct Joined {
  std::shared_ptr<TcpNode> node;
  proto::Welcome welcome;
  std::vector<std::string> server_addresses;  // from welcome.server_addresses, one per server
};

// The line a member logs once it knows its id: kJoinedLine + "server 1" (Endpoint::str()). The
// processes launcher reads it to name the member's log file after its id.
inline constexpr std::string_view kJoinedLine = "joined the job as ";

// `node` must already listen when role is kServer. Blocks until the Welcome (or throws: PeerLost
// when the coordinator goes away, Error with the coordinator's reason when it refuses us). Logs
// kJoinedLine with the id the coordinator gave.
Joined join_cluster(std::shared_ptr<TcpNode> node, const JoinOptions& options);

// Node options for a server/worker: only the coordinator's loss is fatal.
TcpNodeOptions member_node_options(Role role);

}  // namespace ptrain::net
