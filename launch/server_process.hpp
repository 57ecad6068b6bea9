// `ptrain server`: a parameter server as its own process. Listens for workers' data connections,
// joins the job through the coordinator (common/net/cluster_join.hpp), then runs
// run_param_server over TCP until Shutdown. Only the coordinator's loss is fatal here.
#pragma once

#include "common/net/auth.hpp"
#include "common/net/tcp_transport.hpp"

#include <functional>
#include <memory>
#include <string>

namespace ptrain {

struct ServerProcessOptions {
  std::string coordinator;          // HOST:PORT
  std::string listen = "0.0.0.0:0";  // data listener for workers (HOST:PORT, 0 = a free port)
  // Compute threads (`--threads`); 0 = run.threads, and when that is 0 too, all cores.
  int threads = 0;
  // How the coordinator names this member; "" = the host name (cluster_join.hpp).
  std::string member_name;
  // The role's transport once its id is known, over the node that joined the job (the MPI launch:
  // the MPI data plane, control plane on `node`); empty = TCP over `node`.
  std::function<std::unique_ptr<net::Transport>(const net::Endpoint& self,
                                                std::shared_ptr<net::TcpNode> node)>
      data_plane;
};

void run_server_process(const ServerProcessOptions& options, net::Secret secret);

}  // namespace ptrain
