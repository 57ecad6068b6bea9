#include "launch/worker_process.hpp"

#include "common/config/job_from_welcome.hpp"
#include "launch/threads_job.hpp"
#include "common/error.hpp"
#include "common/net/cluster_join.hpp"
#include "common/tensor/param_layout.hpp"
#include "worker/worker.hpp"

#include <omp.h>
#include <spdlog/spdlog.h>

namespace ptrain {

void run_worker_process(const WorkerProcessOptions& o, net::Secret secret) {
  auto node = std::make_shared<net::TcpNode>(std::move(secret),
                                             net::member_node_options(net::Role::kWorker));
  net::Joined j = net::join_cluster(node, {o.coordinator, net::Role::kWorker, "", o.member_name});
  const JobFromWelcome job = job_from_welcome(j.welcome);
  node->set_liveness(job.heartbeat, job.peer_timeout);
  const Config& cfg = job.config;
  const ParamLayout layout(model_dims(cfg.model, job.tokenizer->vocab_size()));
  const int32_t id = j.welcome.id;
  const auto S = cfg.cluster.servers;
  if (static_cast<int64_t>(j.server_addresses.size()) != S) {
    throw proto::ProtocolError(fmt::format("the coordinator sent {} server addresses for {} servers",
                                           j.server_addresses.size(), S));
  }
  for (int32_t k = 0; k < S && !o.data_plane; ++k) {
    node->connect(j.server_addresses[static_cast<size_t>(k)], net::server_endpoint(k),
                  proto::PeerHello{static_cast<uint8_t>(net::Role::kWorker), id,
                                   j.welcome.membership_epoch},
                  std::chrono::milliseconds(30'000));
  }
  std::vector<proto::KeyRange> ranges;
  for (const auto& [b, e] : layout.shard_ranges(S)) ranges.push_back({b, e});
  WorkerOptions wo;
  wo.worker_id = id;
  wo.train_path = cfg.data.train;
  wo.val_path = cfg.data.val;
  wo.micro_batch = cfg.train.micro_batch;
  wo.seed = cfg.run.seed;
  wo.threads = o.threads > 0 ? o.threads : threads_per_role(cfg.run.threads, 1);
  wo.device = o.device.empty() ? device_type_name(cfg.device.type) : o.device;
  wo.leave_requested = o.leave_requested;
  wo.fault_phase = o.fault_phase;
  wo.fault_step = o.fault_step;
  spdlog::info("worker {}: connected to {} server(s), device {}, {} thread(s)", id, S, wo.device,
               wo.threads);
  const std::unique_ptr<net::Transport> transport =
      o.data_plane ? o.data_plane(net::worker_endpoint(id), node)
                   : net::make_transport(net::TransportOptions::tcp(net::worker_endpoint(id), node));
  try {
    run_worker(wo, layout, std::move(ranges), *transport);
  } catch (const net::PeerLost& e) {
    node->close();
    throw net::PeerLost(fmt::format(
        "worker {}: {}; the coordinator dropped this worker (silent longer than "
        "cluster.peer_timeout_s = {} s) or stopped; `ptrain worker` started again joins as a new "
        "worker",
        id, e.what(), cfg.cluster.peer_timeout_s));
  } catch (...) {
    node->close();
    throw;
  }
  node->close();
  const bool left = o.leave_requested && o.leave_requested();
  spdlog::info("worker {}: {}", id, left ? "left the job" : "stopped");
}

}  // namespace ptrain
