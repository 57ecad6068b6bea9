// `cluster.launch: threads`: the whole job in this process — the coordinator on the calling
// thread, `cluster.servers` parameter-server threads and `cluster.workers` worker threads, all
// joined by the in-process transport (the same encoded frames TCP will carry).
//
// Threads: each worker and each server gets threads_per_role(run.threads, W or S) OpenMP threads
// (run.threads each when set; 0 = the machine's cores shared among the workers, and among the
// servers). The coordinator runs no model: validation is the workers' work.
//
// The first failure of any thread stops the job: the fabric is closed, every thread ends, and
// that failure is rethrown here (not the "transport closed" errors it caused elsewhere).
#pragma once

#include "common/config/config.hpp"
#include "common/proto/messages.hpp"
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
  // See CoordinatorOptions::allow_config_change (`--allow-config-change`).
  bool allow_config_change = false;
  // Test-only knob: builds every worker's compute backend (given its thread count) instead of
  // `device.type`, e.g. the tests' fake device backend. Empty = device.type.
  std::function<std::unique_ptr<Backend>(int threads)> make_backend;
};

// Throws ConfigError / NotImplementedError for settings this launch cannot run, and whatever the
// job fails with (NumericError for a NaN/Inf, DataError, IoError, CheckpointError, ...).
RunSummary run_threads_job(const Config& config, const ThreadsJobOptions& options = {});

// Compute threads of one worker or server: run.threads when set (> 0); 0 = automatic, the
// machine's cores shared by `roles_sharing` roles of one kind (at least 1). `ptrain run` passes the
// number of workers (or servers) it starts on this machine; a role started by hand passes 1 (all
// cores). Servers and workers each get the share of their kind: servers compute while workers wait.
int threads_per_role(int64_t configured, int64_t roles_sharing);

// cluster.wire_dtype as the encoding of pushes and pull replies (every launch, every role).
inline proto::FloatEncoding wire_encoding(const ClusterConfig& c) {
  return c.wire_dtype == WireDtype::kBf16 ? proto::FloatEncoding::kBf16
                                          : proto::FloatEncoding::kFp32;
}

// For `ptrain run` (both launches): a warning when run.threads asks for more compute threads at
// once than this machine has cores — W workers (or S servers) × run.threads — since busy-waiting
// OpenMP threads then slow every role down several times. Says how to share the cores instead.
void warn_if_oversubscribed(const Config& config);

}  // namespace ptrain
