// `ptrain coordinator`: the coordinator as its own process. Listens (TCP, HMAC-authenticated),
// writes RUN_DIR/coordinator.addr, registers cluster.servers servers and cluster.workers workers
// in arrival order (ids 0..S-1, 0..W-1), sends each a Welcome (id, resolved config, layout hash,
// tokenizer, server address map, membership epoch), then runs run_coordinator over TCP. The
// registration is the job's membership (Registrar): a peer lost (connection closed, heartbeats
// missed) is a membership event, and the coordinator's policy for it today stops the job with
// PeerLost naming it; the last complete checkpoint stays `latest`.
#pragma once

#include "common/config/config.hpp"
#include "common/net/auth.hpp"
#include "coordinator/coordinator.hpp"

#include <functional>
#include <string>

namespace ptrain {

struct CoordinatorProcessOptions {
  Config config;
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 = a free one
  // Polled while waiting for registrations and after every step (SIGINT/SIGTERM).
  std::function<bool()> stop_requested;
  // Called with the address in RUN_DIR/coordinator.addr once it listens (the MPI launch shares it
  // with every rank).
  std::function<void(const std::string& address)> on_listening;
  bool allow_config_change = false;  // CoordinatorOptions::allow_config_change
};

RunSummary run_coordinator_process(const CoordinatorProcessOptions& options, net::Secret secret);

// The closing lines of a coordinator process: "done: step ..." and, when stopped early, which
// checkpoint resumes it.
void log_run_summary(const RunSummary& summary);

}  // namespace ptrain
