// Running the `ptrain` binary from tests: started with posix_spawn in a process group of its own
// (so a test can signal or kill everything it started), stdout to a file or /dev/null, stderr to
// a file; waited for with a deadline (a hung run is killed, group and all, and fails the test —
// no test waits forever).
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace ptrain::test {

struct PtrainProcess {
  pid_t pid = -1;  // also its process group id
};

// Every process group a test started, killed when the test executable exits: a case that fails
// half-way (a REQUIRE throws) must not leave its job running. A group whose processes have all
// ended is gone, and kill() on it does nothing.
inline std::vector<pid_t>& started_groups() {
  static std::vector<pid_t> groups;
  return groups;
}
inline void kill_started_groups() {
  for (const pid_t g : started_groups()) kill(-g, SIGKILL);
}
// Forgets group `g` once none of its processes is left (pids are reused: a later test's group
// could get the same id).
inline void forget_group_if_empty(pid_t g) {
  if (kill(-g, 0) == 0) return;
  auto& v = started_groups();
  v.erase(std::remove(v.begin(), v.end(), g), v.end());
}

// `ptrain ARGS...`; stderr to `err_file`, stdout to `out_file` ("" = /dev/null).
inline PtrainProcess start_command(std::vector<std::string> full, const std::string& err_file,
                                   const std::string& out_file = "");
inline PtrainProcess start_ptrain(const std::vector<std::string>& args, const std::string& err_file,
                                  const std::string& out_file = "") {
  std::vector<std::string> full{PTRAIN_TEST_BINARY};
  full.insert(full.end(), args.begin(), args.end());
  return start_command(std::move(full), err_file, out_file);
}

// Any program (full[0] is its path; no PATH search), started the same way.
inline PtrainProcess start_command(std::vector<std::string> full, const std::string& err_file,
                                   const std::string& out_file) {
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (out_file.empty()) {
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  } else {
    posix_spawn_file_actions_addopen(&fa, 1, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  }
  posix_spawn_file_actions_addopen(&fa, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawnattr_t at;
  posix_spawnattr_init(&at);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&at, 0);
  PtrainProcess p;
  const int rc = posix_spawn(&p.pid, full[0].c_str(), &fa, &at, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  REQUIRE_MESSAGE(rc == 0, "cannot start " << full[0]);
  static const bool registered = std::atexit(kill_started_groups) == 0;
  (void)registered;
  started_groups().push_back(p.pid);
  return p;
}

// Its wait status once it exited, waiting at most `limit`; past that its group is killed and the
// test fails.
inline int wait_ptrain_status(const PtrainProcess& p,
                              std::chrono::seconds limit = std::chrono::seconds(120)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(p.pid, &status, WNOHANG);
    if (r == p.pid) {
      forget_group_if_empty(p.pid);
      return status;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(-p.pid, SIGKILL);
      waitpid(p.pid, &status, 0);
      FAIL("ptrain did not exit within " << limit.count() << " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Its exit code (a death by signal fails the test).
inline int wait_ptrain(const PtrainProcess& p,
                       std::chrono::seconds limit = std::chrono::seconds(120)) {
  const int status = wait_ptrain_status(p, limit);
  REQUIRE_MESSAGE(WIFEXITED(status), "ptrain died by signal " << WTERMSIG(status));
  return WEXITSTATUS(status);
}

inline std::string slurp(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace ptrain::test
