// `ptrain bench train` and LocalJob (bench_train.hpp).
#include "bench/bench_train.hpp"

#include "bench/timing_backend.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/net/transport.hpp"
#include "common/proto/codec.hpp"
#include "common/proto/messages.hpp"
#include "coordinator/data_plan.hpp"
#include "coordinator/start_state.hpp"
#include "coordinator/step_machine.hpp"
#include "paramserver/param_server.hpp"
#include "paramserver/request_handler.hpp"
#include "paramserver/update_rule.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/batch_loader.hpp"
#include "worker/model/backend.hpp"
#include "worker/train_step.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <optional>
#include <random>
#include <utility>

namespace ptrain {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The job's only server, worker and membership epoch (one of each: nothing is sharded or split).
constexpr int32_t kServer = 0;
constexpr int32_t kWorker = 0;
constexpr int64_t kEpoch = 0;

struct Letter {
  net::Endpoint from, to;
  proto::Message message;
};

}  // namespace

struct LocalJob::Impl {
  Impl(const Config& c, const ParamLayout& l, Backend& backend, const std::string& token_file);

  void send(const net::Endpoint& from, const net::Endpoint& to, proto::Message m) {
    queue.push_back({from, to, std::move(m)});
  }
  void pump();
  template <class T>
  T take_for_worker(const char* waiting_for);
  // Throws what a message the worker did not expect means: a Failure's error, else ProtocolError.
  [[noreturn]] void refuse_worker_mail(const proto::Message& m, const char* expected) const;
  LocalStepResult run_step();

  Config config;
  const ParamLayout& layout;
  proto::KeyRange range;
  TrainStep train;
  RequestHandler server;
  StepMachine machine;

  // The tokens: a token file through the coordinator's data plan, or random windows.
  std::optional<TokenFile> file;
  std::optional<BatchLoader> loader;
  std::optional<DataPlan> plan;
  std::vector<int32_t> random_windows;  // B·(T+1) token ids: window i is [i·(T+1), (i+1)·(T+1))
  std::vector<int32_t> tokens;          // a random-token step's windows, in StepBegin's order

  std::deque<Letter> queue;                // messages not yet delivered
  std::deque<proto::Message> worker_inbox; // delivered to the worker, not yet taken
  int64_t next_step = 0;
  uint64_t next_request = 1;
};

LocalJob::Impl::Impl(const Config& c, const ParamLayout& l, Backend& backend,
                     const std::string& token_file)
    : config(c),
      layout(l),
      range{0, l.total()},
      // A micro-batch never holds more than the batch: that many sequences' activations suffice
      // and the micro-batches (so the numerics) are the same.
      train(l, backend, std::min(c.train.micro_batch, c.train.batch_size)),
      server(ServerOptions{kServer, range, {}, make_shard_loader(l, range)}, update_rule_for(c, l, range)),
      machine(StepMachineOptions{{kServer}, c.optim.grad_clip, WorkerLossPolicy::kStopJob}) {
  // The coordinator's fresh start, whatever checkpoint.resume says: a benchmark reads no run.
  Config fresh = config;
  fresh.checkpoint.resume = "never";
  StartState st = load_start_state(fresh, layout);
  next_step = st.step;
  const int64_t B = config.train.batch_size, T = layout.dims().T;
  if (!token_file.empty()) {
    file.emplace(TokenFile::open(token_file));
    if (file->vocab_size() > layout.dims().V) {
      throw DataError(fmt::format("{} was written with a vocabulary of {} tokens, the model's is {} "
                                  "(data.tokenizer {})",
                                  token_file, file->vocab_size(), layout.dims().V,
                                  config.data.tokenizer));
    }
    loader.emplace(*file, T);
    plan.emplace(loader->num_windows(), st.data);
  } else {
    random_windows.resize(static_cast<size_t>(B * (T + 1)));
    std::mt19937_64 rng(config.run.seed);
    for (auto& x : random_windows) {
      x = static_cast<int32_t>(rng() % static_cast<uint64_t>(layout.dims().V));
    }
  }
  // The server initialises its (here: the whole) range from run.seed, as at the start of a job.
  for (Outgoing& o : server.handle(net::coordinator_endpoint(),
                                   proto::LoadShard{st.step, kEpoch, range, config.run.seed, ""})) {
    if (!std::holds_alternative<proto::ShardLoaded>(o.message)) {
      throw InternalError(fmt::format("bench train: the server did not load its shard: {}",
                                      proto::type_name(proto::type_of(o.message))));
    }
  }
}

