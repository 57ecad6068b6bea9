// `cluster.launch: processes`: a whole job on this machine as separate OS processes on
// 127.0.0.1, each exec'd as `ptrain coordinator|server|worker ...` (so `ps` shows them):
//   1. RUN_DIR/secret (0600) is generated unless a secret file is named;
//   2. the coordinator starts with --listen 127.0.0.1:0; its RUN_DIR/coordinator.addr is awaited;
//   3. cluster.servers servers and cluster.workers workers start with --coordinator ADDR.
// Every child is in the job's own process group (led by the coordinator), gets
// PR_SET_PDEATHSIG(SIGKILL) so it dies with the launcher, and logs to RUN_DIR/logs/ROLE-N.log.
// A stop request (SIGINT/SIGTERM to the launcher) is forwarded to the coordinator, which writes a
// checkpoint and stops everyone. A worker that dies or leaves is the coordinator's business (the
// job goes on). The supervisor: a server or the coordinator killed by a signal (SIGKILL, a crash)
// brings the whole attempt down within 2 s (SIGKILL to the group) and starts every role again, resuming
// from the run's latest complete checkpoint (cluster.max_restarts times at most; each restart is
// a "restart" line in RUN_DIR/ledger.jsonl). Once the coordinator exits, the others get 2 s to
// exit, then SIGKILL. Whatever happens, every child is reaped before this returns: no orphans.
#pragma once

#include "common/config/config.hpp"

#include <functional>
#include <string>
#include <vector>

namespace ptrain {

struct ProcessJobOptions {
  std::string config_path;        // CONFIG as given to `ptrain run`
  std::vector<std::string> sets;  // --set k=v, passed on to the coordinator
  std::string secret_file;        // "" = generate RUN_DIR/secret
  std::string ptrain_binary = "/proc/self/exe";
  std::function<bool()> stop_requested;  // polled; true once = forward SIGTERM to the coordinator
  bool allow_config_change = false;      // passed on to the coordinator
};

// Returns the coordinator's exit status (0: trained, or stopped with a checkpoint written), or 4
// when no restart was left.
// Throws IoError when the roles cannot be started.
int run_processes_job(const Config& config, const ProcessJobOptions& options);

}  // namespace ptrain
