// `ptrain worker`: a worker as its own process. Joins the job through the coordinator
// (common/net/cluster_join.hpp), connects to every server (PeerHello), then runs run_worker over
// TCP until Shutdown or until it leaves. Only the coordinator's loss is fatal here: a worker
// whose connection the coordinator dropped (silent past cluster.peer_timeout_s, e.g. stopped and
// woken up) exits saying so; started again it joins as a new worker.
#pragma once

#include "common/net/auth.hpp"
#include "common/net/tcp_transport.hpp"

#include <functional>
#include <memory>
#include <string>

namespace ptrain {

struct WorkerProcessOptions {
  std::string coordinator;  // HOST:PORT
  std::string device;       // compute device (`--device`); "" = the job's device.type
  // Compute threads (`--threads`); 0 = run.threads, and when that is 0 too, all cores.
  int threads = 0;
  // How the coordinator names this member; "" = the host name (cluster_join.hpp).
  std::string member_name;
  // The role's transport once its id is known, over the node that joined the job (the MPI launch:
  // the MPI data plane, control plane on `node`); empty = TCP over `node` (workers then dial
  // every server).
  std::function<std::unique_ptr<net::Transport>(const net::Endpoint& self,
                                                std::shared_ptr<net::TcpNode> node)>
      data_plane;
  // Polled; true = leave the job at the next step boundary and return (SIGTERM). Empty = never.
  std::function<bool()> leave_requested;
  // TEST ONLY: WorkerOptions::fault_phase / fault_step / fault_delay_s (PTRAIN_TEST_WORKER_FAULT).
  std::string fault_phase;
  int64_t fault_step = 0;
  double fault_delay_s = 0.0;
};

void run_worker_process(const WorkerProcessOptions& options, net::Secret secret);

// `ptrain worker --run-dir RUN_DIR`: the coordinator's address from RUN_DIR/coordinator.addr
// (waiting up to 60 s for it), then run_worker_process. When that ends (a Shutdown, or the
// coordinator lost) and coordinator.addr disappears or changes within 5 s — the `ptrain run`
// supervisor restarting the job — it joins the restarted job as a new worker; otherwise it ends
// as run_worker_process did. Leaving (leave_requested) ends it at once.
void run_worker_in_run_dir(const WorkerProcessOptions& options, const std::string& run_dir,
                           const net::Secret& secret);

}  // namespace ptrain