// Delivers every queued message (and what the deliveries send) in order. Stops early when the
// coordinator's step machine has failed: it takes no message after that.
void LocalJob::Impl::pump() {
  while (!queue.empty()) {
    Letter l = std::move(queue.front());
    queue.pop_front();
    if (l.to == net::server_endpoint(kServer)) {
      for (Outgoing& o : server.handle(l.from, std::move(l.message))) {
        send(l.to, o.to, std::move(o.message));
      }
    } else if (l.to == net::coordinator_endpoint()) {
      for (StepOutgoing& o : machine.handle(l.from, l.message)) {
        send(l.to, o.to, std::move(o.message));
      }
      if (machine.failure()) {
        queue.clear();
        return;
      }
    } else if (l.to == net::worker_endpoint(kWorker)) {
      worker_inbox.push_back(std::move(l.message));
    } else {
      throw InternalError(fmt::format("bench train: {} sent a message to {}, which is not part "
                                      "of this job",
                                      l.from.str(), l.to.str()));
    }
  }
}

template <class T>
T LocalJob::Impl::take_for_worker(const char* waiting_for) {
  if (worker_inbox.empty()) {
    throw InternalError(fmt::format("bench train: step {}: no {} for the worker", next_step + 1,
                                    waiting_for));
  }
  proto::Message m = std::move(worker_inbox.front());
  worker_inbox.pop_front();
  if (!std::holds_alternative<T>(m)) refuse_worker_mail(m, waiting_for);
  return std::get<T>(std::move(m));
}

void LocalJob::Impl::refuse_worker_mail(const proto::Message& m, const char* expected) const {
  if (const auto* f = std::get_if<proto::Failure>(&m)) {
    throw Error(proto::failure_code(*f), fmt::format("bench train: {}", f->message));
  }
  throw proto::ProtocolError(fmt::format("bench train: step {}: the worker expected {}, got {}",
                                         next_step + 1, expected,
                                         proto::type_name(proto::type_of(m))));
}

