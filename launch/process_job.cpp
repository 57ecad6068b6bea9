#include "launch/process_job.hpp"

#include "launch/preflight.hpp"
#include "launch/spawn.hpp"
#include "launch/threads_job.hpp"

#include "common/error.hpp"
#include "common/net/auth.hpp"
#include "common/util/fs.hpp"
#include "common/util/run_lock.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

namespace ptrain {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Child {
  std::string name;  // "coordinator", "server-0", "worker-1"
  pid_t pid = -1;
  bool done = false;
  int status = 0;
  bool reported = false;  // its death by a signal was named in the log
};

// Names every role that died by a signal (a crash: SIGSEGV, SIGABRT, SIGBUS; or a kill from
// outside), once each, whatever else the job reports: a crash must not pass unnoticed.
// `we_killed`: the launcher itself sent SIGKILL to the group, which is then no news.
void report_signal_deaths(std::vector<Child>& children, bool we_killed) {
  for (auto& c : children) {
    if (!c.done || c.reported || !WIFSIGNALED(c.status)) continue;
    c.reported = true;
    const int sig = WTERMSIG(c.status);
    if (we_killed && sig == SIGKILL) continue;
    spdlog::error("{} (pid {}) died by signal {} ({}){}", c.name, c.pid, sig, strsignal(sig),
                  WCOREDUMP(c.status) ? ", core dumped" : "");
  }
}

// fork + exec `argv` in process group `pgid` (0 = a new group led by the child), output to `log`.
pid_t spawn(const std::vector<std::string>& argv, pid_t pgid, const std::string& log) {
  SpawnOptions o;
  o.argv = argv;
  o.log_path = log;
  o.process_group = pgid;
  return spawn_process(o).pid;
}

void reap(std::vector<Child>& children) {
  for (auto& c : children) {
    if (c.done) continue;
    int st = 0;
    if (::waitpid(c.pid, &st, WNOHANG) == c.pid) {
      c.done = true;
      c.status = st;
    }
  }
}

bool all_done(const std::vector<Child>& children) {
  for (const auto& c : children) {
    if (!c.done) return false;
  }
  return true;
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

std::string describe(int status) {
  if (WIFEXITED(status)) return fmt::format("exit {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return "?";
}

// Follows the coordinator's log onto the launcher's stderr, so `ptrain run` shows the progress
// lines, evaluations, checkpoints and the error that stopped a job, as the threads launch does.
// Only whole lines are copied; poll() is called from the launcher's wait loop.
class LogFollower {
 public:
  explicit LogFollower(std::string path) : path_(std::move(path)) {}
  void poll() {
    if (!in_.is_open()) {
      in_.open(path_);
      if (!in_.is_open()) return;
    }
    char buf[4096];
    for (;;) {
      in_.read(buf, sizeof buf);
      const std::streamsize n = in_.gcount();
      if (n <= 0) break;
      pending_.append(buf, static_cast<size_t>(n));
    }
    in_.clear();  // at EOF for now; the coordinator keeps writing
    size_t start = 0;
    for (size_t nl; (nl = pending_.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::fprintf(stderr, "%.*s\n", static_cast<int>(nl - start), pending_.data() + start);
    }
    pending_.erase(0, start);
    std::fflush(stderr);
  }

 private:
  std::string path_;
  std::ifstream in_;
  std::string pending_;
};

}  // namespace

int run_processes_job(const Config& config, const ProcessJobOptions& o) {
  const fs::path run_dir(config.run.dir);
  // One job per run directory: taken before anything in it is touched, held until the launcher
  // exits (its roles die with it); the coordinator it spawns joins this job's id.
  const RunLock run_lock = RunLock::acquire(run_dir.string());
  preflight_job(config);  // every input checked before any role starts
  make_dirs(run_dir.string());
  make_dirs((run_dir / "logs").string());
  std::string secret_file = o.secret_file;
  if (secret_file.empty()) {
    secret_file = (run_dir / "secret").string();
    std::error_code ec;
    fs::remove(secret_file, ec);
    net::write_secret_file(secret_file, net::OverwriteSecret::kYes);
  }
  const std::string addr_file = (run_dir / "coordinator.addr").string();
  {
    std::error_code ec;
    fs::remove(addr_file, ec);
  }
  std::string binary = o.ptrain_binary;
  {
    std::error_code ec;
    const auto real = fs::read_symlink(binary, ec);
    if (!ec) binary = real.string();
  }

  std::vector<Child> children;
  pid_t pgid = 0;
  bool killed = false;
  auto kill_all = [&](int sig) {
    if (pgid > 0) ::kill(-pgid, sig);
    killed = killed || sig == SIGKILL;
  };
  auto finish = [&](int rc) {
    // Everyone gets a grace period to exit on their own, then SIGKILL; all are reaped.
    const auto grace = Clock::now() + std::chrono::milliseconds(
                                          static_cast<int64_t>(config.cluster.peer_timeout_s * 1000) + 5000);
    while (!all_done(children) && Clock::now() < grace) {
      reap(children);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!all_done(children)) {
      spdlog::warn("killing the roles that did not exit");
      kill_all(SIGKILL);
      for (auto& c : children) {
        if (!c.done) {
          ::waitpid(c.pid, &c.status, 0);
          c.done = true;
        }
      }
    }
    report_signal_deaths(children, killed);
    for (const auto& c : children) spdlog::debug("{}: {}", c.name, describe(c.status));
    return rc;
  };

  try {
    std::vector<std::string> cargs = {binary, "coordinator", o.config_path, "--listen",
                                      "127.0.0.1:0", "--secret-file", secret_file};
    for (const auto& s : o.sets) {
      cargs.push_back("--set");
      cargs.push_back(s);
    }
    const std::string clog = (run_dir / "logs" / "coordinator-0.log").string();
    children.push_back({"coordinator", spawn(cargs, 0, clog)});
    pgid = children[0].pid;
    LogFollower follow(clog);

    // The coordinator's address, once it listens.
    std::string addr;
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (addr.empty()) {
      reap(children);
      if (children[0].done) {
        follow.poll();
        throw IoError(fmt::format("the coordinator exited before listening ({}); see {}",
                                  describe(children[0].status), clog));
      }
      if (Clock::now() > deadline) {
        throw IoError(fmt::format("the coordinator did not write {} within 60 s; see {}",
                                  addr_file, clog));
      }
      if (const std::optional<CoordinatorAddr> a = read_coordinator_addr(run_dir.string())) {
        if (a->job_id != run_lock.job_id()) {
          throw IoError(fmt::format("{} names job {}, not this job ({}): another job wrote it",
                                    addr_file, a->job_id.empty() ? "(none)" : a->job_id,
                                    run_lock.job_id()));
        }
        addr = a->host_port;
      }
      if (addr.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    spdlog::info("coordinator at {} (pid {}); starting {} server(s) and {} worker(s); logs in {}",
                 addr, pgid, config.cluster.servers, config.cluster.workers,
                 (run_dir / "logs").string());
    // The machine's cores shared as in the threads launch (threads_per_role).
    warn_if_oversubscribed(config);
    const int server_threads = threads_per_role(config.run.threads, config.cluster.servers);
    const int worker_threads = threads_per_role(config.run.threads, config.cluster.workers);
    for (int64_t k = 0; k < config.cluster.servers; ++k) {
      children.push_back({fmt::format("server-{}", k),
                          spawn({binary, "server", "--coordinator", addr, "--listen",
                                 "127.0.0.1:0", "--secret-file", secret_file, "--threads",
                                 std::to_string(server_threads)},
                                pgid, (run_dir / "logs" / fmt::format("server-{}.log", k)).string())});
    }
    for (int64_t k = 0; k < config.cluster.workers; ++k) {
      children.push_back({fmt::format("worker-{}", k),
                          spawn({binary, "worker", "--coordinator", addr, "--secret-file",
                                 secret_file, "--threads", std::to_string(worker_threads)},
                                pgid, (run_dir / "logs" / fmt::format("worker-{}.log", k)).string())});
    }

    bool forwarded = false;
    std::optional<Clock::time_point> first_death;
    for (;;) {
      follow.poll();
      reap(children);
      report_signal_deaths(children, killed);
      if (children[0].done) {
        follow.poll();
        break;
      }
      if (!forwarded && o.stop_requested && o.stop_requested()) {
        spdlog::info("stop requested: asking the coordinator to checkpoint and stop");
        ::kill(children[0].pid, SIGTERM);
        forwarded = true;
      }
      // A role died: the coordinator should notice within the peer timeout; if it does not, the
      // launcher stops the job itself.
      for (size_t i = 1; i < children.size(); ++i) {
        if (children[i].done && !first_death) {
          first_death = Clock::now();
          // Roles exit 0 on the coordinator's Shutdown, just before it exits itself.
          if (exit_code(children[i].status) == 0) {
            spdlog::debug("{} exited ({})", children[i].name, describe(children[i].status));
          } else {
            spdlog::warn("{} exited ({})", children[i].name, describe(children[i].status));
          }
        }
      }
      if (first_death && Clock::now() - *first_death >
                             std::chrono::milliseconds(static_cast<int64_t>(
                                 config.cluster.peer_timeout_s * 1000) + 10'000)) {
        spdlog::error("the coordinator did not stop after a role exited; killing the job");
        kill_all(SIGKILL);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const int rc = exit_code(children[0].status);
    if (rc != 0) {
      spdlog::error("the coordinator stopped the job ({}); logs in {}",
                    describe(children[0].status), (run_dir / "logs").string());
    }
    return finish(rc);
  } catch (...) {
    kill_all(SIGKILL);
    finish(1);
    throw;
  }
}

}  // namespace ptrain
