#include "paramserver/param_server.hpp"

#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/tensor/gpt_init.hpp"

#include <omp.h>

#include <algorithm>
#include <map>

namespace ptrain {

void run_param_server(const ParamServerOptions& options, UpdateRule rule,
                      net::Transport& transport) {
  omp_set_num_threads(std::max(1, options.omp_threads));
  RequestHandler handler(options.server, std::move(rule));
  // The step each worker's gradient slot is posted for (so it is posted once per step).
  std::map<int32_t, int64_t> posted;
  try {
    while (!handler.stopped()) {
      std::optional<net::Envelope> env = transport.receive(options.poll);
      if (!env) continue;
      std::vector<Outgoing> out = handler.handle(env->from, std::move(env->message));
      // Posted before the replies go out, so that a worker's next push (which follows its
      // pull reply) finds its slot and is received straight into it.
      for (const GradientSlot& g : handler.gradient_slots()) {
        auto [it, fresh] = posted.try_emplace(g.worker, g.step);
        if (!fresh && it->second == g.step) continue;
        it->second = g.step;
        transport.post_receive(net::worker_endpoint(g.worker), proto::MessageType::kGradPush,
                               static_cast<uint64_t>(g.step), g.slot);
      }
      for (auto& o : out) {
        if (auto* a = std::get_if<proto::StepApplied>(&o.message)) {
          const net::TransportCounters c = transport.counters();
          a->bytes_pushed =
              c.bytes_received_by_type[static_cast<size_t>(proto::MessageType::kGradPush)];
          a->bytes_pulled = c.bytes_sent_by_type[static_cast<size_t>(proto::MessageType::kPullReply)];
        }
        transport.send(o.to, o.message);
      }
      // Pull replies borrow the shard's weights: written before the next message may change them.
      if (!out.empty()) transport.flush(options.send_timeout);
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
                                         std::span<const float> v,
                                         std::span<const float> outer_momentum) {
    write_checkpoint_shard(tmp_dir, server_id, n_shards, *l, {range.begin, range.end}, w, m, v,
                           version, outer_momentum);
  };
}

ShardLoader make_shard_loader(const ParamLayout& layout, proto::KeyRange range) {
  auto l = std::make_shared<const ParamLayout>(layout);
  return [l, range](const proto::LoadShard& m) {
    const auto n = static_cast<size_t>(range.size());
    ShardState s;
    if (m.checkpoint.empty()) {
      s.weights.resize(n);
      init_gpt_params_range(*l, m.seed, range.begin, s.weights);
      s.m.assign(n, 0.0f);
      s.v.assign(n, 0.0f);
      return s;
    }
    CheckpointSlice c =
        read_checkpoint_range(m.checkpoint, *l, {range.begin, range.end}, /*with_optimizer=*/true);
    if (c.meta.step != m.version) {
      throw CheckpointError(fmt::format("{} is of step {}, the job resumes at step {}",
                                        m.checkpoint, c.meta.step, m.version));
    }
    s.weights = std::move(c.params);
    s.m = std::move(c.m);
    s.v = std::move(c.v);
    s.outer_momentum = std::move(c.outer_momentum);
    return s;
  };
}

}  // namespace ptrain
