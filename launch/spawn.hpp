// Starting a child process, the one place ptrain forks and execs (the processes launcher, the
// benchmarks' peer processes). The child:
//   - gets PR_SET_PDEATHSIG(SIGKILL), so it never outlives its launcher (and exits at once if the
//     launcher died before that was set);
//   - starts with an empty signal mask and default SIGINT/SIGTERM handlers (the launcher's own
//     handling is not inherited);
//   - writes stderr (and stdout, unless piped) to `log_path`; reads stdin from /dev/null unless piped;
//   - optionally joins or leads a process group, set from both sides so that a kill(-pgid) right
//     after spawn_process() returns cannot miss it.
// Threading: call from one thread at a time (fork in a threaded process: only async-signal-safe
// calls happen in the child before exec).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace ptrain {

struct SpawnOptions {
  std::vector<std::string> argv;  // argv[0] is the executable's path (no PATH search)
  std::string log_path;           // created/truncated; required
  // -1: stay in the launcher's group; 0: a new group led by the child; > 0: join that group.
  pid_t process_group = -1;
  // true: the child's stdin and stdout are pipes to the launcher (SpawnedProcess::stdin_fd /
  // stdout_fd, close-on-exec in the launcher); false: stdin /dev/null, stdout to the log.
  bool pipe_stdio = false;
};

struct SpawnedProcess {
  pid_t pid = -1;
  int stdin_fd = -1;   // write end of the child's stdin (pipe_stdio only)
  int stdout_fd = -1;  // read end of the child's stdout (pipe_stdio only)
};

// Throws IoError naming the log or the system call that failed. An exec failure shows as the
// child's exit status 127.
SpawnedProcess spawn_process(const SpawnOptions& options);

}  // namespace ptrain
