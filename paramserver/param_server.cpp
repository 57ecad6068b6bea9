#include "paramserver/param_server.hpp"

#include "common/error.hpp"
#include "common/io/checkpoint.hpp"

#include <omp.h>

#include <algorithm>

namespace ptrain {

void run_param_server(const ParamServerOptions& options, UpdateRule rule,
                      net::Transport& transport) {
  omp_set_num_threads(std::max(1, options.omp_threads));
  RequestHandler handler(options.server, std::move(rule));
  try {
    while (!handler.stopped()) {
      std::optional<net::Envelope> env = transport.receive(options.poll);
      if (!env) continue;
      for (auto& o : handler.handle(env->from, std::move(env->message))) {
        if (auto* a = std::get_if<proto::StepApplied>(&o.message)) {
          const net::TransportCounters c = transport.counters();
          a->bytes_pushed =
              c.bytes_received_by_type[static_cast<size_t>(proto::MessageType::kGradPush)];
          a->bytes_pulled = c.bytes_sent_by_type[static_cast<size_t>(proto::MessageType::kPullReply)];
        }
        transport.send(o.to, o.message);
      }
    }
  } catch (const net::TransportClosed&) {
    throw;
  } catch (const std::exception& e) {
    net::report_failure_to_coordinator(transport, e);
    throw;
  }
}

ShardWriter make_shard_writer(const ParamLayout& layout, int32_t server_id, int64_t n_shards,
                              proto::KeyRange range) {
  auto l = std::make_shared<const ParamLayout>(layout);
  return [l, server_id, n_shards, range](const std::string& tmp_dir, int64_t version,
                                         std::span<const float> w, std::span<const float> m,
                                         std::span<const float> v) {
    write_checkpoint_shard(tmp_dir, server_id, n_shards, *l, {range.begin, range.end}, w, m, v,
                           version);
  };
}

}  // namespace ptrain
