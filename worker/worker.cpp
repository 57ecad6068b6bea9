#include "worker/worker.hpp"

#include "common/data/val_loss.hpp"
#include "common/error.hpp"
#include "common/io/inner_state.hpp"
#include "common/io/token_file.hpp"
#include "common/proto/codec.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/batch_loader.hpp"
#include "worker/local_steps.hpp"
#include "worker/model/backend.hpp"
#include "worker/overlap.hpp"
#include "worker/ps_client.hpp"
#include "worker/train_step.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <thread>
#include <utility>

namespace ptrain {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Test-only fault injection (WorkerOptions::fault_phase): a real SIGKILL, as `kill -9` would.
[[noreturn]] void die_for_test(const std::string& me, const std::string& phase, int64_t step) {
  std::fprintf(stderr, "%s: test fault injection: SIGKILL at %s of step %lld\n", me.c_str(),
               phase.c_str(), static_cast<long long>(step));
  std::fflush(stderr);
  ::raise(SIGKILL);
  std::abort();
}

// The loop itself; run_worker wraps it with failure reporting.
void worker_loop(const WorkerOptions& o, const ParamLayout& layout,
                 std::vector<proto::KeyRange> server_ranges, net::Transport& transport) {
  const int threads = std::max(1, o.threads);
  omp_set_num_threads(threads);
  std::unique_ptr<Backend> backend =
      o.make_backend ? o.make_backend(threads)
                     : make_backend(o.device, backend_options(o.device_config, threads));
  TrainStep train(layout, *backend, o.micro_batch, o.seed);
  TokenFile file = TokenFile::open(o.train_path);
  BatchLoader loader(file, layout.dims().T);
  PsClient client(transport, std::move(server_ranges), std::chrono::minutes(10), o.wire_encoding);
  client.set_error_feedback(o.wire_error_feedback);
  const std::string me = transport.self().str();
  if (o.leased && !o.fault_phase.empty() && o.fault_phase != "delay-push") {
    throw ConfigError(fmt::format("{}: test fault injection at {} is not supported with "
                                  "cluster.sync ssp or async (only delay-push)",
                                  me, o.fault_phase));
  }
  // cluster.sync local: H inner steps per StepBegin, and the pseudo-gradient pushed.
  std::optional<LocalSteps> local;
  if (o.local) local.emplace(layout, *o.local);
  // cluster.bucket_mb > 0: weights in pieces and gradients in buckets while the step computes.
  const int64_t bucket = bucket_floats(o.bucket_mb);
  PiecewisePull pieces(client, bucket, o.timeout);
  BucketPush buckets(client, std::max<int64_t>(bucket, 1));

  // Validation (EvalBegin): the weights of that version, the forward pass over each batch of the
  // given windows of data.val, one loss sum per batch back to the coordinator, which adds them
  // in batch order (common/data/val_loss.hpp).
  std::optional<TokenFile> val_file;
  std::vector<int32_t> tokens;
  auto evaluate = [&](const proto::EvalBegin& e) {
    if (o.val_path.empty()) {
      throw ConfigError(fmt::format("{}: asked to evaluate, but data.val is not set", me));
    }
    if (e.batch < 1 || e.batch > o.micro_batch || e.window_begin < 0 ||
        e.window_end < e.window_begin || e.window_begin % e.batch != 0) {
      throw proto::ProtocolError(fmt::format(
          "{}: EvalBegin for windows [{}, {}) in batches of {} (this worker's micro-batch is {})",
          me, e.window_begin, e.window_end, e.batch, o.micro_batch));
    }
    if (!val_file) val_file.emplace(TokenFile::open(o.val_path, "val"));
    const BatchLoader val(*val_file, layout.dims().T);
    client.wait(client.pull(e.version, train.weights_host()), o.timeout);
    train.upload_weights();
    const auto t0 = Clock::now();
    proto::EvalDone done;
    done.request_id = e.request_id;
    done.worker_id = o.worker_id;
    done.version = e.version;
    done.window_begin = e.window_begin;
    std::vector<int64_t> ids;
    for (const auto& [b, end] : val_batches(e.window_end - e.window_begin, e.batch)) {
      ids.resize(static_cast<size_t>(end - b));
      for (int64_t i = b; i < end; ++i) ids[static_cast<size_t>(i - b)] = e.window_begin + i;
      val.load(ids, tokens);
      const LossSum ls = train.loss(tokens, end - b, ids);
      done.loss_sums.push_back(ls.loss_sum);
      done.tokens.push_back(ls.tokens);
    }
    done.eval_s = seconds_since(t0);
    transport.send(net::coordinator_endpoint(), done);
  };

  // cluster.sync ssp and async: the gradient of a lease, computed and waiting for its step.
  struct ComputedLease {
    uint64_t lease_id = 0;
    std::vector<int64_t> windows;
    int64_t base_version = 0;  // the weights it was computed from (oldest shard's version)
    LossSum sum;
    double pull_s = 0.0, compute_s = 0.0;
  };
  std::optional<ComputedLease> leased;
  auto compute_lease = [&](const proto::LeaseGrant& lease) {
    ComputedLease c;
    c.lease_id = lease.lease_id;
    c.windows = lease.windows;
    const auto t0 = Clock::now();
    client.wait(client.pull_newest(lease.min_version, train.weights_host()), o.timeout);
    c.base_version = client.last_pulled_version();
    c.pull_s = seconds_since(t0);
    const auto t1 = Clock::now();
    train.upload_weights();
    // The lease id keys BERT's masks as a step number does in bsp: fixed before the step's turn.
    c.sum = train.compute(loader, lease.windows, static_cast<int64_t>(lease.lease_id));
    // A straggler for tests (fault_phase "delay-push"): slow to finish its gradient.
    if (o.fault_phase == "delay-push" && static_cast<int64_t>(lease.lease_id) + 1 >= o.fault_step) {
      std::this_thread::sleep_for(std::chrono::duration<double>(o.fault_delay_s));
    }
    c.compute_s = seconds_since(t1);
    return c;
  };
  auto push_lease = [&](const ComputedLease& c, const proto::StepBegin& begin) {
    const auto t0 = Clock::now();
    client.push(PushMeta{begin.step, begin.membership_epoch, o.worker_id, c.sum.tokens},
                train.grads_host());
    const double push_s = seconds_since(t0);
    const net::TransportCounters n = transport.counters();
    transport.send(
        net::coordinator_endpoint(),
        proto::WorkerStepDone{o.worker_id, begin.step, c.sum.loss_sum, c.sum.tokens, c.pull_s,
                              c.compute_s, push_s,
                              n.bytes_sent_by_type[static_cast<size_t>(
                                  proto::MessageType::kGradPush)],
                              n.bytes_received_by_type[static_cast<size_t>(
                                  proto::MessageType::kPullReply)],
                              train.has_accuracy() ? c.sum.correct : -1});
  };

  for (;;) {
    // Between messages is a step boundary: the place to leave.
    std::optional<net::Envelope> env;
    const auto give_up = Clock::now() + o.timeout;
    while (!env) {
      if (o.leave_requested && o.leave_requested()) {
        transport.send(net::coordinator_endpoint(),
                       proto::Shutdown{fmt::format("{} leaving at a step boundary", me)});
        return;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(give_up - Clock::now());
      if (left.count() <= 0) {
        throw Error(ExitCode::kIo,
                    fmt::format("{}: no message from the coordinator within {} s", me,
                                std::chrono::duration_cast<std::chrono::seconds>(o.timeout)
                                    .count()));
      }
      env = client.next_other(o.leave_requested ? std::min(left, std::chrono::milliseconds(100))
                                                : left);
    }
    if (std::holds_alternative<proto::Shutdown>(env->message)) return;
    if (auto* f = std::get_if<proto::Failure>(&env->message)) {
      throw Error(proto::failure_code(*f), fmt::format("{}: {}", env->from.str(), f->message));
    }
    if (auto* eval = std::get_if<proto::EvalBegin>(&env->message)) {
      evaluate(*eval);
      continue;
    }
    // cluster.sync local: the inner optimizer state into a checkpoint, or back from one.
    auto* save = std::get_if<proto::InnerStateSave>(&env->message);
    auto* load = std::get_if<proto::InnerStateLoad>(&env->message);
    if (save != nullptr || load != nullptr) {
      if (!local) {
        throw proto::ProtocolError(fmt::format(
            "{}: unexpected {} from {} (this job's cluster.sync is not local)", me,
            proto::type_name(proto::type_of(env->message)), env->from.str()));
      }
      const auto t0 = Clock::now();
      proto::InnerStateDone done;
      done.worker_id = o.worker_id;
      if (save != nullptr) {
        if (o.fault_phase == "inner-save" && save->version >= o.fault_step) {
          die_for_test(me, o.fault_phase, save->version);
        }
        write_inner_state(save->tmp_dir, layout, save->version, save->slot, local->inner_steps(),
                          local->m(), local->v());
        done.request_id = save->request_id;
        done.version = save->version;
        done.slot = save->slot;
      } else {
        const InnerState st = read_inner_state(load->checkpoint, layout, load->version, load->slot);
        local->restore(st.inner_steps, st.m, st.v);
        done.request_id = load->request_id;
        done.version = load->version;
        done.slot = load->slot;
      }
      done.inner_steps = local->inner_steps();
      done.seconds = seconds_since(t0);
      transport.send(net::coordinator_endpoint(), done);
      continue;
    }
    if (auto* lease = std::get_if<proto::LeaseGrant>(&env->message)) {
      if (!o.leased || leased) {
        throw proto::ProtocolError(fmt::format(
            "{}: unexpected LeaseGrant {} from {} ({})", me, lease->lease_id, env->from.str(),
            !o.leased ? "this job's cluster.sync is not ssp or async"
                      : fmt::format("lease {} is computed and waits for its step",
                                    leased->lease_id)));
      }
      leased = compute_lease(*lease);
      transport.send(net::coordinator_endpoint(),
                     proto::PushReady{o.worker_id, leased->lease_id, leased->base_version});
      continue;
    }
    auto* begin = std::get_if<proto::StepBegin>(&env->message);
    if (begin == nullptr) {
      throw proto::ProtocolError(fmt::format("{}: unexpected {} from {}", me,
                                             proto::type_name(proto::type_of(env->message)),
                                             env->from.str()));
    }
    if (o.leased) {
      if (!leased || leased->windows != begin->windows) {
        throw proto::ProtocolError(fmt::format(
            "{}: StepBegin of step {} names {} window(s) {}", me, begin->step + 1,
            begin->windows.size(),
            leased ? fmt::format("that are not those of lease {}", leased->lease_id)
                   : std::string("but no lease is computed")));
      }
      push_lease(*std::exchange(leased, std::nullopt), *begin);
      continue;
    }

    const PushMeta meta{begin->step, begin->membership_epoch, o.worker_id,
                        static_cast<int64_t>(begin->windows.size()) * layout.dims().T};
    const bool fault = !o.fault_phase.empty() && begin->step + 1 >= o.fault_step;
    double pull_s = 0.0, compute_s = 0.0, push_s = 0.0;
    LossSum sum;
    // GPT only: its token count (B·T) is known before the backward pass, and each bucket names
    // it; BERT's (the masked positions) only after it.
    // Local steps push a pseudo-gradient made after all H inner steps: nothing to overlap.
    if (bucket > 0 && !local && layout.dims().arch == ModelArch::kGpt &&
        !(fault && o.fault_phase != "mid-push")) {
      // Overlapped: the pieces of the weights are asked for now and waited for as forward
      // reaches them; buckets of the gradient leave during the last micro-batch's backward.
      // pull_s / push_s are the time the step spent blocked on them, compute_s the rest.
      const auto t0 = Clock::now();
      pieces.start(begin->step, train.weights_host());
      buckets.start(meta);
      if (fault) {  // mid-push: killed once its first message (a bucket's piece) is written
        buckets.after_message = [&] { die_for_test(me, o.fault_phase, o.fault_step); };
      }
      try {
        sum = train.compute(loader, begin->windows, begin->step, {&pieces, &buckets});
      } catch (const StaleStep&) {
        pieces.finish();  // drains the pieces still on their way
        transport.send(net::coordinator_endpoint(),
                       proto::WorkerStepDone{o.worker_id, begin->step, 0.0, 0, seconds_since(t0)});
        continue;
      }
      pieces.finish();
      buckets.finish();
      pull_s = pieces.blocked_s();
      push_s = buckets.push_s();
      compute_s = std::max(0.0, seconds_since(t0) - pull_s - push_s);
      PTRAIN_ENFORCE(sum.tokens == meta.tokens, "step {}: {} tokens computed, {} announced in its pushes", begin->step,
                     sum.tokens, meta.tokens);
    } else {
      // The weights arrive straight in the step's pinned buffer and go up once; the step's
      // token-sum gradient comes back once, into the other pinned buffer, and is pushed from there.
      const auto t0 = Clock::now();
      if (!client.wait(client.pull(begin->step, train.weights_host()), o.timeout)) {
        // Late (stopped or slow past the step deadline): that step closed without us and its
        // windows went back to the pool. Report it empty, so the coordinator gives us the next one.
        transport.send(net::coordinator_endpoint(),
                       proto::WorkerStepDone{o.worker_id, begin->step, 0.0, 0, seconds_since(t0)});
        continue;
      }
      pull_s = seconds_since(t0);

      const auto t1 = Clock::now();
      std::span<const float> to_push;
      if (local) {
        sum = local->run(train, loader, begin->windows, begin->step);
        to_push = local->pseudo_gradient();
      } else {
        train.upload_weights();
        sum = train.compute(loader, begin->windows, begin->step);
        to_push = train.grads_host();
      }
      compute_s = seconds_since(t1);

      const auto t2 = Clock::now();
      const PushMeta done_meta{begin->step, begin->membership_epoch, o.worker_id, sum.tokens};
      if (fault && o.fault_phase == "delay-push") {
        std::fprintf(stderr, "%s: test fault injection: %.3g s before the push of step %lld\n",
                     me.c_str(), o.fault_delay_s, static_cast<long long>(begin->step + 1));
        std::this_thread::sleep_for(std::chrono::duration<double>(o.fault_delay_s));
      }
      if (fault && o.fault_phase == "before-push") die_for_test(me, o.fault_phase, o.fault_step);
      if (fault && o.fault_phase == "mid-push") {
        client.push_to(done_meta, to_push, 0, 1);
        die_for_test(me, o.fault_phase, o.fault_step);
      }
      client.push(done_meta, to_push);
      if (fault && o.fault_phase == "after-push") die_for_test(me, o.fault_phase, o.fault_step);
      push_s = seconds_since(t2);
    }

    const net::TransportCounters c = transport.counters();
    transport.send(
        net::coordinator_endpoint(),
        proto::WorkerStepDone{o.worker_id, begin->step, sum.loss_sum, sum.tokens, pull_s,
                              compute_s, push_s,
                              c.bytes_sent_by_type[static_cast<size_t>(
                                  proto::MessageType::kGradPush)],
                              c.bytes_received_by_type[static_cast<size_t>(
                                  proto::MessageType::kPullReply)],
                              train.has_accuracy() ? sum.correct : -1});
  }
}

}  // namespace

void run_worker(const WorkerOptions& options, const ParamLayout& layout,
                std::vector<proto::KeyRange> server_ranges, net::Transport& transport) {
  try {
    worker_loop(options, layout, std::move(server_ranges), transport);
  } catch (const net::TransportClosed&) {
    throw;
  } catch (const std::exception& e) {
    net::report_failure_to_coordinator(transport, e);
    throw;
  }
}

}  // namespace ptrain
