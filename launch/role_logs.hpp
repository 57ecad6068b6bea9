// The log files of a processes job (RUN_DIR/logs): named after the ids the roles go by in the
// logs and /status, and kept across attempts.
//   - Naming: the coordinator gives servers and workers their ids in the order they register, not
//     the order the launcher started them, so a role starts logging to "server-pending-K.log" (K:
//     its start order) and the launcher renames the file to "server-ID.log" once the role logs
//     the line that names its id (net::kJoinedLine). The role keeps writing to the same open file
//     across the rename. A role that stops before it joins keeps its pending name.
//   - Keeping: before an attempt starts (a new `ptrain run` on the run directory, a resume, a
//     supervised restart), each role log "NAME.log" of the previous attempt becomes "NAME.1.log",
//     an older "NAME.1.log" becomes "NAME.2.log", and so on; at most kKeptAttempts earlier
//     attempts are kept per name. Other files in the folder (the MPI launch's rank logs, which
//     append) are left alone.
#pragma once

#include "common/net/endpoint.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace ptrain {

inline constexpr int kKeptAttempts = 9;

// Shifts the role logs in `logs_dir` as described above. Throws IoError naming a file that could
// not be renamed or removed. A missing folder is nothing to do.
void rotate_role_logs(const std::string& logs_dir, int keep = kKeptAttempts);

// The id in the first net::kJoinedLine of `log_text` (a server or a worker), or nullopt.
std::optional<net::Endpoint> joined_as(std::string_view log_text);

// "server-1.log" for a role that joined; "server-pending-3.log" for the 4th server started.
std::string role_log_name(const net::Endpoint& e);
std::string pending_log_name(net::Role role, int64_t start_index);

// A server's or worker's log from start to rename. poll() reads the head of the file (the joined
// line comes early) and renames it once the id is there; after that it does nothing.
class PendingRoleLog {
 public:
  PendingRoleLog(std::string logs_dir, net::Role role, int64_t start_index);
  const std::string& path() const { return path_; }  // where the role writes now
  // True once renamed; `joined` then holds the role's id.
  bool poll();
  std::optional<net::Endpoint> joined;

 private:
  std::string dir_, path_;
};

}  // namespace ptrain
