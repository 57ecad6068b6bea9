// The coordinator's status endpoint: a snapshot struct (JobStatus), pure renderers of it
// (Prometheus text, JSON, a tiny HTML page), a pure request router, and a small HTTP/1.1 server
// (Boost.Beast over Asio, one coroutine per connection) that serves them:
//   GET /metrics  text/plain; version=0.0.4   Prometheus text exposition format
//   GET /status   application/json             the same figures, and per member
//   GET /         text/html                    the page for people (status_page.hpp): charts that
//                                              update in place from /status and /train.jsonl
//   GET /train.jsonl application/x-ndjson      RUN_DIR/train.jsonl as it stands (the whole run's
//                                              history, earlier attempts included)
// Anything else is 404, a method other than GET/HEAD 405, a malformed request 400; every reply
// closes the connection. The server is read-only: no request changes the job.
//
// Not here: gathering the figures (the coordinator builds a JobStatus from what servers and
// workers report) or running the io_context (the caller's thread does). This header does not
// include Asio or Beast; only status_http.cpp (the server) does. The renderers and the router are
// in status_render.cpp, which needs neither.
#pragma once

#include "common/net/transport.hpp"

#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace ptrain {

// One role instance's figures, as last reported to the coordinator.
struct MemberStatus {
  int32_t id = 0;
  net::Role role = net::Role::kWorker;
  std::string host;                // where it connected from (or "local" for threads)
  double heartbeat_age_s = 0.0;    // seconds since its last heartbeat
  int64_t step = 0;                // its last completed step
  double loss = 0.0;               // its last step's mean loss (NaN when none yet)
  double tokens_per_second = 0.0;  // its recent throughput (0 for servers)
  uint64_t bytes_pushed = 0;       // gradient bytes sent (worker) or received (server)
  uint64_t bytes_pulled = 0;       // weight bytes received (worker) or sent (server)
  bool operator==(const MemberStatus&) const = default;
};

// Seconds of the last step by phase (a worker's view, averaged over workers): compute =
// forward/backward, push = sending gradients, wait = waiting for the step to be applied, pull =
// fetching weights.
struct StepSeconds {
  double compute = 0.0;
  double push = 0.0;
  double wait = 0.0;
  double pull = 0.0;
  bool operator==(const StepSeconds&) const = default;
};

struct LossPoint {
  int64_t step = 0;
  double loss = 0.0;
  bool operator==(const LossPoint&) const = default;
};

// A membership event as /status lists it: a join, leave, loss, restart or resume.
struct MembershipEventStatus {
  std::string kind;    // "join", "leave", "lost", "restart", "resume"
  std::string role;    // "worker", "server", "coordinator"
  int64_t id = 0;
  int64_t step = 0;    // steps applied when it happened
  double time = 0.0;   // UNIX seconds
  std::string text;    // the log line
  bool operator==(const MembershipEventStatus&) const = default;
};

// A consistent snapshot of the job, taken by the coordinator when the status server asks.
struct JobStatus {
  int64_t step = 0;                 // optimizer steps applied
  double loss = 0.0;                // mean loss of the last applied step (NaN when none yet)
  double tokens_per_second = 0.0;   // job-wide, recent
  int64_t membership_epoch = 0;
  std::vector<MemberStatus> members;  // every live member, the coordinator included
  uint64_t bytes_pushed_total = 0;  // gradient bytes, whole job, since this run started
  uint64_t bytes_pulled_total = 0;  // weight bytes, whole job, since this run started
  StepSeconds step_seconds;
  // Data-plane bytes (pushes + pull replies, frames included) per target token of the last
  // applied step; an evaluation's pulls count in the step after it. NaN before the first step.
  double bytes_per_token = std::nan("");
  // cluster.sync ssp and async: staleness of the pushes applied by this run (updates applied
  // between a gradient's read of the weights and its own update), max and mean. NaN under bsp
  // and local (every gradient is fresh there) and before the first push.
  double push_staleness_max = std::nan("");
  double push_staleness_mean = std::nan("");
  int64_t last_checkpoint_step = -1;   // -1: no checkpoint published yet
  std::vector<LossPoint> loss_history; // this run's steps (thinned to ≤ 4096 points)
  // What the page and /metrics add (NaN = not known yet).
  std::string run_dir;               // "" = no train.jsonl to serve
  int64_t start_step = 0;            // where this run started (resume)
  int64_t target_steps = 0;          // train.steps
  int64_t tokens_total = 0;          // target tokens trained on, whole run, resumes included
  double lr = std::nan("");          // learning rate of the last applied step
  double grad_norm = std::nan("");   // its global gradient norm, before clipping
  double accuracy = std::nan("");    // masked-LM accuracy of the last step (BERT runs only)
  double val_loss = std::nan("");    // the last evaluation's
  int64_t val_step = -1;             // its step (-1: none yet)
  double elapsed_s = 0.0;            // training time, continued across resumes
  std::vector<int64_t> checkpoints;  // steps published by this run, oldest first
  std::vector<std::string> events;   // recent events, "ISO-time text", newest last (≤ 50)
  bool finished = false;             // the run ended (the page stops polling)
  std::map<std::string, int64_t> membership_changes;  // by kind, since this coordinator started
  std::vector<MembershipEventStatus> membership_events;  // the last 100, oldest first
  std::string waiting;  // "" or why the job is waiting (fewer workers than cluster.min_workers)
  bool operator==(const JobStatus&) const;  // NaN losses compare equal to each other
};

