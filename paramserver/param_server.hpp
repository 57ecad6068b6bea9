// The parameter-server role: a loop that receives messages from a Transport, passes them to the
// RequestHandler and sends what it returns. Wired together in the role's entry point (the
// threads job, `ptrain server` over TCP).
#pragma once

#include "common/net/transport.hpp"
#include "paramserver/request_handler.hpp"
#include "paramserver/update_rule.hpp"

#include "common/tensor/param_layout.hpp"

#include <chrono>

namespace ptrain {

struct ParamServerOptions {
  ServerOptions server;
  int omp_threads = 1;  // OpenMP threads for aggregation, norm and AdamW (set in this thread)
  // Poll interval of the receive loop (the loop ends on Shutdown or when the transport closes).
  std::chrono::milliseconds poll{1000};
  // How long the replies to one message may take to be written (they borrow the weights).
  std::chrono::milliseconds send_timeout{std::chrono::minutes(10)};
};

// Runs until a Shutdown message arrives. Pull replies are sent without copying the weights and
// flushed before the next message is handled; each known worker's gradient slot is posted as
// the destination of its next push. A failure is reported to the coordinator (Failure) when
// the transport still works, then rethrown. Throws TransportClosed when the job is stopping.
// StepApplied replies carry this server's transport byte counters (GradPush bytes received,
// PullReply bytes sent) for the coordinator's status endpoint.
void run_param_server(const ParamServerOptions& options, UpdateRule rule,
                      net::Transport& transport);

// The ShardWriter of server `server_id` of `n_shards`: write_checkpoint_shard(tmp_dir, id, n,
// layout, range, ...). Keeps its own copy of the layout.
ShardWriter make_shard_writer(const ParamLayout& layout, int32_t server_id, int64_t n_shards,
                              proto::KeyRange range);

// The ShardLoader of the server owning `range`: LoadShard with no checkpoint = GPT-2
// initialisation of the range from the seed (init_gpt_params_range: bitwise the slice a full
// `ptrain init` holds) and zero moments; with a checkpoint = read_checkpoint_range of the range
// (verified), whose step must be the LoadShard's version. Keeps its own copy of the layout.
ShardLoader make_shard_loader(const ParamLayout& layout, proto::KeyRange range);

}  // namespace ptrain
