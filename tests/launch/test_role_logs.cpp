// Role log files of a processes job (launch/role_logs.hpp): named after the id a role joined
// with, and an earlier attempt's logs kept, numbered, instead of overwritten.
#include "launch/role_logs.hpp"

#include "common/net/cluster_join.hpp"
#include "support/job_test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {
void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }
std::string slurp_file(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace

TEST_CASE("role logs: the joined line names the id - a partial or foreign line does not") {
  const std::string line = "[2026-01-02T03:04:05.006+00:00] [info] " + std::string(net::kJoinedLine);
  CHECK(joined_as("x\n" + line + "server 3\nmore\n") == net::Endpoint{net::Role::kServer, 3});
  CHECK(joined_as(line + "worker 12\n") == net::Endpoint{net::Role::kWorker, 12});
  CHECK_FALSE(joined_as(line + "worker 12"));  // the line is not whole yet: 12 may be 123
  CHECK_FALSE(joined_as(line + "coordinator 0\n"));
  CHECK_FALSE(joined_as(line + "server x\n"));
  CHECK_FALSE(joined_as("connected to the coordinator\n"));
  CHECK(role_log_name({net::Role::kServer, 1}) == "server-1.log");
  CHECK(pending_log_name(net::Role::kWorker, 0) == "worker-pending-0.log");
}

TEST_CASE("role logs: a pending log is renamed after the id - the writer keeps writing to it") {
  TempDir dir("role-logs-rename");
  const std::string logs = dir / "logs";
  fs::create_directories(logs);
  PendingRoleLog log(logs, net::Role::kServer, 0);
  CHECK(log.path() == logs + "/server-pending-0.log");
  CHECK_FALSE(log.poll());  // nothing written yet
  std::ofstream out(log.path());
  out << "connected\n" << std::flush;
  CHECK_FALSE(log.poll());
  out << "[t] [info] " << net::kJoinedLine << "server 1\n" << std::flush;
  CHECK(log.poll());
  REQUIRE(log.joined);
  CHECK(log.joined->id == 1);
  CHECK(log.path() == logs + "/server-1.log");
  CHECK_FALSE(fs::exists(logs + "/server-pending-0.log"));
  out << "after the rename\n" << std::flush;  // the same open file
  CHECK(slurp_file(logs + "/server-1.log").find("after the rename") != std::string::npos);
  CHECK(log.poll());  // done: nothing more happens
}

TEST_CASE("role logs: rotation keeps earlier attempts numbered - at most `keep` - others untouched") {
  TempDir dir("role-logs-rotate");
  const std::string logs = dir / "logs";
  rotate_role_logs(logs);  // no folder: nothing to do
  fs::create_directories(logs);
  auto attempt = [&](const std::string& tag) {
    for (const char* name : {"coordinator-0", "server-0", "worker-pending-1"}) {
      write(logs + "/" + name + ".log", tag);
    }
  };
  write(logs + "/rank-0-coordinator.log", "mpi");  // appended by the MPI launch: not ours
  attempt("a1");
  rotate_role_logs(logs, 2);
  CHECK(slurp_file(logs + "/coordinator-0.1.log") == "a1");
  CHECK(slurp_file(logs + "/worker-pending-1.1.log") == "a1");
  CHECK_FALSE(fs::exists(logs + "/coordinator-0.log"));
  attempt("a2");
  rotate_role_logs(logs, 2);
  CHECK(slurp_file(logs + "/server-0.1.log") == "a2");
  CHECK(slurp_file(logs + "/server-0.2.log") == "a1");
  attempt("a3");
  write(logs + "/worker-0.log", "w3");  // a name the earlier attempts did not have
  rotate_role_logs(logs, 2);
  CHECK(slurp_file(logs + "/server-0.1.log") == "a3");
  CHECK(slurp_file(logs + "/server-0.2.log") == "a2");
  CHECK_FALSE(fs::exists(logs + "/server-0.3.log"));  // beyond keep: removed
  CHECK(slurp_file(logs + "/worker-0.1.log") == "w3");
  CHECK(slurp_file(logs + "/rank-0-coordinator.log") == "mpi");
  // Only kept logs under a name: nothing moves.
  rotate_role_logs(logs, 2);
  CHECK(slurp_file(logs + "/server-0.1.log") == "a3");
}
