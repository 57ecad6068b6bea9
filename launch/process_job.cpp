#include "launch/process_job.hpp"

#include "launch/preflight.hpp"
#include "launch/role_logs.hpp"
#include "launch/spawn.hpp"
#include "launch/threads_job.hpp"

#include "common/error.hpp"
#include "common/net/auth.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/ledger.hpp"
#include "common/io/run_checkpoints.hpp"
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
#include <optional>
#include <thread>

namespace ptrain {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Child {
  std::string name;  // "coordinator", "server-0", "worker-1" (the id once it joined)
  pid_t pid = -1;
  bool done = false;
  int status = 0;
  bool reported = false;  // its death by a signal was named in the log
  std::optional<PendingRoleLog> log = std::nullopt;  // servers and workers: renamed to the id once it joined
};

// Renames each server's and worker's log after the id it joined with, and names the child so.
void name_role_logs(std::vector<Child>& children) {
  for (auto& c : children) {
    if (!c.log || c.log->joined) continue;
    if (c.log->poll()) {
      c.name = role_log_name(*c.log->joined);
      c.name.resize(c.name.size() - 4);  // without ".log"
    }
  }
}

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

// Why one attempt at the job ended.
struct Attempt {
  int rc = 0;                // the coordinator's exit code (or 1 when it was killed)
  bool restart = false;      // a server or the coordinator was lost: restart from a checkpoint
  std::string lost_role;     // "server" or "coordinator"
  int64_t lost_id = 0;
  std::string why;           // "server 1 killed by signal 9"
  double down_s = 0;         // restart: seconds from the decision until every role was reaped
};

bool died_badly(int status) { return !(WIFEXITED(status) && WEXITSTATUS(status) == 0); }

// Whether process `pid` is stopped by a signal (SIGSTOP, SIGTSTP; state T in /proc/PID/stat). A
// stopped coordinator cannot act on SIGTERM or on a lost server until someone continues it.
bool is_stopped(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so the state follows the last ')'.
  const size_t close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'T';
}

// One start of every role: the coordinator (its address awaited), the servers, the workers; then
// watches them. A lost worker is the coordinator's business (the step completes without it). A
// server or a coordinator killed by a signal (SIGKILL, a crash, the OOM killer) ends the attempt at once (the group is
// killed: a job without one of its shards cannot go on) and asks for a restart.
Attempt run_attempt(const Config& config, const ProcessJobOptions& o, const std::string& binary,
                    const std::string& secret_file, const std::vector<std::string>& extra_sets,
                    const std::string& job_id) {
  const fs::path run_dir(config.run.dir);
  const std::string addr_file = (run_dir / "coordinator.addr").string();
  {
    std::error_code ec;
    fs::remove(addr_file, ec);
  }
  std::vector<Child> children;
  pid_t pgid = 0;
  bool killed = false;
  auto kill_all = [&](int sig) {
    if (pgid > 0) ::kill(-pgid, sig);
    killed = killed || sig == SIGKILL;
  };
  // Everyone gets 2 s to exit on their own (they have the coordinator's Shutdown), then SIGKILL;
  // all are reaped.
  auto finish = [&](std::chrono::milliseconds grace) {
    name_role_logs(children);
    const auto until = Clock::now() + grace;
    while (!all_done(children) && Clock::now() < until) {
      reap(children);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!all_done(children)) {
      spdlog::debug("killing the roles that did not exit");
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
  };

  try {
    std::vector<std::string> cargs = {binary, "coordinator", o.config_path, "--listen",
                                      "127.0.0.1:0", "--secret-file", secret_file};
    for (const auto& s : o.sets) {
      cargs.push_back("--set");
      cargs.push_back(s);
    }
    for (const auto& s : extra_sets) {
      cargs.push_back("--set");
      cargs.push_back(s);
    }
    if (o.allow_config_change) cargs.push_back("--allow-config-change");
    const std::string logs = (run_dir / "logs").string();
    // The previous attempt's logs (an earlier run on this folder, a restart) are kept, numbered.
    rotate_role_logs(logs);
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
        if (a->job_id != job_id) {
          throw IoError(fmt::format("{} names job {}, not this job ({}): another job wrote it",
                                    addr_file, a->job_id.empty() ? "(none)" : a->job_id,
                                    job_id));
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
    // Until a role joined, its id is unknown: it is named by its start order (role_logs.hpp).
    for (int64_t k = 0; k < config.cluster.servers; ++k) {
      PendingRoleLog log(logs, net::Role::kServer, k);
      children.push_back({fmt::format("server-pending-{}", k),
                          spawn({binary, "server", "--coordinator", addr, "--listen",
                                 "127.0.0.1:0", "--secret-file", secret_file, "--threads",
                                 std::to_string(server_threads)},
                                pgid, log.path())});
      children.back().log = std::move(log);
    }
    for (int64_t k = 0; k < config.cluster.workers; ++k) {
      PendingRoleLog log(logs, net::Role::kWorker, k);
      children.push_back({fmt::format("worker-pending-{}", k),
                          spawn({binary, "worker", "--coordinator", addr, "--secret-file",
                                 secret_file, "--threads", std::to_string(worker_threads)},
                                pgid, log.path())});
      children.back().log = std::move(log);
    }
    const size_t first_worker = 1 + static_cast<size_t>(config.cluster.servers);

    bool forwarded = false;
    std::optional<Clock::time_point> server_failed_at;  // the first server that exited badly
    const auto peer_timeout = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(config.cluster.peer_timeout_s));
    std::string server_failure;
    std::vector<bool> told(children.size(), false);
    Attempt a;
    for (;;) {
      follow.poll();
      name_role_logs(children);
      reap(children);
      report_signal_deaths(children, killed);
      if (!forwarded && o.stop_requested && o.stop_requested()) {
        spdlog::info("stop requested: asking the coordinator to checkpoint and stop");
        ::kill(children[0].pid, SIGTERM);
        forwarded = true;
      }
      // The coordinator first: killed, its servers and workers exit too (its loss is fatal to
      // them) and must not be taken for the cause.
      auto lost_server = [&] {
        for (size_t i = 1; i < first_worker; ++i) {
          // Killed or crashed (a signal); a server that exits with an error code stopped for a
          // reason a restart would meet again (its Failure tells the coordinator, which stops).
          if (children[i].done && WIFSIGNALED(children[i].status)) {
            a.restart = true;
            a.lost_role = "server";
            name_role_logs(children);  // its id, if it joined before it died
            a.lost_id = children[i].log && children[i].log->joined ? children[i].log->joined->id : -1;
            a.why = fmt::format("{} {}", children[i].name, describe(children[i].status));
            return;
          }
        }
      };
      if (children[0].done) {
        follow.poll();
        if (!forwarded && WIFSIGNALED(children[0].status)) {
          a.restart = true;
          a.lost_role = "coordinator";
          a.why = fmt::format("the coordinator was {}", describe(children[0].status));
        } else if (!forwarded && children[0].status != 0) {
          lost_server();  // it stopped because a server was lost
        }
        break;
      }
      // A server lost: its shard is gone; the job restarts from the latest checkpoint.
      if (!forwarded) lost_server();
      if (a.restart) break;
      // A hung coordinator (SIGSTOP, a deadlock) never exits: its servers lose it after
      // cluster.peer_timeout_s and exit with an error, and nothing else would end the attempt.
      // Alive, the coordinator sees the server's connection close and stops by itself; stopped
      // by a signal, or still running cluster.peer_timeout_s later (hung: a deadlock, a live
      // lock; the same silence that makes any peer lost), it is lost.
      for (size_t i = 1; i < first_worker && !server_failed_at; ++i) {
        if (children[i].done && died_badly(children[i].status)) {
          server_failed_at = Clock::now();
          server_failure = fmt::format("{} exited ({})", children[i].name,
                                       describe(children[i].status));
        }
      }
      if (server_failed_at) {
        const bool stopped = is_stopped(children[0].pid);
        if (stopped || Clock::now() - *server_failed_at > peer_timeout) {
          a.restart = !forwarded;  // a stop was asked for: no restart, and no checkpoint either
          a.lost_role = "coordinator";
          a.why = fmt::format(
              "the coordinator (pid {}) is {}; {} (servers lose a silent coordinator after "
              "cluster.peer_timeout_s = {} s)",
              children[0].pid,
              stopped ? "stopped by a signal"
                      : fmt::format("unresponsive (still running {} s after a server exited)",
                                    config.cluster.peer_timeout_s),
              server_failure, config.cluster.peer_timeout_s);
          if (forwarded) {
            spdlog::error("{}; stopping without a checkpoint", a.why);
            kill_all(SIGKILL);
            finish(std::chrono::milliseconds(0));
            a.rc = static_cast<int>(ExitCode::kIo);
            return a;
          }
          break;
        }
      }
      for (size_t i = first_worker; i < children.size(); ++i) {
        if (children[i].done && !told[i]) {
          told[i] = true;
          // A worker that left (exit 0) or was lost: the coordinator goes on without it.
          if (died_badly(children[i].status)) {
            spdlog::warn("{} exited ({}); the job goes on without it", children[i].name,
                         describe(children[i].status));
          }
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (a.restart) {
      // Decided: the whole attempt goes down within 2 s. The coordinator, which notices a lost
      // server at once, gets that long to log why it stops (not when it is the one lost); then
      // SIGKILL to everyone (what the servers hold is incomplete without the lost one, and
      // nothing more can be published). SIGKILL ends stopped processes too.
      const auto decided = Clock::now();
      const auto until = decided + (a.lost_role == "coordinator" ? std::chrono::milliseconds(0)
                                                                  : std::chrono::milliseconds(2000));
      while (!children[0].done && Clock::now() < until) {
        reap(children);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      follow.poll();
      kill_all(SIGKILL);
      finish(std::chrono::milliseconds(0));
      a.down_s = std::chrono::duration<double>(Clock::now() - decided).count();
      follow.poll();
      a.rc = 1;
      return a;
    }
    a.rc = exit_code(children[0].status);
    finish(std::chrono::milliseconds(2000));
    return a;
  } catch (...) {
    kill_all(SIGKILL);
    finish(std::chrono::milliseconds(0));
    throw;
  }
}

// Steps applied by the newest valid checkpoint of the run, or nullopt without one.
std::optional<int64_t> latest_checkpoint_step(const std::string& run_dir) {
  const std::optional<std::string> dir = find_latest_checkpoint(run_dir);
  if (!dir) return std::nullopt;
  return read_checkpoint_meta(checkpoint_file(*dir)).step;
}

}  // namespace

int run_processes_job(const Config& config, const ProcessJobOptions& o) {
  const fs::path run_dir(config.run.dir);
  // One job per run directory: taken before anything in it is touched, held until the launcher
  // exits (its roles die with it, restarts included); the coordinator it spawns joins this job's id.
  const RunLock run_lock = RunLock::acquire(run_dir.string());
  preflight_job(config, o.allow_config_change);  // every input checked before any role starts
  make_dirs(run_dir.string());
  make_dirs((run_dir / "logs").string());
  std::string secret_file = o.secret_file;
  if (secret_file.empty()) {
    secret_file = (run_dir / "secret").string();
    std::error_code ec;
    fs::remove(secret_file, ec);
    net::write_secret_file(secret_file, net::OverwriteSecret::kYes);
  }
  std::string binary = o.ptrain_binary;
  {
    std::error_code ec;
    const auto real = fs::read_symlink(binary, ec);
    if (!ec) binary = real.string();
  }
  // The supervisor: a lost server or coordinator restarts the job from the latest complete
  // checkpoint, at most cluster.max_restarts times.
  std::vector<std::string> extra_sets;
  for (int64_t restarts = 0;; ++restarts) {
    const auto t0 = Clock::now();
    const Attempt a = run_attempt(config, o, binary, secret_file, extra_sets, run_lock.job_id());
    if (!a.restart) {
      if (a.rc != 0) {
        spdlog::error("the coordinator stopped the job (exit {}); logs in {}", a.rc,
                      (run_dir / "logs").string());
      }
      return a.rc;
    }
    const std::optional<int64_t> step = latest_checkpoint_step(run_dir.string());
    if (restarts >= config.cluster.max_restarts) {
      spdlog::error("{}; no restart left (cluster.max_restarts = {}); every role was down {:.2f} s "
                    "after the decision; the job stops{}; logs in {}",
                    a.why, config.cluster.max_restarts, a.down_s,
                    step ? fmt::format(" (the checkpoint of step {} resumes it)", *step) : "",
                    (run_dir / "logs").string());
      return static_cast<int>(ExitCode::kIo);
    }
    // The restarted job resumes from this run's latest checkpoint, whatever checkpoint.resume
    // said (a path or `never` named where the first attempt started).
    if (step) extra_sets = {"checkpoint.resume=auto"};
    append_ledger_event(run_dir.string(), "restart", a.lost_role, a.lost_id, step.value_or(0));
    spdlog::warn("{}; restarting the job ({} of cluster.max_restarts {}) from {} ({:.1f} s after "
                 "the attempt began; every role was down {:.2f} s after the decision)",
                 a.why, restarts + 1, config.cluster.max_restarts,
                 step ? fmt::format("the checkpoint of step {}", *step)
                      : std::string("the start (no checkpoint yet)"),
                 std::chrono::duration<double>(Clock::now() - t0).count(), a.down_s);
  }
}

}  // namespace ptrain
