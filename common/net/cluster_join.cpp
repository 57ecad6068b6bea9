#include "common/net/cluster_join.hpp"

#include "common/proto/codec.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <sstream>

namespace ptrain::net {

TcpNodeOptions member_node_options(Role role) {
  TcpNodeOptions o;
  o.self_role = role;
  o.peer_lost = [](const Endpoint& e, const std::string&) { return e.role == Role::kCoordinator; };
  return o;
}

Joined join_cluster(std::shared_ptr<TcpNode> node, const JoinOptions& o) {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  proto::Register reg{static_cast<uint8_t>(o.role), o.listen_address,
                      o.name.empty() ? std::string(host) : o.name};
  node->connect(o.coordinator, coordinator_endpoint(), reg, o.connect_timeout);
  spdlog::info("connected to the coordinator at {}; waiting for the job to start",
               o.coordinator);
  // A provisional transport for the Welcome (our id is not known yet).
  const std::unique_ptr<Transport> boot =
      make_transport(TransportOptions::tcp(Endpoint{o.role, -1}, node));
  for (;;) {
    std::optional<Envelope> env = boot->receive(std::chrono::milliseconds(1000));
    if (!env) continue;
    if (auto* f = std::get_if<proto::Failure>(&env->message)) {
      throw Error(proto::failure_code(*f), fmt::format("the coordinator at {} refused us: {}",
                                                       o.coordinator, f->message));
    }
    if (auto* sd = std::get_if<proto::Shutdown>(&env->message)) {
      throw Error(ExitCode::kInterrupted,
                  fmt::format("the coordinator stopped the job before it started: {}", sd->reason));
    }
    auto* w = std::get_if<proto::Welcome>(&env->message);
    if (w == nullptr) {
      throw proto::ProtocolError(fmt::format("expected a Welcome from the coordinator, got {}",
                                             proto::type_name(proto::type_of(env->message))));
    }
    Joined j;
    j.node = node;
    j.welcome = std::move(*w);
    std::istringstream in(j.welcome.server_addresses);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) j.server_addresses.push_back(line);
    }
    // The launcher names this role's log file after the id in this line (kJoinedLine).
    spdlog::info("{}{}", kJoinedLine, Endpoint{o.role, j.welcome.id}.str());
    return j;
  }
}

}  // namespace ptrain::net
