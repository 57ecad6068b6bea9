// Registrar (registrar.hpp).
#include "coordinator/registrar.hpp"

#include "common/error.hpp"
#include "common/net/host_port.hpp"
#include "common/proto/codec.hpp"

#include <fmt/format.h>

namespace ptrain {

Registrar::Registrar(int64_t servers, int64_t workers, int64_t max_workers)
    : servers_(servers), workers_(workers), max_workers_(max_workers) {}

net::Identity Registrar::identify(const proto::Message& first, const std::string& peer) {
  const auto* reg = std::get_if<proto::Register>(&first);
  if (reg == nullptr) {
    throw proto::ProtocolError(fmt::format("the first frame must be Register, not {}",
                                           proto::type_name(proto::type_of(first))));
  }
  // The host part of the peer's "HOST:PORT", as /status shows it.
  const std::string host = net::parse_host_port(peer, "the peer's address").host;
  if (reg->role == static_cast<uint8_t>(net::Role::kServer)) {
    std::lock_guard lock(mu_);  // one server registration at a time: id k ↔ address line k
    if (added(net::Role::kServer) >= servers_) {
      throw ConfigError(
          fmt::format("the job already has its {} server(s) (cluster.servers)", servers_));
    }
    const net::HostPort listen = net::parse_host_port(
        reg->listen_address, "the listen address in a server's Register",
        {.allow_empty_host = true, .allow_port_zero = false});
    // ":PORT": the host we see the server as.
    const std::string addr =
        net::format_host_port(listen.host.empty() ? host : listen.host, listen.port);
    const net::Member m = add_member(net::Role::kServer, host, peer, reg->host);
    server_addrs_.push_back(addr);
    return {m.endpoint, true};
  }
  if (reg->role == static_cast<uint8_t>(net::Role::kWorker)) {
    std::lock_guard lock(mu_);
    const auto present = static_cast<int64_t>(workers().size());
    if (max_workers_ > 0 && present >= max_workers_) {
      throw ConfigError(fmt::format("the job already has {} worker(s), its cap "
                                    "(cluster.max_workers = {})",
                                    present, max_workers_));
    }
    return {add_member(net::Role::kWorker, host, peer, reg->host).endpoint, true};
  }
  throw proto::ProtocolError(fmt::format("Register with an invalid role {}", reg->role));
}

bool Registrar::connection_lost(const net::Endpoint& e, const std::string& cause) {
  if (const std::optional<net::Member> m = find(e)) {
    report_lost(e, fmt::format("{}{} was lost ({})", m->label(),
                               m->name.empty() ? "" : fmt::format(" on {}", m->name), cause));
  }
  return false;
}

std::vector<std::string> Registrar::server_addresses() const {
  std::lock_guard lock(mu_);
  return server_addrs_;
}

}  // namespace ptrain
