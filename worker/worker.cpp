#include "worker/worker.hpp"

#include "common/data/val_loss.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/proto/codec.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/batch_loader.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"
#include "worker/ps_client.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <optional>

namespace ptrain {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// acc += x, element-wise (deterministic whatever the thread count).
void add_into(std::vector<float>& acc, const std::vector<float>& x) {
  const auto n = static_cast<int64_t>(acc.size());
  float* a = acc.data();
  const float* b = x.data();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

// The loop itself; run_worker wraps it with failure reporting.
void worker_loop(const WorkerOptions& o, const ParamLayout& layout,
                 std::vector<proto::KeyRange> server_ranges, net::Transport& transport) {
  const int threads = std::max(1, o.threads);
  omp_set_num_threads(threads);
  std::unique_ptr<Backend> backend =
      o.make_backend ? o.make_backend(threads) : make_cpu_backend(threads);
  const int64_t T = layout.dims().T;
  Gpt gpt(layout, *backend, o.micro_batch);
  TokenFile file = TokenFile::open(o.train_path);
  BatchLoader loader(file, T);
  PsClient client(transport, std::move(server_ranges));

  std::vector<float> params(static_cast<size_t>(layout.total()));
  std::vector<float> grads(static_cast<size_t>(layout.total()));
  std::vector<float> mb_grads;  // a second micro-batch's gradient, before it is folded in
  std::vector<int32_t> tokens;
  const std::string me = transport.self().str();

  // Validation (EvalBegin): the weights of that version, the forward pass over each batch of the
  // given windows of data.val, one loss sum per batch back to the coordinator, which adds them
  // in batch order (common/data/val_loss.hpp).
  std::optional<TokenFile> val_file;
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
    if (!val_file) val_file.emplace(TokenFile::open(o.val_path));
    const BatchLoader val(*val_file, T);
    client.wait(client.pull(e.version, params), o.timeout);
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
      const LossSum ls = gpt.forward_loss(params, tokens, end - b, T);
      done.loss_sums.push_back(ls.loss_sum);
      done.tokens.push_back(ls.tokens);
    }
    done.eval_s = seconds_since(t0);
    transport.send(net::coordinator_endpoint(), done);
  };

  for (;;) {
    std::optional<net::Envelope> env = client.next_other(o.timeout);
    if (!env) {
      throw Error(ExitCode::kIo,
                  fmt::format("{}: no message from the coordinator within {} s", me,
                              std::chrono::duration_cast<std::chrono::seconds>(o.timeout).count()));
    }
    if (std::holds_alternative<proto::Shutdown>(env->message)) return;
    if (auto* f = std::get_if<proto::Failure>(&env->message)) {
      throw Error(proto::failure_code(*f), fmt::format("{}: {}", env->from.str(), f->message));
    }
    if (auto* eval = std::get_if<proto::EvalBegin>(&env->message)) {
      evaluate(*eval);
      continue;
    }
    auto* begin = std::get_if<proto::StepBegin>(&env->message);
    if (begin == nullptr) {
      throw proto::ProtocolError(fmt::format("{}: unexpected {} from {}", me,
                                             proto::type_name(proto::type_of(env->message)),
                                             env->from.str()));
    }

    const auto t0 = Clock::now();
    client.wait(client.pull(begin->step, params), o.timeout);
    const double pull_s = seconds_since(t0);

    const auto t1 = Clock::now();
    loader.load(begin->windows, tokens);
    const auto n = static_cast<int64_t>(begin->windows.size());
    const auto batches = micro_batches(n, o.micro_batch);
    std::fill(grads.begin(), grads.end(), 0.0f);
    if (batches.size() > 1 && mb_grads.empty()) mb_grads.resize(grads.size());
    LossSum sum;
    for (size_t k = 0; k < batches.size(); ++k) {
      const auto [b, e] = batches[k];
      const std::span<const int32_t> mb(tokens.data() + b * (T + 1),
                                        static_cast<size_t>((e - b) * (T + 1)));
      // Micro-batch k's gradient is computed from zero and folded in (fp32, in order), the way
      // the servers fold workers' pushes: see paramserver/aggregator.hpp.
      std::vector<float>& dst = k == 0 ? grads : mb_grads;
      if (k > 0) std::fill(dst.begin(), dst.end(), 0.0f);
      const LossSum ls = gpt.forward_backward(params, dst, mb, e - b, T, 1.0f);
      if (k > 0) add_into(grads, mb_grads);
      sum.loss_sum += ls.loss_sum;
      sum.tokens += ls.tokens;
    }
    const double compute_s = seconds_since(t1);

    const auto t2 = Clock::now();
    client.push(PushMeta{begin->step, begin->membership_epoch, o.worker_id, sum.tokens}, grads);
    const double push_s = seconds_since(t2);

    const net::TransportCounters c = transport.counters();
    transport.send(
        net::coordinator_endpoint(),
        proto::WorkerStepDone{o.worker_id, begin->step, sum.loss_sum, sum.tokens, pull_s,
                              compute_s, push_s,
                              c.bytes_sent_by_type[static_cast<size_t>(
                                  proto::MessageType::kGradPush)],
                              c.bytes_received_by_type[static_cast<size_t>(
                                  proto::MessageType::kPullReply)]});
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
