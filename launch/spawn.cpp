#include "launch/spawn.hpp"

#include "common/error.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ptrain {

SpawnedProcess spawn_process(const SpawnOptions& o) {
  if (o.argv.empty()) throw InternalError("spawn_process: empty argv");
  const int log = ::open(o.log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log < 0) throw IoError(fmt::format("cannot create {}: {}", o.log_path, std::strerror(errno)));
  int in[2] = {-1, -1}, out[2] = {-1, -1};
  if (o.pipe_stdio && (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0)) {
    const int err = errno;
    for (int fd : {in[0], in[1], out[0], out[1], log}) {
      if (fd >= 0) ::close(fd);
    }
    throw IoError(fmt::format("cannot start {}: pipe: {}", o.argv[0], std::strerror(err)));
  }
  std::vector<char*> args;
  for (const auto& a : o.argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    for (int fd : {in[0], in[1], out[0], out[1], log}) {
      if (fd >= 0) ::close(fd);
    }
    throw IoError(fmt::format("cannot start {}: fork: {}", o.argv[0], std::strerror(err)));
  }
  if (pid == 0) {
    if (o.process_group >= 0) ::setpgid(0, o.process_group);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the launcher died before prctl
    if (o.pipe_stdio) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
    } else {
      const int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
      ::dup2(log, 1);
    }
    ::dup2(log, 2);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  if (o.process_group >= 0) ::setpgid(pid, o.process_group == 0 ? pid : o.process_group);
  ::close(log);
  SpawnedProcess p;
  p.pid = pid;
  if (o.pipe_stdio) {
    ::close(in[0]);
    ::close(out[1]);
    p.stdin_fd = in[1];
    p.stdout_fd = out[0];
  }
  return p;
}

}  // namespace ptrain
