// RUN_DIR/lock and RUN_DIR/coordinator.addr (run_lock.hpp).
#include "common/util/run_lock.hpp"

#include "common/error.hpp"
#include "common/net/host_port.hpp"
#include "common/util/fs.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace ptrain {
namespace {

namespace fs = std::filesystem;

std::string this_host() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string new_job_id() {
  std::random_device rd;
  const uint64_t x = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return fmt::format("{:016x}", x);
}

std::optional<RunLockHolder> parse_holder(const std::string& text) {
  std::istringstream in(text);
  RunLockHolder h;
  std::string word;
  bool any = false;
  while (in >> word) {
    const auto eq = word.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = word.substr(0, eq), value = word.substr(eq + 1);
    if (key == "pid") {
      h.pid = std::strtol(value.c_str(), nullptr, 10);
      any = h.pid > 0;
    } else if (key == "host") {
      h.host = value;
    } else if (key == "job") {
      h.job_id = value;
    } else if (key == "started") {
      h.started = value;
    }
  }
  if (!any) return std::nullopt;
  return h;
}

std::string read_fd_text(int fd) {
  std::string out;
  char buf[512];
  for (off_t at = 0;;) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, at);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    at += n;
    if (out.size() > 4096) break;
  }
  return out;
}

bool process_alive(long pid) { return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM; }

std::string in_use(const std::string& run_dir, const std::optional<RunLockHolder>& h) {
  return fmt::format("run directory {} is in use by another job: {}; stop that job or choose "
                     "another run.dir",
                     run_dir, h ? h->describe() : std::string("a process that has not yet "
                                                              "named itself"));
}

}  // namespace

std::string RunLockHolder::describe() const {
  return fmt::format("pid {} on host {} (job {}, started {})", pid, host.empty() ? "?" : host,
                     job_id.empty() ? "?" : job_id, started.empty() ? "?" : started);
}

std::optional<RunLockHolder> read_run_lock(const std::string& run_dir) {
  std::ifstream in(fs::path(run_dir) / "lock");
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_holder(ss.str());
}

RunLock RunLock::acquire(const std::string& run_dir) {
  make_dirs(run_dir);
  RunLock lock;
  lock.path_ = (fs::path(run_dir) / "lock").string();
  // The descriptor becomes the RunLock's (whose destructor empties the file) only once the lock
  // is ours: a refused job must leave the holder's line alone.
  struct Fd {
    int fd;
    ~Fd() {
      if (fd >= 0) ::close(fd);
    }
  } f{::open(lock.path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)};
  if (f.fd < 0) {
    throw IoError(fmt::format("cannot open the run directory's lock {}: {}", lock.path_,
                              std::strerror(errno)));
  }
  const std::optional<RunLockHolder> before = parse_holder(read_fd_text(f.fd));
  if (::flock(f.fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) throw UsageError(in_use(run_dir, before));
    if (err != ENOLCK && err != EOPNOTSUPP && err != ENOSYS) {
      throw IoError(fmt::format("cannot lock {}: {}", lock.path_, std::strerror(err)));
    }
    // No flock here (a network file system): the holder line decides.
    if (before) {
      if (before->host != this_host() || process_alive(before->pid)) {
        throw UsageError(in_use(run_dir, before) +
                         fmt::format(" (this file system has no file locks; if that job is gone, "
                                     "remove {})",
                                     lock.path_));
      }
    }
    spdlog::warn("{}: the file system does not support file locks ({}); relying on the holder's "
                 "pid and host",
                 lock.path_, std::strerror(err));
  }
  lock.fd_ = std::exchange(f.fd, -1);
  if (before && !(before->host == this_host() && before->pid == ::getpid())) {
    spdlog::info("{}: replacing a stale lock of {}, which is no longer running", lock.path_,
                 before->describe());
  }
  lock.job_id_ = new_job_id();
  const std::string line = fmt::format("pid={} host={} job={} started={}\n", ::getpid(),
                                       this_host(), lock.job_id_, utc_now());
  if (::ftruncate(lock.fd_, 0) != 0 ||
      ::pwrite(lock.fd_, line.data(), line.size(), 0) != static_cast<ssize_t>(line.size())) {
    throw IoError(fmt::format("cannot write {}: {}", lock.path_, std::strerror(errno)));
  }
  return lock;
}

RunLock RunLock::acquire_or_join_parent(const std::string& run_dir) {
  const std::optional<RunLockHolder> h = read_run_lock(run_dir);
  if (h && h->pid == static_cast<long>(::getppid()) && h->host == this_host() &&
      !h->job_id.empty()) {
    // Our launcher holds it for the job: join (the flock stays with the parent).
    const std::string path = (fs::path(run_dir) / "lock").string();
    const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      const bool free = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
      if (free) ::flock(fd, LOCK_UN);
      ::close(fd);
      if (!free) {
        RunLock joined;
        joined.path_ = path;
        joined.job_id_ = h->job_id;
        return joined;
      }
    }
  }
  return acquire(run_dir);
}

RunLock::RunLock(RunLock&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)), path_(std::move(o.path_)), job_id_(std::move(o.job_id_)) {}

RunLock& RunLock::operator=(RunLock&& o) noexcept {
  if (this != &o) {
    release();
    fd_ = std::exchange(o.fd_, -1);
    path_ = std::move(o.path_);
    job_id_ = std::move(o.job_id_);
  }
  return *this;
}

RunLock::~RunLock() { release(); }

void RunLock::release() noexcept {
  if (fd_ < 0) return;
  // Empty the holder line while still holding the lock: a later reader sees no holder rather than
  // a dead one.
  (void)::ftruncate(fd_, 0);
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
  fd_ = -1;
}

// ---- coordinator.addr ------------------------------------------------------------------------

void write_coordinator_addr(const std::string& run_dir, const std::string& host_port,
                            const std::string& job_id) {
  const std::string path = (fs::path(run_dir) / "coordinator.addr").string();
  const net::HostPort hp = net::parse_host_port(host_port, "the coordinator address for " + path,
                                                {.allow_port_zero = false});
  if (hp.host == "0.0.0.0" || hp.host == "::") {
    throw UsageError(fmt::format("{}: {} is nobody's destination; write the advertised host",
                                 path, host_port));
  }
  std::string text = net::format_host_port(hp.host, hp.port) + "\n";
  if (!job_id.empty()) text += "job=" + job_id + "\n";
  write_file_atomic(path, text);
}

std::optional<CoordinatorAddr> read_coordinator_addr(const std::string& run_dir) {
  const std::string path = (fs::path(run_dir) / "coordinator.addr").string();
  std::ifstream in(path);
  if (!in) return std::nullopt;
  CoordinatorAddr a;
  if (!std::getline(in, a.host_port) || a.host_port.empty()) return std::nullopt;
  (void)net::parse_host_port(a.host_port, "address file " + path, {.allow_port_zero = false});
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("job=", 0) == 0) a.job_id = line.substr(4);
  }
  return a;
}

}  // namespace ptrain
