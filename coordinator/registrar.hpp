// The coordinator's TCP registration as a Membership (common/net/membership.hpp): a server or
// worker that connects and sends Register joins (ids in arrival order per role, never reused);
// a member whose connection the coordinator's TcpNode drops without a Shutdown (closed, broken,
// a bad frame, or heartbeats missed for cluster.peer_timeout_s) is lost, and the loss event's
// reason names the member, its address and the node's cause. Servers beyond cluster.servers, and
// workers beyond cluster.max_workers present at once (0 = no cap), are refused at registration
// with a message naming the key. Workers may register at any time: one that registers after
// the job started joins it (the coordinator welcomes it at its next look at the membership).
//
// Wiring (coordinator_process.cpp): the node's IdentifyFn is identify(); its peer_lost calls
// connection_lost(), which records the loss here and tells the node the loss is not its to
// decide — the coordinator drains the event and applies the job's policy in one place.
// Threads: identify() and the hook run on the node's I/O thread; the rest anywhere.
#pragma once

#include "common/net/membership.hpp"
#include "common/net/tcp_transport.hpp"
#include "common/proto/messages.hpp"

#include <mutex>
#include <string>
#include <vector>

namespace ptrain {

class Registrar final : public net::Membership {
 public:
  // The job starts once `servers` servers and `workers` workers registered; `max_workers` (0 =
  // no cap) bounds the workers present at once.
  Registrar(int64_t servers, int64_t workers, int64_t max_workers = 0);

  // The node's IdentifyFn: `first` must be a Register; `peer` is the connection's "HOST:PORT".
  // Throws ProtocolError (not a Register, bad role) or ConfigError (the job is full).
  net::Identity identify(const proto::Message& first, const std::string& peer);

  // A member's connection was dropped without a Shutdown, for `cause` (the node's words: "missed
  // heartbeats for 10 s"): a kLost event whose reason is "worker 1 (127.0.0.1:41234) was lost
  // (missed heartbeats for 10 s)". Always false (for TcpNodeOptions::peer_lost: the node must not
  // stop the coordinator on its own).
  bool connection_lost(const net::Endpoint& e, const std::string& cause);

  int64_t expected() const { return servers_ + workers_; }
  // Server k's data listener "HOST:PORT" on line k (for the Welcome).
  std::vector<std::string> server_addresses() const;

 private:
  int64_t servers_, workers_, max_workers_;
  mutable std::mutex mu_;  // server_addrs_ only (the member table has its own lock)
  std::vector<std::string> server_addrs_;
};

}  // namespace ptrain