// Appends "TIME text" to s.events, keeping the newest 50.
void add_status_event(JobStatus& s, const std::string& text);

// Members per role: [coordinator, server, worker].
std::array<int64_t, 3> count_members(const JobStatus& s);

// Prometheus text exposition format 0.0.4, by Prometheus' naming conventions (base units in the
// name, counters end in _total, rates are left to rate()): a # HELP and # TYPE line per metric,
// then samples. The list, with meanings, is in docs/status.md; every name starts with ptrain_.
// Job-wide: ptrain_build_info{version}, ptrain_step, ptrain_target_steps, ptrain_tokens_total,
// ptrain_loss, ptrain_val_loss, ptrain_learning_rate, ptrain_grad_norm, ptrain_elapsed_seconds,
// ptrain_members{role} (all three roles always present), ptrain_membership_epoch,
// ptrain_pushed_bytes_total, ptrain_pulled_bytes_total, ptrain_bytes_per_token,
// ptrain_step_phase_seconds{phase}, ptrain_push_staleness_max, ptrain_push_staleness_mean,
// ptrain_last_checkpoint_step (-1 before the first). Per member, labelled {role, id, host}:
// ptrain_member_step, ptrain_member_heartbeat_age_seconds, ptrain_member_pushed_bytes_total,
// ptrain_member_pulled_bytes_total; ptrain_membership_changes_total{kind="join|leave|lost|restart|resume"}
// (every kind always present), ptrain_waiting_for_workers (1 while below cluster.min_workers). NaN is written "NaN", infinities "+Inf"/"-Inf".
std::string render_prometheus(const JobStatus& s);

// JSON object with the same figures ("members_by_role", "step_seconds" as objects), "members" as
// an array of objects (role as a name), "loss_history" as [[step, loss], ...], "events" as an
// array of objects, "membership_changes" as an object by kind, "waiting" as a string. NaN is null.
std::string render_status_json(const JobStatus& s);

// Parses render_status_json's output (tools, tests). Throws IoError naming what is wrong.
JobStatus parse_status_json(std::string_view json);

// The page at `/` (status_page.hpp's live form).
std::string render_status_html(const JobStatus& s);

// The pure request router: what to answer to `method` `target` (the query string is ignored).
struct StatusReply {
  int status = 200;
  std::string content_type;
  std::string body;
  std::string allow;  // for 405: the methods allowed
};
// `snapshot` is called only for the three pages; if it throws, the reply is 500 with its message.
StatusReply route_status_request(std::string_view method, std::string_view target,
                                 const std::function<JobStatus()>& snapshot);

struct StatusServerOptions {
  std::chrono::milliseconds read_timeout{10'000};   // a whole request must arrive within this
  std::chrono::milliseconds write_timeout{10'000};
  // A connection that sends nothing for this long after connecting is closed: idle connections
  // cannot hold the endpoint for the whole read_timeout.
  std::chrono::milliseconds idle_timeout{2'000};
  // At this many connections a new one sheds the oldest idle one (that has sent nothing yet);
  // only when none is idle is the new one closed. Monitoring gets through an idle flood.
  int max_connections = 64;
};

// The HTTP server. Binds in the constructor (IoError naming HOST:PORT when it cannot) and serves
// on `io`, which the caller runs. `snapshot` is called on the thread that runs `io`, once per page
// request; it must be safe to call there (e.g. copy the coordinator's figures under a mutex).
// Destruction (or stop()) closes the listening socket; requests already in progress finish or
// time out on their own. stop() and the destructor may be called from any thread.
class StatusServer {
 public:
  StatusServer(boost::asio::io_context& io, const std::string& host, uint16_t port,
               std::function<JobStatus()> snapshot, StatusServerOptions options = {});
  ~StatusServer();
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  // The bound address as "HOST:PORT" (port 0 resolved to the real port; 0.0.0.0 stays 0.0.0.0).
  std::string local_endpoint() const;
  uint16_t port() const;
  // What others should connect to: local_endpoint() with an unspecified address (0.0.0.0, ::)
  // replaced by this host's name, or 127.0.0.1 (net::advertised_host). Write this to status.addr.
  std::string advertised_endpoint() const;

  void stop();

  struct Impl;  // status_http.cpp only (shared with the connection coroutines)

 private:
  std::shared_ptr<Impl> impl_;
};

// Writes "HOST:PORT\n" to `path` atomically (write_file_atomic). An unspecified host (0.0.0.0,
// ::, empty) is replaced as in advertised_endpoint(), so the file never names 0.0.0.0. The
// coordinator writes RUN_DIR/status.addr (and RUN_DIR/coordinator.addr) with it. Throws IoError,
// or UsageError when `host_port` is not HOST:PORT.
void write_addr_file(const std::string& path, const std::string& host_port);

}  // namespace ptrain
