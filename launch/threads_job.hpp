// `cluster.launch: threads`: the whole job in this process — the coordinator on the calling
// thread, `cluster.servers` parameter-server threads and `cluster.workers` worker threads, all
// joined by the in-process transport (the same encoded frames TCP will carry).
//
// Threads: run.threads cores (0 = all) are shared: each worker gets max(1, threads / W) OpenMP
// threads, each server max(1, threads / S) (servers work while workers wait), the coordinator's
// evaluation all of them (workers are idle then).
//
// The first failure of any thread stops the job: the fabric is closed, every thread ends, and
// that failure is rethrown here (not the "transport closed" errors it caused elsewhere).
#pragma once

#include "common/config/config.hpp"
#include "coordinator/coordinator.hpp"

#include <chrono>
#include <functional>
#include <memory>

namespace ptrain {

class Backend;

struct ThreadsJobOptions {
  // Longest wait for any single message (see CoordinatorOptions::timeout).
  std::chrono::milliseconds timeout{std::chrono::hours(1)};
  // See CoordinatorOptions::stop_requested (SIGINT/SIGTERM in `ptrain run`; tests).
  std::function<bool(int64_t)> stop_requested;
  // Test-only knob: builds every worker's compute backend (given its thread count) instead of
  // `device.type`, e.g. the tests' fake device backend. Empty = device.type.
  std::function<std::unique_ptr<Backend>(int threads)> make_backend;
};

// Throws ConfigError / NotImplementedError for settings this launch cannot run, and whatever the
// job fails with (NumericError for a NaN/Inf, DataError, IoError, CheckpointError, ...).
RunSummary run_threads_job(const Config& config, const ThreadsJobOptions& options = {});

// run.threads resolved (0 = the machine's cores).
int resolve_threads(int configured);

}  // namespace ptrain
