#include "launch/threads_job.hpp"

#include "launch/preflight.hpp"

#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/net/inproc_transport.hpp"
#include "common/net/membership.hpp"
#include "common/util/fs.hpp"
#include "common/util/run_lock.hpp"
#include "status/status_service.hpp"
#include "paramserver/param_server.hpp"
#include "paramserver/update_rule.hpp"
#include "worker/worker.hpp"

#include <fmt/format.h>
#include <omp.h>
#include <spdlog/spdlog.h>

#include <exception>
#include <filesystem>
#include <mutex>
#include <thread>

namespace ptrain {

int threads_per_role(int64_t configured, int64_t roles_sharing) {
  if (configured > 0) return static_cast<int>(configured);
  const int cores = std::max(1, omp_get_num_procs());
  return std::max<int>(1, cores / static_cast<int>(std::max<int64_t>(1, roles_sharing)));
}

void warn_if_oversubscribed(const Config& c) {
  if (c.run.threads <= 0) return;  // automatic: shared by construction
  const int cores = std::max(1, omp_get_num_procs());
  const int64_t busiest = std::max(c.cluster.workers, c.cluster.servers) * c.run.threads;
  if (busiest > cores) {
    spdlog::warn("run.threads {} for each of {} worker(s) and {} server(s) asks for up to {} compute "
                 "threads at once on {} core(s): the roles will slow each other down; "
                 "run.threads: 0 shares the cores among them",
                 c.run.threads, c.cluster.workers, c.cluster.servers, busiest, cores);
  }
}

namespace {

// The first real failure of the job's threads (a TransportClosed only if nothing else failed).
class FirstFailure {
 public:
  explicit FirstFailure(std::shared_ptr<net::InprocFabric> fabric) : fabric_(std::move(fabric)) {}

  template <class F>
  void guard(const std::string& who, F&& f) {
    try {
      f();
    } catch (const net::TransportClosed&) {
      record(std::current_exception(), /*closed=*/true);
    } catch (const std::exception& e) {
      spdlog::debug("{} failed: {}", who, e.what());
      record(std::current_exception(), /*closed=*/false);
      fabric_->close(fmt::format("{} failed", who));
    }
  }

  void rethrow_if_any() {
    std::lock_guard lock(mu_);
    if (error_) std::rethrow_exception(error_);
    if (closed_) std::rethrow_exception(closed_);
  }

