#include "paramserver/request_handler.hpp"

#include "common/error.hpp"
#include "common/proto/bf16.hpp"
#include "common/proto/codec.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

namespace ptrain {

using net::Endpoint;
namespace p = proto;

RequestHandler::RequestHandler(ServerOptions options, UpdateRule rule)
    : options_(options),
      rule_(std::move(rule)),
      store_(options.range),
      aggregator_(options.range.size(), options.push_encoding) {}

std::vector<Outgoing> RequestHandler::handle(const Endpoint& from, p::Message msg) {
  std::vector<Outgoing> out;
  std::visit(
      [&](auto&& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, p::LoadShard>) {
          on_load(from, m, out);
        } else if constexpr (std::is_same_v<T, p::PullRequest>) {
          on_pull(from, m, out);
        } else if constexpr (std::is_same_v<T, p::GradPush>) {
          on_push(from, std::move(m), out);
        } else if constexpr (std::is_same_v<T, p::StepWorkers>) {
          on_step_workers(m, out);
        } else if constexpr (std::is_same_v<T, p::StepContributors>) {
          on_contributors(m, out);
        } else if constexpr (std::is_same_v<T, p::StepCommit>) {
          on_commit(m, out);
        } else if constexpr (std::is_same_v<T, p::CheckpointShard>) {
          on_checkpoint_shard(from, m, out);
        } else if constexpr (std::is_same_v<T, p::Shutdown>) {
          stopped_ = true;
        } else {
          throw p::ProtocolError(fmt::format("server {}: unexpected {} from {}",
                                             options_.server_id, p::type_name(T::kType),
                                             from.str()));
        }
      },
      msg);
  return out;
}

void RequestHandler::refuse(const Endpoint& to, const std::string& why, std::vector<Outgoing>& out,
                            ExitCode code) const {
  const std::string text = fmt::format("server {}: {}", options_.server_id, why);
  spdlog::warn("{}", text);
  out.push_back({to, p::Failure{static_cast<int32_t>(code), text}});
}