LocalStepResult LocalJob::Impl::run_step() {
  const auto t_start = Clock::now();
  LocalStepResult r;
  r.step = next_step;
  const int64_t B = config.train.batch_size, T = layout.dims().T;
  const net::Endpoint coordinator = net::coordinator_endpoint(),
                      server_ep = net::server_endpoint(kServer),
                      worker = net::worker_endpoint(kWorker);

  // Coordinator: the step's windows (the data plan's, or the random batch), all to the worker.
  std::vector<int64_t> windows;
  if (plan) {
    windows = plan->next_step(B);
  } else {
    windows.resize(static_cast<size_t>(B));
    for (int64_t i = 0; i < B; ++i) windows[static_cast<size_t>(i)] = i;
  }
  for (StepOutgoing& o : machine.begin_step(r.step, kEpoch, {{kWorker, std::move(windows)}})) {
    send(coordinator, o.to, std::move(o.message));
  }
  pump();
  const proto::StepBegin begin = take_for_worker<proto::StepBegin>("StepBegin");

  // Worker: pull the weights of this version into the pinned buffer, compute, push, report.
  const auto t0 = Clock::now();
  send(worker, server_ep, proto::PullRequest{next_request++, begin.step, range});
  pump();
  const proto::PullReply weights = take_for_worker<proto::PullReply>("PullReply");
  if (weights.version != begin.step || weights.range != range) {
    throw proto::ProtocolError(fmt::format(
        "bench train: step {}: the server sent version {} of [{}, {})", begin.step + 1,
        weights.version, weights.range.begin, weights.range.end));
  }
  std::memcpy(train.weights_host().data(), weights.weights.data(),
              weights.weights.size() * sizeof(float));
  r.pull_s = seconds_since(t0);

  const auto t1 = Clock::now();
  train.upload_weights();
  LossSum sum;
  if (loader) {
    sum = train.compute(*loader, begin.windows);
  } else {
    tokens.resize(begin.windows.size() * static_cast<size_t>(T + 1));
    for (size_t i = 0; i < begin.windows.size(); ++i) {
      const auto w = static_cast<size_t>(begin.windows[i]);
      std::copy_n(random_windows.begin() + static_cast<ptrdiff_t>(w * (T + 1)), T + 1,
                  tokens.begin() + static_cast<ptrdiff_t>(i * static_cast<size_t>(T + 1)));
    }
    sum = train.compute(tokens, static_cast<int64_t>(begin.windows.size()));
  }
  r.compute_s = seconds_since(t1);

  const auto t2 = Clock::now();
  const std::span<const float> g = train.grads_host();
  send(worker, server_ep,
       proto::GradPush{begin.step, begin.membership_epoch, kWorker, sum.tokens, range,
                       std::vector<float>(g.begin(), g.end())});
  send(worker, coordinator,
       proto::WorkerStepDone{kWorker, begin.step, sum.loss_sum, sum.tokens, r.pull_s,
                             r.compute_s, 0.0, 0, 0});
  pump();
  if (machine.failure()) {
    const StepFailure& f = *machine.failure();
    const std::string text = fmt::format("bench train: {}", f.message);
    if (f.kind == StepFailure::Kind::kNonFinite) throw NumericError(text);
    throw InternalError(text);
  }
  // A refusal of the push (a Failure to the worker) leaves the step unapplied: report it first.
  if (!worker_inbox.empty()) refuse_worker_mail(worker_inbox.front(), "no message");
  PTRAIN_ENFORCE(machine.applied(), "step {} ended {}", r.step + 1, phase_name(machine.phase()));
  r.update_s = seconds_since(t2);

  r.loss = machine.loss();
  r.tokens = machine.tokens();
  r.grad_norm = machine.global_norm();
  r.clip_coef = machine.clip_coef();
  r.lr = machine.lr();
  r.total_s = seconds_since(t_start);
  ++next_step;
  return r;
}

namespace {
// The in-process step below is bsp's (one gradient, the servers' AdamW); local steps are not.
const Config& bsp_only(const Config& config) {
  if (config.cluster.sync != SyncMode::kBsp) {
    throw NotImplementedError("ptrain bench train with cluster.sync other than bsp is not "
                              "implemented yet (time a `ptrain run` of the job instead)");
  }
  return config;
}
}  // namespace

LocalJob::LocalJob(const Config& config, const ParamLayout& layout, Backend& backend,
                   const std::string& token_file)
    : impl_(std::make_unique<Impl>(bsp_only(config), layout, backend, token_file)) {}

LocalJob::~LocalJob() = default;

LocalStepResult LocalJob::run_step() { return impl_->run_step(); }
int64_t LocalJob::version() const { return impl_->server.store().version(); }
std::span<const float> LocalJob::weights() const { return impl_->server.store().weights(); }
std::span<const float> LocalJob::m() const { return impl_->server.store().m(); }
std::span<const float> LocalJob::v() const { return impl_->server.store().v(); }