 private:
  void record(std::exception_ptr e, bool closed) {
    std::lock_guard lock(mu_);
    if (closed) {
      if (!closed_) closed_ = e;
    } else if (!error_) {
      error_ = e;
    }
  }
  std::shared_ptr<net::InprocFabric> fabric_;
  std::mutex mu_;
  std::exception_ptr error_;
  std::exception_ptr closed_;
};

void check_supported(const Config& c) {
  if (c.cluster.launch != Launch::kThreads) {
    throw ConfigError(fmt::format(
        "cluster.launch: {} is not the threads launch; run_threads_job runs cluster.launch: threads "
        "only (`ptrain run` chooses the launcher from the config)",
        c.cluster.launch == Launch::kProcesses ? "processes" : "(other)"));
  }
  if (c.cluster.workers < 1 || c.cluster.servers < 1) {
    throw ConfigError(fmt::format("cluster.workers ({}) and cluster.servers ({}) must be >= 1",
                                  c.cluster.workers, c.cluster.servers));
  }
  if (c.data.train.empty()) throw ConfigError("data.train: no training token file is set");
}

}  // namespace

RunSummary run_threads_job(const Config& config, const ThreadsJobOptions& options) {
  check_supported(config);
  // One job per run directory, held until this function returns; then every input is checked
  // before a thread starts.
  const RunLock run_lock = RunLock::acquire(config.run.dir);
  preflight_job(config, options.allow_config_change);
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(config.data.tokenizer);
  const ParamLayout layout(model_dims(config.model, tokenizer->vocab_size()));
  const auto shards = layout.shard_ranges(config.cluster.servers);
  std::vector<proto::KeyRange> ranges;
  for (const auto& [b, e] : shards) ranges.push_back({b, e});
  warn_if_oversubscribed(config);
  const auto W = config.cluster.workers;
  const auto S = config.cluster.servers;

  spdlog::info("job: {} parameters in {} tensors, {} server(s), {} worker(s) x {} thread(s), "
               "batch {} x {} tokens, {} steps",
               layout.total(), layout.tensors().size(), S, W,
               threads_per_role(config.run.threads, W), config.train.batch_size, layout.dims().T,
               config.train.steps);

  // The status endpoint first (a port in use fails the job before any thread starts).
  StatusService status("127.0.0.1", static_cast<uint16_t>(config.status.port),
                       (std::filesystem::path(config.run.dir) / "status.addr").string());

  auto fabric = std::make_shared<net::InprocFabric>();
  FirstFailure failure(fabric);
  std::vector<std::thread> threads_;

  for (int64_t k = 0; k < S; ++k) {
    ParamServerOptions so;
    so.server.server_id = static_cast<int32_t>(k);
    so.server.range = ranges[static_cast<size_t>(k)];
    so.omp_threads = threads_per_role(config.run.threads, S);
    so.server.write_shard = make_shard_writer(layout, so.server.server_id, S, so.server.range);
    so.server.load_shard = make_shard_loader(layout, so.server.range);
    so.server.push_encoding = wire_encoding(config.cluster);
    UpdateRule rule = update_rule_for(config, layout, so.server.range);
    threads_.emplace_back([&failure, &fabric, so, rule = std::move(rule)]() mutable {
      failure.guard(fmt::format("server {}", so.server.server_id), [&] {
        net::InprocTransport t(net::server_endpoint(so.server.server_id), fabric);
        run_param_server(so, std::move(rule), t);
      });
    });
  }
  for (int64_t w = 0; w < W; ++w) {
    WorkerOptions wo;
    wo.worker_id = static_cast<int32_t>(w);
    wo.train_path = config.data.train;
    wo.val_path = config.data.val;
    wo.micro_batch = config.train.micro_batch;
    wo.seed = config.run.seed;
    wo.threads = threads_per_role(config.run.threads, W);
    wo.device = device_type_name(config.device.type);
    wo.device_config = config.device;
    wo.make_backend = options.make_backend;
    wo.timeout = options.timeout;
    wo.wire_encoding = wire_encoding(config.cluster);
    wo.wire_error_feedback = config.cluster.wire_error_feedback;
    wo.local = local_steps_options(config);
    wo.leased = is_async_sync(config.cluster.sync);
    wo.bucket_mb = config.cluster.bucket_mb;
    threads_.emplace_back([&failure, &fabric, &layout, &ranges, wo]() {
      failure.guard(fmt::format("worker {}", wo.worker_id), [&] {
        net::InprocTransport t(net::worker_endpoint(wo.worker_id), fabric);
        run_worker(wo, layout, ranges, t);
      });
    });
  }

  RunSummary summary;
  CoordinatorOptions co;
  co.config = config;
  co.server_ranges = ranges;
  co.tokenizer_json = tokenizer->to_json();
  co.timeout = options.timeout;
  co.stop_requested = options.stop_requested;
  co.allow_config_change = options.allow_config_change;
  co.status = &status;
  // Every role is a thread of this process: the membership is fixed (a failing thread stops the
  // whole job through the fabric, never as a membership change).
  net::FixedMembership membership(S, W, "local");
  failure.guard("coordinator", [&] {
    net::InprocTransport t(net::coordinator_endpoint(), fabric);
    summary = run_coordinator(co, layout, t, membership);
  });
  for (auto& th : threads_) th.join();
  failure.rethrow_if_any();
  return summary;
}

}  // namespace ptrain
