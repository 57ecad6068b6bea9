// The parameter server's logic as a pure state machine: one message in, the messages to send out.
// No I/O and no threads: param_server.cpp feeds it from a Transport, tests feed it directly.
//
// Start and resume: LoadShard{version, seed | checkpoint} → the injected ShardLoader produces the
// range's weights and moments (a fresh initialisation or a read of the checkpoint's slice: the
// I/O stays outside this class), the store takes them at that version, ShardLoaded goes to the
// coordinator, then the pulls and checkpoint shards that waited. A loader that throws is
// answered with a Failure naming the source (the server stays unloaded).
//
// cluster.sync local (UpdateRule::outer(); docs/local_sgd.md): the same messages; a push carries a
// worker's pseudo-gradient, StepContributors averages them plainly (each worker once, not by
// tokens) and StepCommit applies the outer Nesterov SGD with the store's momentum buffer (its clip
// coefficient must be 1: clipping belongs to the workers' inner steps).
// Per step t (bsp; the server holds weights version t):
//   StepWorkers{t, set}         → the workers step t waits for (sent with the step's StepBegin)
//   GradPush{step t, range}     → kept in the worker's slot; pushes may name any sub-ranges of the
//                                 shard (buckets), each element once; PushReceived to the
//                                 coordinator once the worker's pushes cover the whole shard; each
//                                 block that every worker of the StepWorkers set pushed is reduced
//                                 (mean and partial norm) as soon as its last piece arrives; once
//                                 they all pushed everything: NormReport{set} to the coordinator,
//                                 unasked
//   StepContributors{t, set}    → (only after a worker was lost or late) mean gradient over that
//                                 set, replacing one made for StepWorkers; NormReport{set}
//   StepCommit{t, set, clip}    → UpdateRule applied, version t+1, StepApplied to the coordinator,
//                                 then the pulls and checkpoint shards that waited for t+1
// PullRequest{version}: answered at once when the server holds that version, later when it is
// ahead of the server; a request for an older version gets the current weights (the reply says
// which version; the client refuses a mismatch). CheckpointShard{version, tmp_dir}: the same
// timing, but an older version is refused; then the injected ShardWriter writes the shard file (the
// only I/O, kept outside this class) and the handler answers CheckpointShardWritten; a writer that
// throws is answered with a Failure naming the shard. The weights and moments never leave the
// server in a message.
// A request that cannot be served (range outside the shard, a stale or duplicate push) is
// answered with a Failure to its sender; a coordinator message that breaks the protocol throws
// proto::ProtocolError.
// Without copies: a PullReply's weights are BORROWED from the shard (send and flush the output
// before the next handle()); a push is kept in its worker's gradient slot, where the transport
// can receive the next one directly (gradient_slots()).
// bf16 on the wire (cluster.wire_dtype: bf16; common/proto/bf16.hpp): the weights, m and v stay
// fp32 and so does the aggregation. Pushes arrive packed and are widened inside the fold; a push
// in another encoding than ServerOptions::push_encoding is refused. A pull names its encoding:
// for bf16 the handler rounds the weights of the version it holds once, into a buffer it keeps,
// and borrows every bf16 reply of that version from there.
#pragma once

#include "common/error.hpp"
#include "common/net/transport.hpp"
#include "common/proto/messages.hpp"
#include "paramserver/aggregator.hpp"
#include "paramserver/shard_store.hpp"
#include "paramserver/update_rule.hpp"

#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace ptrain {

// Writes this server's shard file of a sharded checkpoint (write_checkpoint_shard in the roles;
// a fake in tests): tmp dir, version, and the server's weights, m, v and outer momentum buffer
// (empty unless cluster.sync local).
using ShardWriter = std::function<void(
    const std::string& tmp_dir, int64_t version, std::span<const float> weights,
    std::span<const float> m, std::span<const float> v, std::span<const float> outer_momentum)>;

// This server's state as a LoadShard names it: weights and AdamW moments of its range (range
// size floats each), and the outer momentum buffer when the checkpoint has one (else empty; a
// server of cluster.sync local then starts it at zero).
struct ShardState {
  std::vector<float> weights, m, v;
  std::vector<float> outer_momentum;
};

