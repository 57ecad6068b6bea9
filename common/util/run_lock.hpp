// One job per run directory: RUN_DIR/lock, an advisory lock (flock) held for the job's life, and
// RUN_DIR/coordinator.addr, the file that says where the job's coordinator listens.
//
// ---- RUN_DIR/lock -----------------------------------------------------------------------------
// The launcher of a job (`ptrain run`, or a `ptrain coordinator` started on its own) takes the
// lock before it writes anything in RUN_DIR (secret, addresses, logs, checkpoints) and holds it
// until it exits; the kernel releases a flock when its holder dies, so a crashed job (even kill -9)
// leaves no lock behind. The file holds one line naming the holder:
//   pid=1234 host=node7 job=3f9a0c1d5e7b2a64 started=2026-12-02T06:01:02Z
// A second job on the same RUN_DIR is refused at once with that holder's pid, host and start time.
// Where the file system has no working flock (some network file systems answer ENOLCK), the
// holder line decides: a holder on this host whose pid no longer runs is stale and is replaced
// (said in the log); a live one, or one on another host, refuses the job.
// A coordinator spawned by `ptrain run` finds the lock held by its parent: it joins that job
// (the same job id) instead of refusing it.
//
// ---- RUN_DIR/coordinator.addr ----------------------------------------------------------------
// Line 1: exactly `HOST:PORT` (never 0.0.0.0), what a role dials. Line 2 (optional):
// `job=ID`, the id of the job that wrote it, so a launcher (or a role given --run-dir) can check
// that the address belongs to the job it was started for and not to another one that shares the
// folder. Readers that only want the address read the first line.
#pragma once

#include <optional>
#include <string>

namespace ptrain {

// Who holds (or last held) a run directory's lock, as written in RUN_DIR/lock.
struct RunLockHolder {
  long pid = 0;
  std::string host;
  std::string job_id;
  std::string started;  // ISO 8601 UTC
  // "pid 1234 on host node7 (job 3f9a…, started 2026-12-02T06:01:02Z)"
  std::string describe() const;
};

// Parses the holder line; nullopt when the file is absent, empty or not a holder line.
std::optional<RunLockHolder> read_run_lock(const std::string& run_dir);

class RunLock {
 public:
  // Takes RUN_DIR/lock for this process (creating RUN_DIR if needed) with a fresh job id. Throws
  // UsageError when another job holds it ("run directory RUN_DIR is in use by pid 1234 on host
  // node7 (job …, started …): stop that job or choose another run.dir"), IoError when the file
  // cannot be made.
  static RunLock acquire(const std::string& run_dir);
  // For a coordinator: when the lock is held by this process's parent on this host (the
  // `ptrain run` that spawned it), joins that job (its id; the parent keeps holding the lock);
  // otherwise acquire().
  static RunLock acquire_or_join_parent(const std::string& run_dir);

  RunLock(RunLock&& other) noexcept;
  RunLock& operator=(RunLock&& other) noexcept;
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  ~RunLock();  // releases the lock (empties the holder line first) when this process holds it

  const std::string& job_id() const { return job_id_; }
  const std::string& path() const { return path_; }
  bool held() const { return fd_ >= 0; }

 private:
  RunLock() = default;
  void release() noexcept;
  int fd_ = -1;
  std::string path_;
  std::string job_id_;
};

// ---- coordinator.addr ------------------------------------------------------------------------

struct CoordinatorAddr {
  std::string host_port;  // line 1
  std::string job_id;     // line 2 `job=ID`, "" when absent
};

// Writes RUN_DIR/coordinator.addr atomically: `host_port` (checked: HOST:PORT, not 0.0.0.0 or ::)
// then `job=ID` when `job_id` is not empty. Throws UsageError for a bad address, IoError.
void write_coordinator_addr(const std::string& run_dir, const std::string& host_port,
                            const std::string& job_id);
// Reads it: nullopt while the file does not exist or its first line is not complete yet; throws
// UsageError naming the file when line 1 is not HOST:PORT.
std::optional<CoordinatorAddr> read_coordinator_addr(const std::string& run_dir);

}  // namespace ptrain
