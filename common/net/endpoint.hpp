// Who a message is from or for: a role instance (role, id). Shared by the transports and the
// receive postings; no I/O.
#pragma once

#include <compare>
#include <cstdint>
#include <string>

namespace ptrain::net {

enum class Role : uint8_t { kCoordinator = 0, kServer = 1, kWorker = 2 };

// A role instance: (role, id). The coordinator is (kCoordinator, 0); servers and workers are
// numbered from 0.
struct Endpoint {
  Role role = Role::kCoordinator;
  int32_t id = 0;
  auto operator<=>(const Endpoint&) const = default;
  std::string str() const;  // "coordinator", "server 1", "worker 0"
};

inline Endpoint coordinator_endpoint() { return {Role::kCoordinator, 0}; }
inline Endpoint server_endpoint(int32_t id) { return {Role::kServer, id}; }
inline Endpoint worker_endpoint(int32_t id) { return {Role::kWorker, id}; }

}  // namespace ptrain::net
