// The coordinator's running status endpoint: a StatusServer (status_http.hpp) on its own small
// io_context thread, the JobStatus it serves (updated by the coordinator's loop, copied under a
// mutex for every page request), and RUN_DIR/status.addr. Used the same way by both launches
// (`threads`: 127.0.0.1; `processes`: the host the coordinator listens on).
//
// Not here: what the figures mean or how they are gathered (coordinator.cpp fills them in).
// This header does not include Asio.
#pragma once

#include "status/status_http.hpp"

#include <functional>
#include <memory>
#include <string>

namespace ptrain {

class StatusService {
 public:
  // Binds HOST:PORT (port 0 = a free one; IoError naming it when it cannot), starts serving, then
  // writes `addr_file` (one line HOST:PORT, atomically; "" = no file).
  StatusService(const std::string& host, uint16_t port, const std::string& addr_file);
  // Stops at once: the listener is closed and the io_context stopped, so a slow or stuck client
  // never delays the job's exit. Requests in flight are dropped.
  ~StatusService();
  StatusService(const StatusService&) = delete;
  StatusService& operator=(const StatusService&) = delete;

  // Changes the served figures under the lock (thread-safe).
  void update(const std::function<void(JobStatus&)>& change);
  JobStatus snapshot() const;  // a copy, thread-safe
  std::string address() const;  // as written to the addr file

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain
