// The status endpoint: renderers, router and the Beast server (the only Beast user in ptrain).
#include "status/status_http.hpp"

#include "common/net/asio.hpp"  // first: includes <utility> before Asio
#include "common/util/fs.hpp"
#include "common/log.hpp"
#include "ptrain/build_config.hpp"
#include "status/status_page.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <list>
#include <filesystem>

namespace ptrain {
namespace {

namespace asio = net::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using net::awaitable;
using net::tcp;

constexpr const char* kRoleNames[3] = {"coordinator", "server", "worker"};

const char* role_name(net::Role r) {
  const auto i = static_cast<size_t>(r);
  return i < 3 ? kRoleNames[i] : "unknown";
}

net::Role role_from_name(const std::string& name) {
  for (size_t i = 0; i < 3; ++i) {
    if (name == kRoleNames[i]) return static_cast<net::Role>(i);
  }
  throw IoError(fmt::format("status JSON: unknown role \"{}\"", name));
}

// A float as the Prometheus text format wants it (Go's ParseFloat syntax).
std::string prom_value(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", x);
}

bool same_double(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// NaN ↔ null in JSON.
nlohmann::json num(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(); }
double num_from(const nlohmann::json& j) {
  return j.is_null() ? std::nan("") : j.get<double>();
}

}  // namespace

bool JobStatus::operator==(const JobStatus& o) const {
  auto same_member = [](const MemberStatus& a, const MemberStatus& b) {
    return a.id == b.id && a.role == b.role && a.host == b.host &&
           a.heartbeat_age_s == b.heartbeat_age_s && a.step == b.step && same_double(a.loss, b.loss) &&
           a.tokens_per_second == b.tokens_per_second && a.bytes_pushed == b.bytes_pushed &&
           a.bytes_pulled == b.bytes_pulled;
  };
  auto same_point = [](const LossPoint& a, const LossPoint& b) {
    return a.step == b.step && same_double(a.loss, b.loss);
  };
  return step == o.step && same_double(loss, o.loss) && tokens_per_second == o.tokens_per_second &&
         membership_epoch == o.membership_epoch &&
         std::equal(members.begin(), members.end(), o.members.begin(), o.members.end(),
                    same_member) &&
         bytes_pushed_total == o.bytes_pushed_total && bytes_pulled_total == o.bytes_pulled_total &&
         step_seconds == o.step_seconds && same_double(bytes_per_token, o.bytes_per_token) &&
         last_checkpoint_step == o.last_checkpoint_step &&
         std::equal(loss_history.begin(), loss_history.end(), o.loss_history.begin(),
                    o.loss_history.end(), same_point) &&
         run_dir == o.run_dir && start_step == o.start_step && target_steps == o.target_steps &&
         tokens_total == o.tokens_total && same_double(lr, o.lr) && same_double(grad_norm, o.grad_norm) &&
         same_double(val_loss, o.val_loss) && val_step == o.val_step && elapsed_s == o.elapsed_s &&
         checkpoints == o.checkpoints && events == o.events && finished == o.finished &&
         membership_changes == o.membership_changes &&
         membership_events == o.membership_events && waiting == o.waiting;
}

void add_status_event(JobStatus& s, const std::string& text) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  s.events.push_back(fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z {}", tm.tm_year + 1900, tm.tm_mon + 1,
                                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, text));
  if (s.events.size() > 50) s.events.erase(s.events.begin(), s.events.end() - 50);
}

std::array<int64_t, 3> count_members(const JobStatus& s) {
  std::array<int64_t, 3> n{};
  for (const auto& m : s.members) {
    const auto i = static_cast<size_t>(m.role);
    if (i < 3) ++n[i];
  }
  return n;
}

// ---- renderers -------------------------------------------------------------------------------