int run_bench_train(const BenchTrainOptions& o) {
  if (o.steps < 1 || o.warmup < 0) {
    throw UsageError(fmt::format("bench train: --steps must be >= 1 and --warmup >= 0 (got {}, {})",
                                 o.steps, o.warmup));
  }
  if (!o.device.empty()) check_device(o.device, "--device");  // before any work
  std::vector<ConfigOverride> overrides;
  for (const auto& s : o.sets) overrides.push_back(parse_override(s));
  const Config config = load_config(o.config, overrides);
  // Random tokens may use every row of model.vocab_size; a token file is read as a job reads it,
  // with the tokenizer's vocabulary.
  const int64_t vocab = o.tokens.empty() && config.model.vocab_size > 0
                            ? config.model.vocab_size
                            : load_tokenizer(config.data.tokenizer)->vocab_size();
  const ModelDims dims = model_dims(config.model, vocab);
  const ParamLayout layout(dims);
  const int64_t B = config.train.batch_size, T = dims.T;
  const int64_t mb = std::min(config.train.micro_batch, B);
  auto backend = make_backend_for(o.device, config);
  std::unique_ptr<TimingBackend> timing;
  if (o.profile) timing = std::make_unique<TimingBackend>(*backend);
  Backend& compute = timing ? static_cast<Backend&>(*timing) : *backend;
  LocalJob job(config, layout, compute, o.tokens);
  const std::string token_source = o.tokens.empty() ? "random" : o.tokens;

  spdlog::info("bench train: V {} (padded {}), T {}, L {}, NH {}, C {}; {} parameters; batch {} "
               "in micro-batches of {}; {} tokens; {}",
               dims.V, dims.Vp, T, dims.L, dims.NH, dims.C, layout.total(), B, mb, token_source,
               backend->name());
  for (int64_t i = 0; i < o.warmup; ++i) {
    const LocalStepResult st = job.run_step();
    spdlog::info("warmup step {}: {:.1f} ms, loss {:.4f}", i, st.total_s * 1e3, st.loss);
  }
  if (timing) timing->reset();
  const double cpu0 = process_cpu_seconds();
  std::vector<LocalStepResult> timed;
  for (int64_t i = 0; i < o.steps; ++i) {
    timed.push_back(job.run_step());
    const LocalStepResult& st = timed.back();
    spdlog::info("step {}: {:.1f} ms (pull {:.1f}, forward+backward {:.1f}, server update {:.1f}), "
                 "loss {:.4f}, norm {:.4f}, clip {:.4f}, lr {:.3e}",
                 i, st.total_s * 1e3, st.pull_s * 1e3, st.compute_s * 1e3, st.update_s * 1e3,
                 st.loss, st.grad_norm, st.clip_coef, st.lr);
  }
  const double cpu_s = process_cpu_seconds() - cpu0;
  double total = 0, pull = 0, fb = 0, up = 0, best = 1e300;
  for (const auto& st : timed) {
    total += st.total_s, pull += st.pull_s, fb += st.compute_s, up += st.update_s;
    best = std::min(best, st.total_s);
  }
  const double k = static_cast<double>(timed.size());
  const double ms = total / k * 1e3;
  const double tokens_per_step = static_cast<double>(B * T);
  const double tokens_per_s = tokens_per_step / (total / k);
  const double flops_per_token = 6.0 * static_cast<double>(layout.total()) +
                                 12.0 * static_cast<double>(dims.L * T * dims.C);
  const double gflops = flops_per_token * tokens_per_s / 1e9;
  // On a GPU: MFU against the chip's dense bf16 product rate, measured now on the same device
  // (cuBLASLt, 8192³), for the whole step and for the worker's forward+backward alone.
  const DeviceInfo dev = device_info(*backend, 8192);
  const double peak = dev.bf16_matmul_flops;
  const double mfu = peak > 0 ? gflops * 1e9 / peak : 0.0;
  const double mfu_fb = peak > 0 && fb > 0 ? flops_per_token * tokens_per_step / (fb / k) / peak : 0.0;
  if (timing) {
    spdlog::info("per-op time per step, {} timed steps: {:32s} {:>9s} {:>6s} {:>9s}", timed.size(),
                 "op", "wall ms", "wall%", "cpu ms");
    for (const auto& [op, cost] : timing->totals()) {
      spdlog::info("  {:32s} {:9.1f} {:5.1f}% {:9.1f}", op, cost.wall / k * 1e3,
                   100.0 * cost.wall / total, cost.cpu / k * 1e3);
    }
  }

  const LocalStepResult& last = timed.back();
  if (o.json) {
    nlohmann::json j = {
        {"bench", "train"},
        {"config", config.source},
        {"tokens", token_source},
        {"V", dims.V},
        {"Vp", dims.Vp},
        {"T", T},
        {"L", dims.L},
        {"NH", dims.NH},
        {"C", dims.C},
        {"batch_size", B},
        {"micro_batch", mb},
        {"threads", backend->threads()},
        {"backend", backend->name()},
        {"params", layout.total()},
        {"flops_per_token", flops_per_token},
        {"warmup_steps", o.warmup},
        {"steps", o.steps},
        {"ms_per_step", ms},
        {"ms_per_step_best", best * 1e3},
        {"cpu_ms_per_step", cpu_s / k * 1e3},
        {"pull_ms", pull / k * 1e3},
        {"fwd_bwd_ms", fb / k * 1e3},
        {"optimizer_ms", up / k * 1e3},
        {"tokens_per_s", tokens_per_s},
        {"gflops", gflops},
        {"device_bf16_peak_tflops", peak / 1e12},
        {"mfu", mfu},
        {"mfu_fwd_bwd", mfu_fb},
        {"device_memory_used_bytes", dev.memory_used},
        {"device_memory_total_bytes", dev.memory_total},
        {"device_epilogues", dev.epilogues},
        {"loss", last.loss},
        {"grad_norm", last.grad_norm},
        {"clip_coef", last.clip_coef},
        {"lr", last.lr},
    };
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("bench train %s\n", config.source.c_str());
    std::printf("  model       V %lld (Vp %lld), T %lld, L %lld, NH %lld, C %lld: %lld parameters\n",
                static_cast<long long>(dims.V), static_cast<long long>(dims.Vp),
                static_cast<long long>(T), static_cast<long long>(dims.L),
                static_cast<long long>(dims.NH), static_cast<long long>(dims.C),
                static_cast<long long>(layout.total()));
    std::printf("  batch       %lld sequences (micro-batch %lld) of %s tokens, %s\n",
                static_cast<long long>(B), static_cast<long long>(mb), token_source.c_str(),
                backend->name().c_str());
    std::printf("  ms/step     %.1f (best %.1f; pull %.1f, forward+backward %.1f, server update "
                "%.1f) over %lld steps after %lld warmup\n",
                ms, best * 1e3, pull / k * 1e3, fb / k * 1e3, up / k * 1e3,
                static_cast<long long>(o.steps), static_cast<long long>(o.warmup));
    std::printf("  cpu time    %.1f ms/step (all threads)\n", cpu_s / k * 1e3);
    std::printf("  tokens/s    %.0f\n", tokens_per_s);
    std::printf("  GFLOP/s     %.1f (%.1f MFLOP/token = 6N + 12LTC)\n", gflops,
                flops_per_token / 1e6);
    std::printf("  last step   loss %.4f, gradient norm %.4f, clip %.4f, lr %.3e\n", last.loss,
                last.grad_norm, static_cast<double>(last.clip_coef), last.lr);
    std::printf("  threads     %d\n", backend->threads());
    if (dev.is_device) {
      std::printf("  device      bf16 product peak %.1f TFLOP/s (measured now, cuBLASLt 8192^3); "
                  "memory %.2f of %.2f GiB in use\n",
                  peak / 1e12, static_cast<double>(dev.memory_used) / (1 << 30),
                  static_cast<double>(dev.memory_total) / (1 << 30));
      std::printf("  MFU         %.1f%% of the step, %.1f%% of forward+backward\n", 100.0 * mfu,
                  100.0 * mfu_fb);
      std::printf("  epilogues   %s\n", dev.epilogues.c_str());
    }
  }
  return 0;
}

}  // namespace ptrain