// Produces that state (make_shard_loader in the roles: init from the seed or read the checkpoint's
// slice; a fake in tests). Throws, naming the file, when it cannot.
using ShardLoader = std::function<ShardState(const proto::LoadShard&)>;

struct ServerOptions {
  int32_t server_id = 0;
  proto::KeyRange range;  // this server's slice of the flat vector
  ShardWriter write_shard;  // empty: CheckpointShard is refused
  ShardLoader load_shard;   // empty: LoadShard is refused
  // How workers' pushes carry their floats (cluster.wire_dtype); any other is refused.
  proto::FloatEncoding push_encoding = proto::FloatEncoding::kFp32;
};

struct Outgoing {
  net::Endpoint to;
  proto::Message message;
};

// Where worker `worker`'s GradPush for `step` may be received in place (its gradient slot).
struct GradientSlot {
  int32_t worker = 0;
  int64_t step = 0;
  std::span<float> slot;
};

class RequestHandler {
 public:
  RequestHandler(ServerOptions options, UpdateRule rule);

  // Handles one message from `from`; returns what to send, in order.
  std::vector<Outgoing> handle(const net::Endpoint& from, proto::Message msg);

  // The gradient slots that may receive a push now (workers that pushed before and have not
  // pushed for the current step), for Transport::post_receive. Valid until the next handle().
  std::vector<GradientSlot> gradient_slots();

  bool stopped() const { return stopped_; }
  const ShardStore& store() const { return store_; }
  int32_t server_id() const { return options_.server_id; }

 private:
  void on_load(const net::Endpoint& from, const proto::LoadShard& m, std::vector<Outgoing>& out);
  void on_pull(const net::Endpoint& from, const proto::PullRequest& m, std::vector<Outgoing>& out);
  void on_push(const net::Endpoint& from, proto::GradPush&& m, std::vector<Outgoing>& out);
  void on_step_workers(const proto::StepWorkers& m, std::vector<Outgoing>& out);
  void on_contributors(const proto::StepContributors& m, std::vector<Outgoing>& out);
  // Reduces `workers` (ascending; each has pushed) for `step` and sends the NormReport.
  void prepare(int64_t step, std::vector<int32_t> workers, std::vector<Outgoing>& out);
  // Reduces the StepWorkers set once every one of its workers has pushed.
  void prepare_if_complete(std::vector<Outgoing>& out);
  void on_commit(const proto::StepCommit& m, std::vector<Outgoing>& out);
  void on_checkpoint_shard(const net::Endpoint& from, const proto::CheckpointShard& m,
                           std::vector<Outgoing>& out);
  void serve_pending(std::vector<Outgoing>& out);
  // The bf16 encoding of the weights of sub-range `r` at the current version.
  proto::FloatRange bf16_weights(const proto::KeyRange& r);
  void refuse(const net::Endpoint& to, const std::string& why, std::vector<Outgoing>& out,
              ExitCode code = ExitCode::kIo) const;

  ServerOptions options_;
  UpdateRule rule_;
  ShardStore store_;
  GradientAggregator aggregator_;
  int64_t membership_epoch_ = 0;

  // How pushes are averaged: by tokens (gradients), or plainly (cluster.sync local's
  // pseudo-gradients, each worker once).
  GradientAggregator::Divide divide() const {
    return rule_.outer() ? GradientAggregator::Divide::kByContributors
                         : GradientAggregator::Divide::kByTokens;
  }

  // The step reduced (its mean is aggregator_.reduced()) and reported, awaiting StepCommit.
  struct Prepared {
    int64_t step = 0;
    std::vector<int32_t> workers;
  };
  std::optional<Prepared> prepared_;
  // The StepWorkers of the step being gathered (reset when it is applied or a shard is loaded).
  std::optional<proto::StepWorkers> expected_;
  // The weights rounded to bf16 (packed) at bf16_version_ (-1: none yet, or stale after a load).
  std::vector<float> bf16_weights_;
  int64_t bf16_version_ = -1;
  std::vector<std::pair<net::Endpoint, proto::PullRequest>> pending_pulls_;
  std::vector<std::pair<net::Endpoint, proto::CheckpointShard>> pending_shards_;
  bool stopped_ = false;
};

}  // namespace ptrain