void RequestHandler::on_load(const Endpoint& from, const p::LoadShard& m,
                             std::vector<Outgoing>& out) {
  if (m.range != options_.range) {
    throw p::ProtocolError(fmt::format("server {}: LoadShard for [{}, {}), the shard is [{}, {})",
                                       options_.server_id, m.range.begin, m.range.end,
                                       options_.range.begin, options_.range.end));
  }
  if (!options_.load_shard) {
    refuse(from, "this server cannot load its shard (no shard loader)", out);
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  ShardState st;
  try {
    st = options_.load_shard(m);
  } catch (const std::exception& e) {
    const auto* err = dynamic_cast<const Error*>(&e);
    const std::string source = m.checkpoint.empty()
                                   ? fmt::format("a fresh initialisation (seed {})", m.seed)
                                   : m.checkpoint;
    refuse(from,
           fmt::format("cannot load its shard [{}, {}) at version {} from {}: {}", m.range.begin,
                       m.range.end, m.version, source, e.what()),
           out, err != nullptr ? err->code() : ExitCode::kInternal);
    return;
  }
  if (rule_.outer() && st.outer_momentum.empty()) {
    st.outer_momentum.assign(static_cast<size_t>(options_.range.size()), 0.0f);  // a fresh start
  }
  store_.load(m.version, std::move(st.weights), std::move(st.m), std::move(st.v),
              rule_.outer() ? std::move(st.outer_momentum) : std::vector<float>{});
  out.push_back({from, p::ShardLoaded{options_.server_id, m.version, options_.range,
                                      std::chrono::duration<double>(
                                          std::chrono::steady_clock::now() - t0)
                                          .count()}});
  membership_epoch_ = m.membership_epoch;
  aggregator_.clear();
  prepared_.reset();
  expected_.reset();
  bf16_version_ = -1;  // the loaded weights may differ at the same version number
  serve_pending(out);
}

void RequestHandler::on_pull(const Endpoint& from, const p::PullRequest& m,
                             std::vector<Outgoing>& out) {
  const auto& r = options_.range;
  if (m.range.begin < r.begin || m.range.end > r.end || m.range.begin > m.range.end) {
    refuse(from,
           fmt::format("pull of [{}, {}) is outside the shard [{}, {})", m.range.begin,
                       m.range.end, r.begin, r.end),
           out);
    return;
  }
  if (!store_.loaded() || m.version > store_.version()) {
    pending_pulls_.emplace_back(from, m);
    return;
  }
  if (m.encoding == p::FloatEncoding::kBf16) {
    out.push_back({from, p::PullReply{m.request_id, store_.version(), m.range,
                                      bf16_weights(m.range), m.encoding}});
    return;
  }
  // Borrowed, not copied: the loop sends (and flushes) it before the weights change.
  const auto w = store_.weights().subspan(static_cast<size_t>(m.range.begin - options_.range.begin),
                                          static_cast<size_t>(m.range.size()));
  out.push_back({from, p::PullReply{m.request_id, store_.version(), m.range,
                                    p::FloatRange::borrow(w), m.encoding}});
}

p::FloatRange RequestHandler::bf16_weights(const p::KeyRange& r) {
  if (bf16_version_ != store_.version()) {
    bf16_weights_.resize(p::bf16_packed_size(store_.weights().size()));
    p::pack_bf16(store_.weights(), bf16_weights_);
    bf16_version_ = store_.version();
  }
  const auto offset = static_cast<size_t>(r.begin - options_.range.begin);
  const auto n = static_cast<size_t>(r.size());
  // Borrowed when the sub-range starts on a pair and its pad half (if any) is the shard's own;
  // workers pull whole slices, so that is every worker pull. Other sub-ranges get a copy.
  if (offset % 2 == 0 && (n % 2 == 0 || r.end == options_.range.end)) {
    return p::FloatRange::borrow(
        std::span<const float>(bf16_weights_).subspan(offset / 2, p::bf16_packed_size(n)));
  }
  std::vector<float> packed(p::bf16_packed_size(n));
  p::pack_bf16(store_.weights().subspan(offset, n), packed);
  return p::FloatRange(std::move(packed));
}

void RequestHandler::on_push(const Endpoint& from, p::GradPush&& m, std::vector<Outgoing>& out) {
  const auto& shard = options_.range;
  if (m.range.begin < shard.begin || m.range.end > shard.end || m.range.begin > m.range.end) {
    refuse(from,
           fmt::format("push from worker {} covers [{}, {}), outside the shard [{}, {})",
                       m.worker_id, m.range.begin, m.range.end, shard.begin, shard.end),
           out);
    return;
  }
  if (store_.loaded() && (m.step < store_.version() || (m.step == store_.version() && prepared_))) {
    // Late: that step closed without this worker (it was dropped: lost, stopped or past the step
    // deadline) and its windows went back to the pool. Expected in an elastic job; not an error.
    spdlog::info("server {}: ignored a late push from worker {} for step {} (the server is at "
                 "version {}{})",
                 options_.server_id, m.worker_id, m.step, store_.version(),
                 prepared_ ? ", reducing that step without it" : "");
    return;
  }
  if (m.membership_epoch < membership_epoch_) {
    refuse(from,
           fmt::format("stale push from worker {} (membership epoch {}, current {})", m.worker_id,
                       m.membership_epoch, membership_epoch_),
           out);
    return;
  }
  if (m.encoding != options_.push_encoding) {
    refuse(from,
           fmt::format("push from worker {} for step {} carries {} floats, this server takes {} "
                       "(cluster.wire_dtype must be the same for every role)",
                       m.worker_id, m.step, p::encoding_name(m.encoding),
                       p::encoding_name(options_.push_encoding)),
           out, ExitCode::kConfig);
    return;
  }
  if (!store_.loaded() || m.step != store_.version() || prepared_) {
    refuse(from,
           fmt::format("push from worker {} for step {} refused: the server is at version {}{}",
                       m.worker_id, m.step, store_.version(),
                       prepared_ ? " and already reducing that step" : ""),
           out);
    return;
  }
  const int32_t worker = m.worker_id;
  const int64_t tokens = m.tokens;
  using R = GradientAggregator::RangeResult;
  const R r = aggregator_.add_range(worker, tokens, m.range.begin - shard.begin,
                                    m.range.end - shard.begin, m.grads);
  if (r == R::kOverlap) {
    refuse(from,
           fmt::format("second push of [{}, {}) from worker {} for step {} (it overlaps a range "
                       "already received)",
                       m.range.begin, m.range.end, worker, m.step),
           out);
    return;
  }
  if (r == R::kTokens) {
    refuse(from,
           fmt::format("push of [{}, {}) from worker {} for step {} names {} tokens, its earlier "
                       "pieces another count",
                       m.range.begin, m.range.end, worker, m.step, tokens),
           out);
    return;
  }
  // The worker counts for the step (the coordinator may list it as a contributor) only once
  // every piece of the shard arrived: a worker lost between two buckets never counts.
  if (r == R::kPartial) return;
  out.push_back({net::coordinator_endpoint(),
                 p::PushReceived{options_.server_id, m.step, worker, tokens}});
  prepare_if_complete(out);
}

std::vector<GradientSlot> RequestHandler::gradient_slots() {
  std::vector<GradientSlot> out;
  if (!store_.loaded() || prepared_) return out;  // no push is accepted now
  for (auto& [worker, slot] : aggregator_.free_slots()) {
    out.push_back({worker, store_.version(), slot});
  }
  return out;
}

void RequestHandler::on_step_workers(const p::StepWorkers& m, std::vector<Outgoing>& out) {
  if (!store_.loaded() || m.step != store_.version()) {
    throw p::ProtocolError(fmt::format("server {}: StepWorkers for step {} while at version {}",
                                       options_.server_id, m.step, store_.version()));
  }
  if (m.workers.empty()) {
    throw p::ProtocolError(
        fmt::format("server {}: StepWorkers for step {} names no worker", options_.server_id,
                    m.step));
  }
  membership_epoch_ = std::max(membership_epoch_, m.membership_epoch);
  // The step begun again (every worker of the first attempt dropped): a reduction made for the
  // first attempt's set is void; the pushes stay (the aggregator names its contributors).
  prepared_.reset();
  expected_ = m;
  std::sort(expected_->workers.begin(), expected_->workers.end());
  aggregator_.expect(expected_->workers, divide());
  prepare_if_complete(out);
}

void RequestHandler::prepare_if_complete(std::vector<Outgoing>& out) {
  if (!expected_ || prepared_ || expected_->step != store_.version()) return;
  for (int32_t w : expected_->workers) {
    if (!aggregator_.has(w)) return;
  }
  prepare(expected_->step, expected_->workers, out);
}

void RequestHandler::on_contributors(const p::StepContributors& m, std::vector<Outgoing>& out) {
  // A reduction this server made on its own (every worker of StepWorkers had pushed here) is
  // replaced: the coordinator fixed a smaller set because some push did not reach every server.
  if (!store_.loaded() || m.step != store_.version() ||
      (prepared_ && prepared_->step != m.step)) {
    throw p::ProtocolError(fmt::format(
        "server {}: StepContributors for step {} while at version {}{}", options_.server_id,
        m.step, store_.version(), prepared_ ? " with another step prepared" : ""));
  }
  for (int32_t w : m.workers) {
    if (!aggregator_.has(w)) {
      throw p::ProtocolError(fmt::format(
          "server {}: step {} lists worker {} as a contributor, but no push from it arrived",
          options_.server_id, m.step, w));
    }
  }
  membership_epoch_ = std::max(membership_epoch_, m.membership_epoch);
  std::vector<int32_t> workers = m.workers;
  std::sort(workers.begin(), workers.end());
  prepare(m.step, std::move(workers), out);
}

void RequestHandler::prepare(int64_t step, std::vector<int32_t> workers,
                             std::vector<Outgoing>& out) {
  Prepared prep;
  prep.step = step;
  prep.workers = std::move(workers);
  const GradientAggregator::Reduction r = aggregator_.reduce(prep.workers, divide());
  const NormPartial& norm = r.norm;
  p::NormReport report{options_.server_id, step, norm.sum_squares, r.tokens,
                       norm.first_nonfinite < 0 ? int64_t{-1}
                                                : options_.range.begin + norm.first_nonfinite,
                       prep.workers};
  prepared_ = std::move(prep);
  out.push_back({net::coordinator_endpoint(), std::move(report)});
}

void RequestHandler::on_commit(const p::StepCommit& m, std::vector<Outgoing>& out) {
  if (!prepared_ || prepared_->step != m.step) {
    throw p::ProtocolError(fmt::format("server {}: StepCommit for step {} but {}",
                                       options_.server_id, m.step,
                                       prepared_ ? fmt::format("step {} is prepared",
                                                               prepared_->step)
                                                 : std::string("no step is prepared")));
  }
  std::vector<int32_t> workers = m.workers;
  std::sort(workers.begin(), workers.end());
  if (workers != prepared_->workers) {
    throw p::ProtocolError(fmt::format(
        "server {}: StepCommit for step {} names contributors [{}], prepared with [{}]",
        options_.server_id, m.step, fmt::join(workers, ", "),
        fmt::join(prepared_->workers, ", ")));
  }
  if (rule_.outer() && m.clip_coef != 1.0f) {
    throw p::ProtocolError(fmt::format(
        "server {}: StepCommit for step {} clips by {} under cluster.sync local (the workers clip "
        "their inner steps; a pseudo-gradient is never clipped)",
        options_.server_id, m.step, m.clip_coef));
  }
  const double lr =
      rule_.outer()
          ? rule_.apply_outer(m.step, aggregator_.reduced(), store_.weights(), store_.momentum())
          : rule_.apply(m.step, options_.range.begin, m.clip_coef, aggregator_.reduced(),
                        store_.weights(), store_.m(), store_.v());
  store_.set_version(m.step + 1);
  prepared_.reset();
  expected_.reset();
  aggregator_.clear();
  out.push_back({net::coordinator_endpoint(),
                 p::StepApplied{options_.server_id, m.step, store_.version(), lr}});
  serve_pending(out);
}

void RequestHandler::on_checkpoint_shard(const Endpoint& from, const p::CheckpointShard& m,
                                         std::vector<Outgoing>& out) {
  if (!store_.loaded() || m.version > store_.version()) {
    pending_shards_.emplace_back(from, m);
    return;
  }
  if (m.version < store_.version()) {
    refuse(from,
           fmt::format("checkpoint shard of version {} requested, the server holds version {}",
                       m.version, store_.version()),
           out);
    return;
  }
  if (!options_.write_shard) {
    refuse(from, "this server cannot write checkpoint shards (no shard writer)", out);
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    options_.write_shard(m.tmp_dir, store_.version(), store_.weights(), store_.m(), store_.v(),
                         store_.momentum());
  } catch (const std::exception& e) {
    refuse(from,
           fmt::format("cannot write checkpoint shard {} of version {} in {}: {}",
                       options_.server_id, m.version, m.tmp_dir, e.what()),
           out);
    return;
  }
  p::CheckpointShardWritten ack;
  ack.request_id = m.request_id;
  ack.server_id = options_.server_id;
  ack.version = store_.version();
  ack.range = options_.range;
  ack.write_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.push_back({from, ack});
}

void RequestHandler::serve_pending(std::vector<Outgoing>& out) {
  auto pulls = std::move(pending_pulls_);
  pending_pulls_.clear();
  for (auto& [from, req] : pulls) on_pull(from, req, out);
  auto shards = std::move(pending_shards_);
  pending_shards_.clear();
  for (auto& [from, req] : shards) on_checkpoint_shard(from, req, out);
}

}  // namespace ptrain