std::string render_prometheus(const JobStatus& s) {
  std::string out;
  auto it = std::back_inserter(out);
  auto head = [&out](const char* name, const char* type, const char* help) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto one = [&](const char* name, const char* type, const char* help, const std::string& value) {
    head(name, type, help);
    fmt::format_to(it, "{} {}\n", name, value);
  };
  head("ptrain_build_info", "gauge", "Always 1; the labels name the ptrain build.");
  fmt::format_to(it, "ptrain_build_info{{version=\"{}\"}} 1\n", PTRAIN_VERSION);
  one("ptrain_step", "gauge", "Optimizer steps applied.", std::to_string(s.step));
  one("ptrain_target_steps", "gauge", "Optimizer steps the run trains to (train.steps).",
      std::to_string(s.target_steps));
  one("ptrain_tokens_total", "counter", "Target tokens trained on, resumes included.",
      std::to_string(s.tokens_total));
  one("ptrain_loss", "gauge", "Mean training loss (nats per token) of the last applied step.", prom_value(s.loss));
  one("ptrain_val_loss", "gauge", "Validation loss (nats per token) of the last evaluation.", prom_value(s.val_loss));
  one("ptrain_learning_rate", "gauge", "Learning rate of the last applied step.", prom_value(s.lr));
  one("ptrain_grad_norm", "gauge", "Global gradient norm of the last applied step, before clipping.",
      prom_value(s.grad_norm));
  one("ptrain_elapsed_seconds", "gauge", "Training time of the run, continued across resumes.",
      prom_value(s.elapsed_s));
  head("ptrain_members", "gauge", "Live members of the job by role.");
  const auto counts = count_members(s);
  for (size_t i = 0; i < 3; ++i) fmt::format_to(it, "ptrain_members{{role=\"{}\"}} {}\n", kRoleNames[i], counts[i]);
  one("ptrain_membership_epoch", "gauge", "Membership epoch (bumps on every join or leave).",
      std::to_string(s.membership_epoch));
  one("ptrain_pushed_bytes_total", "counter", "Gradient bytes pushed by workers to servers since this run started.",
      std::to_string(s.bytes_pushed_total));
  one("ptrain_pulled_bytes_total", "counter", "Weight bytes pulled by workers from servers since this run started.",
      std::to_string(s.bytes_pulled_total));
  one("ptrain_bytes_per_token", "gauge",
      "Data-plane bytes (gradient pushes + weight pulls) per target token of the last applied step.",
      prom_value(s.bytes_per_token));
  head("ptrain_step_phase_seconds", "gauge", "Seconds of the last step by phase (mean over workers).");
  const std::pair<const char*, double> phases[] = {{"compute", s.step_seconds.compute},
                                                   {"push", s.step_seconds.push},
                                                   {"wait", s.step_seconds.wait},
                                                   {"pull", s.step_seconds.pull}};
  for (const auto& [phase, v] : phases) {
    fmt::format_to(it, "ptrain_step_phase_seconds{{phase=\"{}\"}} {}\n", phase, prom_value(v));
  }
  one("ptrain_last_checkpoint_step", "gauge", "Step of the last published checkpoint (-1 before the first).",
      std::to_string(s.last_checkpoint_step));
  // Per member: one series per {role, id, host}.
  auto label = [](const MemberStatus& m) {
    std::string host;
    for (char c : m.host) {  // label values escape \, " and newline
      if (c == '\\' || c == '"') host.push_back('\\');
      if (c == '\n') {
        host += "\\n";
        continue;
      }
      host.push_back(c);
    }
    return fmt::format("{{role=\"{}\",id=\"{}\",host=\"{}\"}}", role_name(m.role), m.id, host);
  };
  auto per_member = [&](const char* name, const char* type, const char* help, auto value) {
    head(name, type, help);
    for (const auto& m : s.members) fmt::format_to(it, "{}{} {}\n", name, label(m), value(m));
  };
  per_member("ptrain_member_step", "gauge", "A member's last completed step.",
             [](const MemberStatus& m) { return std::to_string(m.step); });
  per_member("ptrain_member_heartbeat_age_seconds", "gauge", "Seconds since the coordinator last heard from a member.",
             [](const MemberStatus& m) { return prom_value(m.heartbeat_age_s); });
  per_member("ptrain_member_pushed_bytes_total", "counter",
             "Gradient bytes a worker sent (a server: received) since it started.",
             [](const MemberStatus& m) { return std::to_string(m.bytes_pushed); });
  per_member("ptrain_member_pulled_bytes_total", "counter",
             "Weight bytes a worker received (a server: sent) since it started.",
             [](const MemberStatus& m) { return std::to_string(m.bytes_pulled); });
  head("ptrain_membership_changes_total", "counter",
       "Membership changes by kind (join, leave, lost, restart, resume).");
  for (const char* kind : {"join", "leave", "lost", "restart", "resume"}) {
    const auto found = s.membership_changes.find(kind);
    fmt::format_to(it, "ptrain_membership_changes_total{{kind=\"{}\"}} {}\n", kind,
                   found == s.membership_changes.end() ? 0 : found->second);
  }
  head("ptrain_waiting_for_workers", "gauge",
       "1 while the job waits for workers (fewer than cluster.min_workers), else 0.");
  fmt::format_to(it, "ptrain_waiting_for_workers {}\n", s.waiting.empty() ? 0 : 1);
  return out;
}

