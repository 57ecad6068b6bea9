// `ptrain worker`: a worker as its own process. Joins the job through the coordinator
// (common/net/cluster_join.hpp), connects to every server (PeerHello), then runs run_worker over
// TCP until Shutdown. Only the coordinator's loss is fatal here (it stops the job for any other).
#pragma once

#include "common/net/auth.hpp"

#include <string>

namespace ptrain {

struct WorkerProcessOptions {
  std::string coordinator;  // HOST:PORT
  std::string device;       // compute device (`--device`); "" = the job's device.type
  // Compute threads (`--threads`); 0 = run.threads, and when that is 0 too, all cores.
  int threads = 0;
};

void run_worker_process(const WorkerProcessOptions& options, net::Secret secret);

}  // namespace ptrain
