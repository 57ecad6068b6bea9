#include "launch/server_process.hpp"

#include "common/config/job_from_welcome.hpp"
#include "launch/threads_job.hpp"
#include "common/error.hpp"
#include "common/net/cluster_join.hpp"
#include "common/net/host_port.hpp"
#include "common/proto/codec.hpp"
#include "common/tensor/param_layout.hpp"
#include "paramserver/param_server.hpp"
#include "paramserver/update_rule.hpp"

#include <omp.h>
#include <spdlog/spdlog.h>

namespace ptrain {

void run_server_process(const ServerProcessOptions& o, net::Secret secret) {
  auto node = std::make_shared<net::TcpNode>(std::move(secret),
                                             net::member_node_options(net::Role::kServer));
  const net::HostPort listen = net::parse_host_port(o.listen, "--listen");
  const std::string& host = listen.host;
  const std::string bound = node->listen(
      host, listen.port,
      [](const proto::Message& m, const std::string&) -> net::Identity {
        const auto* h = std::get_if<proto::PeerHello>(&m);
        if (h == nullptr || h->role != static_cast<uint8_t>(net::Role::kWorker) || h->id < 0) {
          throw proto::ProtocolError(fmt::format(
              "the first frame on a data connection must be a worker's PeerHello, not {}",
              proto::type_name(proto::type_of(m))));
        }
        return {net::worker_endpoint(h->id), false};
      });
  // An unspecified listen host: the coordinator fills in the address it sees us at.
  const bool any = host == "0.0.0.0" || host == "::";
  const std::string advertised = any ? bound.substr(bound.rfind(':')) : bound;
  net::Joined j = net::join_cluster(node, {o.coordinator, net::Role::kServer, advertised, o.member_name});
  const JobFromWelcome job = job_from_welcome(j.welcome);
  node->set_liveness(job.heartbeat, job.peer_timeout);
  const Config& cfg = job.config;
  const ParamLayout layout(model_dims(cfg.model, job.tokenizer->vocab_size()));
  const auto shards = layout.shard_ranges(cfg.cluster.servers);
  const int32_t id = j.welcome.id;
  if (id < 0 || id >= static_cast<int32_t>(shards.size())) {
    throw proto::ProtocolError(fmt::format("the coordinator gave this server id {} of {}", id,
                                           shards.size()));
  }
  spdlog::info("server {}: listening on {} for workers, range [{}, {})", id, bound,
               shards[static_cast<size_t>(id)].first, shards[static_cast<size_t>(id)].second);
  ParamServerOptions so;
  so.server.server_id = id;
  so.server.range = {shards[static_cast<size_t>(id)].first, shards[static_cast<size_t>(id)].second};
  so.omp_threads = o.threads > 0 ? o.threads : threads_per_role(cfg.run.threads, 1);
  so.server.write_shard = make_shard_writer(layout, id, cfg.cluster.servers, so.server.range);
  so.server.load_shard = make_shard_loader(layout, so.server.range);
  so.server.push_encoding = wire_encoding(cfg.cluster);
  UpdateRule rule = update_rule_for(cfg, layout, so.server.range);
  const std::unique_ptr<net::Transport> transport =
      o.data_plane ? o.data_plane(net::server_endpoint(id), node)
                   : net::make_transport(net::TransportOptions::tcp(net::server_endpoint(id), node));
  try {
    run_param_server(so, std::move(rule), *transport);
  } catch (...) {
    node->close();
    throw;
  }
  node->close();
  spdlog::info("server {}: stopped", id);
}

}  // namespace ptrain