std::string render_status_json(const JobStatus& s) {
  using nlohmann::json;
  const auto counts = count_members(s);
  json members = json::array();
  for (const auto& m : s.members) {
    members.push_back({{"id", m.id},
                       {"role", role_name(m.role)},
                       {"host", m.host},
                       {"heartbeat_age_s", num(m.heartbeat_age_s)},
                       {"step", m.step},
                       {"loss", num(m.loss)},
                       {"tokens_per_second", num(m.tokens_per_second)},
                       {"bytes_pushed", m.bytes_pushed},
                       {"bytes_pulled", m.bytes_pulled}});
  }
  json history = json::array();
  for (const auto& p : s.loss_history) history.push_back(json::array({p.step, num(p.loss)}));
  json membership_events = json::array();
  for (const auto& e : s.membership_events) {
    membership_events.push_back({{"kind", e.kind}, {"role", e.role}, {"id", e.id}, {"step", e.step},
                      {"time", e.time}, {"text", e.text}});
  }
  json j = {
      {"step", s.step},
      {"loss", num(s.loss)},
      {"tokens_per_second", num(s.tokens_per_second)},
      {"membership_epoch", s.membership_epoch},
      {"members_by_role",
       {{"coordinator", counts[0]}, {"server", counts[1]}, {"worker", counts[2]}}},
      {"bytes_pushed_total", s.bytes_pushed_total},
      {"bytes_pulled_total", s.bytes_pulled_total},
      {"step_seconds",
       {{"compute", num(s.step_seconds.compute)},
        {"push", num(s.step_seconds.push)},
        {"wait", num(s.step_seconds.wait)},
        {"pull", num(s.step_seconds.pull)}}},
      {"bytes_per_token", num(s.bytes_per_token)},
      {"last_checkpoint_step", s.last_checkpoint_step},
      {"members", std::move(members)},
      {"loss_history", std::move(history)},
      {"run_dir", s.run_dir},
      {"run_name", std::filesystem::path(s.run_dir).filename().string()},
      {"start_step", s.start_step},
      {"target_steps", s.target_steps},
      {"tokens_total", s.tokens_total},
      {"lr", num(s.lr)},
      {"grad_norm", num(s.grad_norm)},
      {"val_loss", num(s.val_loss)},
      {"val_step", s.val_step},
      {"elapsed_s", num(s.elapsed_s)},
      {"checkpoints", s.checkpoints},
      {"events", s.events},
      {"finished", s.finished},
      {"membership_changes", s.membership_changes},
      {"membership_events", std::move(membership_events)},
      {"waiting", s.waiting},
  };
  return j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

JobStatus parse_status_json(std::string_view text) {
  try {
    const auto j = nlohmann::json::parse(text);
    JobStatus s;
    s.step = j.at("step").get<int64_t>();
    s.loss = num_from(j.at("loss"));
    s.tokens_per_second = num_from(j.at("tokens_per_second"));
    s.membership_epoch = j.at("membership_epoch").get<int64_t>();
    s.bytes_pushed_total = j.at("bytes_pushed_total").get<uint64_t>();
    s.bytes_pulled_total = j.at("bytes_pulled_total").get<uint64_t>();
    const auto& ss = j.at("step_seconds");
    s.step_seconds = {num_from(ss.at("compute")), num_from(ss.at("push")),
                      num_from(ss.at("wait")), num_from(ss.at("pull"))};
    // Absent from a status.json written before the figure existed.
    if (j.contains("bytes_per_token")) s.bytes_per_token = num_from(j.at("bytes_per_token"));
    s.last_checkpoint_step = j.at("last_checkpoint_step").get<int64_t>();
    for (const auto& m : j.at("members")) {
      MemberStatus ms;
      ms.id = m.at("id").get<int32_t>();
      ms.role = role_from_name(m.at("role").get<std::string>());
      ms.host = m.at("host").get<std::string>();
      ms.heartbeat_age_s = num_from(m.at("heartbeat_age_s"));
      ms.step = m.at("step").get<int64_t>();
      ms.loss = num_from(m.at("loss"));
      ms.tokens_per_second = num_from(m.at("tokens_per_second"));
      ms.bytes_pushed = m.at("bytes_pushed").get<uint64_t>();
      ms.bytes_pulled = m.at("bytes_pulled").get<uint64_t>();
      s.members.push_back(std::move(ms));
    }
    for (const auto& p : j.at("loss_history")) {
      s.loss_history.push_back({p.at(0).get<int64_t>(), num_from(p.at(1))});
    }
    s.run_dir = j.at("run_dir").get<std::string>();
    s.start_step = j.at("start_step").get<int64_t>();
    s.target_steps = j.at("target_steps").get<int64_t>();
    s.tokens_total = j.at("tokens_total").get<int64_t>();
    s.lr = num_from(j.at("lr"));
    s.grad_norm = num_from(j.at("grad_norm"));
    s.val_loss = num_from(j.at("val_loss"));
    s.val_step = j.at("val_step").get<int64_t>();
    s.elapsed_s = num_from(j.at("elapsed_s"));
    s.checkpoints = j.at("checkpoints").get<std::vector<int64_t>>();
    s.events = j.at("events").get<std::vector<std::string>>();
    s.finished = j.at("finished").get<bool>();
    s.membership_changes = j.at("membership_changes").get<std::map<std::string, int64_t>>();
    for (const auto& e : j.at("membership_events")) {
      s.membership_events.push_back({e.at("kind").get<std::string>(), e.at("role").get<std::string>(),
                          e.at("id").get<int64_t>(), e.at("step").get<int64_t>(),
                          e.at("time").get<double>(), e.at("text").get<std::string>()});
    }
    s.waiting = j.at("waiting").get<std::string>();
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw IoError(fmt::format("status JSON: {}", e.what()));
  }
}

std::string render_status_html(const JobStatus& s) { return render_live_page(s); }

StatusReply route_status_request(std::string_view method, std::string_view target,
                                 const std::function<JobStatus()>& snapshot) {
  StatusReply r;
  if (method != "GET" && method != "HEAD") {
    r.status = 405;
    r.content_type = "text/plain; charset=utf-8";
    r.body = "method not allowed: the status endpoint is read-only (GET)\n";
    r.allow = "GET, HEAD";
    return r;
  }
  const std::string_view path = target.substr(0, target.find('?'));
  enum class Page { kMetrics, kStatus, kHtml, kTrainLog } page;
  if (path == "/train.jsonl") {
    page = Page::kTrainLog;
  } else if (path == "/metrics") {
    page = Page::kMetrics;
  } else if (path == "/status") {
    page = Page::kStatus;
  } else if (path == "/" || path == "/index.html") {
    page = Page::kHtml;
  } else {
    r.status = 404;
    r.content_type = "text/plain; charset=utf-8";
    r.body = "not found: try /metrics, /status, /train.jsonl or /\n";
    return r;
  }
  JobStatus s;
  try {
    s = snapshot();
  } catch (const std::exception& e) {
    r.status = 500;
    r.content_type = "text/plain; charset=utf-8";
    r.body = fmt::format("cannot take a status snapshot: {}\n", e.what());
    return r;
  }
  switch (page) {
    case Page::kMetrics:
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = render_prometheus(s);
      break;
    case Page::kStatus:
      r.content_type = "application/json";
      r.body = render_status_json(s);
      break;
    case Page::kHtml:
      r.content_type = "text/html; charset=utf-8";
      r.body = render_status_html(s);
      break;
    case Page::kTrainLog:
      r.content_type = "application/x-ndjson";
      if (s.run_dir.empty()) break;  // nothing logged: an empty log
      try {
        r.body = read_file(s.run_dir + "/train.jsonl");
      } catch (const IoError&) {
        // Not written yet (the first logged step has not happened): an empty log.
      }
      break;
  }
  return r;
}

// ---- the server ------------------------------------------------------------------------------

struct StatusServer::Impl {
  explicit Impl(asio::io_context& io) : acceptor(io) {}
  tcp::acceptor acceptor;
  std::function<JobStatus()> snapshot;
  StatusServerOptions options;
  tcp::endpoint bound;
  std::atomic<int> connections{0};
  // Open connections, oldest first, and whether each has sent anything yet (the io thread only):
  // the cap sheds idle ones first.
  struct Live {
    tcp::socket* sock;
    bool idle = true;
  };
  std::list<Live> live;
  LogLimiter shed_log;
  LogLimiter accept_log;
  LogLimiter bad_request_log;
};

namespace {

using Impl = StatusServer::Impl;

bool is_parse_error(const beast::error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_method).category() &&
         ec != http::error::end_of_stream;
}

// One connection: read one request under a deadline, answer it, close.
awaitable<void> serve(std::shared_ptr<Impl> self, tcp::socket sock) {
  self->live.push_back({&sock, true});
  struct Count {
    Impl& impl;
    std::list<Impl::Live>::iterator at;
    ~Count() {
      --impl.connections;
      impl.live.erase(at);
    }
  } count{*self, std::prev(self->live.end())};
  beast::error_code ignored;
  const auto remote = sock.remote_endpoint(ignored);
  const std::string peer = net::format_endpoint(remote);
  try {
    // Idle connections go first: nothing sent within idle_timeout closes it.
    auto [wait_ec] = co_await net::with_deadline(
        sock.async_wait(tcp::socket::wait_read, net::nothrow_awaitable),
        self->options.idle_timeout, fmt::format("status connection from {} (idle)", peer));
    if (wait_ec) co_return;  // shed, or the socket failed
    count.at->idle = false;
    beast::flat_buffer buf;
    http::request_parser<http::string_body> parser;
    parser.header_limit(8 * 1024);
    parser.body_limit(8 * 1024);
    auto [ec, n] = co_await net::with_deadline(
        http::async_read(sock, buf, parser, net::nothrow_awaitable), self->options.read_timeout,
        fmt::format("status request from {}", peer));
    StatusReply reply;
    unsigned version = 11;
    bool head = false;
    if (ec) {
      if (!is_parse_error(ec)) co_return;  // the peer hung up or the socket failed: nothing to say
      int64_t held = 0;
      if (self->bad_request_log.allow(held)) {
        spdlog::info("status: bad request from {}: {}{}", peer, ec.message(),
                     LogLimiter::held_note(held));
      }
      reply.status = 400;
      reply.content_type = "text/plain; charset=utf-8";
      reply.body = fmt::format("bad request: {}\n", ec.message());
    } else {
      const auto& req = parser.get();
      version = req.version();
      head = req.method() == http::verb::head;
      reply = route_status_request(req.method_string(), req.target(), self->snapshot);
      spdlog::debug("status: {} {} {} -> {}", peer, req.method_string(), req.target(),
                    reply.status);
      if (reply.status == 500) spdlog::warn("status: {}", reply.body);
    }
    http::response<http::string_body> res{static_cast<http::status>(reply.status), version};
    res.set(http::field::server, "ptrain");
    res.set(http::field::content_type, reply.content_type);
    res.set(http::field::cache_control, "no-store");
    if (!reply.allow.empty()) res.set(http::field::allow, reply.allow);
    res.keep_alive(false);
    if (head) {
      res.content_length(reply.body.size());
    } else {
      res.body() = std::move(reply.body);
      res.prepare_payload();
    }
    auto [wec, wn] = co_await net::with_deadline(
        http::async_write(sock, res, net::nothrow_awaitable), self->options.write_timeout,
        fmt::format("status reply to {}", peer));
    if (wec) co_return;
    // Half-close, then drain briefly: closing with unread request bytes would make the kernel
    // reset the connection, and the client could lose the reply (a 400 to garbage, say).
    sock.shutdown(tcp::socket::shutdown_send, ignored);
    std::array<char, 4096> sink;
    size_t drained = 0;
    while (drained < (64u << 10)) {
      auto [dec, dn] = co_await net::with_deadline(
          sock.async_read_some(asio::buffer(sink), net::nothrow_awaitable),
          std::chrono::milliseconds(500), "drain");
      if (dec) break;
      drained += dn;
    }
  } catch (const net::TimeoutError& e) {
    spdlog::debug("status: {}", e.what());
  } catch (const std::exception& e) {
    spdlog::warn("status: connection from {} failed: {}", peer, e.what());
  }
  sock.close(ignored);
}

awaitable<void> accept_loop(std::shared_ptr<Impl> self) {
  for (;;) {
    auto [ec, sock] = co_await self->acceptor.async_accept(net::nothrow_awaitable);
    if (!self->acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
    if (ec) {
      // E.g. out of file descriptors: say so (at a bounded rate), and do not spin.
      int64_t held = 0;
      if (self->accept_log.allow(held)) {
        spdlog::warn("status: accept failed: {}{}", ec.message(), LogLimiter::held_note(held));
      }
      asio::steady_timer pause(self->acceptor.get_executor(), std::chrono::milliseconds(100));
      co_await pause.async_wait(net::nothrow_awaitable);
      continue;
    }
    if (self->connections.load() >= self->options.max_connections) {
      // Shed the oldest idle connection to make room; if none is idle, this one goes.
      auto idle = std::find_if(self->live.begin(), self->live.end(),
                               [](const Impl::Live& l) { return l.idle; });
      beast::error_code ignored;
      int64_t held = 0;
      const bool say = self->shed_log.allow(held);
      if (idle == self->live.end()) {
        if (say) {
          spdlog::warn("status: {} connections busy; closing a new one{}",
                       self->connections.load(), LogLimiter::held_note(held));
        }
        sock.close(ignored);
        continue;
      }
      if (say) {
        spdlog::warn("status: {} connections open; closing the oldest idle one{}",
                     self->connections.load(), LogLimiter::held_note(held));
      }
      idle->idle = false;  // shed once
      idle->sock->close(ignored);
    }
    ++self->connections;
    asio::co_spawn(self->acceptor.get_executor(), serve(self, std::move(sock)), asio::detached);
  }
}

}  // namespace

StatusServer::StatusServer(asio::io_context& io, const std::string& host, uint16_t port,
                           std::function<JobStatus()> snapshot, StatusServerOptions options)
    : impl_(std::make_shared<Impl>(io)) {
  PTRAIN_ENFORCE(snapshot != nullptr, "StatusServer needs a snapshot function");
  impl_->snapshot = std::move(snapshot);
  impl_->options = options;
  const std::string where = fmt::format("{}:{}", host, port);
  try {
    tcp::resolver resolver(io);
    const auto results = resolver.resolve(host, std::to_string(port),
                                          tcp::resolver::passive | tcp::resolver::numeric_service);
    if (results.empty()) throw IoError(fmt::format("{} resolves to no address", host));
    const tcp::endpoint ep = results.begin()->endpoint();
    auto& a = impl_->acceptor;
    a.open(ep.protocol());
    a.set_option(asio::socket_base::reuse_address(true));
    a.bind(ep);
    a.listen(asio::socket_base::max_listen_connections);
    impl_->bound = a.local_endpoint();
  } catch (const boost::system::system_error& e) {
    throw IoError(fmt::format("cannot serve the status page on {}: {}", where, e.code().message()));
  }
  asio::co_spawn(io, accept_loop(impl_), asio::detached);
}

StatusServer::~StatusServer() { stop(); }

void StatusServer::stop() {
  // Closing runs on the acceptor's executor, so stop() is safe from any thread.
  asio::post(impl_->acceptor.get_executor(), [self = impl_] {
    beast::error_code ignored;
    self->acceptor.close(ignored);
  });
}

std::string StatusServer::local_endpoint() const { return net::format_endpoint(impl_->bound); }
uint16_t StatusServer::port() const { return impl_->bound.port(); }
std::string StatusServer::advertised_endpoint() const {
  return net::advertised_endpoint(impl_->bound);
}

void write_addr_file(const std::string& path, const std::string& host_port) {
  // ":PORT" (no host) means every interface, like 0.0.0.0.
  const net::HostPort hp =
      net::parse_host_port(host_port, "address file " + path, {.allow_empty_host = true});
  std::string host = hp.host.empty() ? "0.0.0.0" : hp.host;
  beast::error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (!ec && addr.is_unspecified()) host = net::advertised_host(addr);
  write_file_atomic(path, net::format_host_port(host, hp.port) + "\n");
}

}  // namespace ptrain
