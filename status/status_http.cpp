// The status endpoint: renderers, router and the Beast server (the only Beast user in ptrain).
#include "status/status_http.hpp"

#include "common/net/asio.hpp"  // first: includes <utility> before Asio
#include "common/util/fs.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cmath>

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

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

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
         step_seconds == o.step_seconds && last_checkpoint_step == o.last_checkpoint_step &&
         std::equal(loss_history.begin(), loss_history.end(), o.loss_history.begin(),
                    o.loss_history.end(), same_point) &&
         membership_changes == o.membership_changes && events == o.events &&
         waiting == o.waiting;
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
  auto head = [&out](const char* name, const char* type, const char* help) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  head("ptrain_step", "gauge", "Optimizer steps applied.");
  fmt::format_to(std::back_inserter(out), "ptrain_step {}\n", s.step);
  head("ptrain_loss", "gauge", "Mean training loss (nats per token) of the last applied step.");
  fmt::format_to(std::back_inserter(out), "ptrain_loss {}\n", prom_value(s.loss));
  head("ptrain_tokens_per_second", "gauge", "Training throughput of the whole job.");
  fmt::format_to(std::back_inserter(out), "ptrain_tokens_per_second {}\n",
                 prom_value(s.tokens_per_second));
  head("ptrain_members", "gauge", "Live members of the job by role.");
  const auto counts = count_members(s);
  for (size_t i = 0; i < 3; ++i) {
    fmt::format_to(std::back_inserter(out), "ptrain_members{{role=\"{}\"}} {}\n", kRoleNames[i],
                   counts[i]);
  }
  head("ptrain_membership_epoch", "gauge", "Membership epoch (bumps on every join or leave).");
  fmt::format_to(std::back_inserter(out), "ptrain_membership_epoch {}\n", s.membership_epoch);
  head("ptrain_bytes_pushed_total", "counter", "Gradient bytes pushed by workers to servers.");
  fmt::format_to(std::back_inserter(out), "ptrain_bytes_pushed_total {}\n", s.bytes_pushed_total);
  head("ptrain_bytes_pulled_total", "counter", "Weight bytes pulled by workers from servers.");
  fmt::format_to(std::back_inserter(out), "ptrain_bytes_pulled_total {}\n", s.bytes_pulled_total);
  head("ptrain_step_seconds", "gauge", "Seconds of the last step by phase (mean over workers).");
  const std::pair<const char*, double> phases[] = {{"compute", s.step_seconds.compute},
                                                   {"push", s.step_seconds.push},
                                                   {"wait", s.step_seconds.wait},
                                                   {"pull", s.step_seconds.pull}};
  for (const auto& [phase, v] : phases) {
    fmt::format_to(std::back_inserter(out), "ptrain_step_seconds{{phase=\"{}\"}} {}\n", phase,
                   prom_value(v));
  }
  head("ptrain_last_checkpoint_step", "gauge",
       "Step of the last published checkpoint (-1 before the first).");
  fmt::format_to(std::back_inserter(out), "ptrain_last_checkpoint_step {}\n",
                 s.last_checkpoint_step);
  head("ptrain_membership_changes_total", "counter",
       "Membership changes by kind (join, leave, lost, restart, resume).");
  for (const char* kind : {"join", "leave", "lost", "restart", "resume"}) {
    const auto it = s.membership_changes.find(kind);
    fmt::format_to(std::back_inserter(out), "ptrain_membership_changes_total{{kind=\"{}\"}} {}\n",
                   kind, it == s.membership_changes.end() ? 0 : it->second);
  }
  head("ptrain_waiting_for_workers", "gauge",
       "1 while the job waits for workers (fewer than cluster.min_workers), else 0.");
  fmt::format_to(std::back_inserter(out), "ptrain_waiting_for_workers {}\n",
                 s.waiting.empty() ? 0 : 1);
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
  json events = json::array();
  for (const auto& e : s.events) {
    events.push_back({{"kind", e.kind}, {"role", e.role}, {"id", e.id}, {"step", e.step},
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
      {"last_checkpoint_step", s.last_checkpoint_step},
      {"members", std::move(members)},
      {"loss_history", std::move(history)},
      {"membership_changes", s.membership_changes},
      {"events", std::move(events)},
      {"waiting", s.waiting},
  };
  return j.dump(1) + "\n";
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
    s.membership_changes = j.at("membership_changes").get<std::map<std::string, int64_t>>();
    for (const auto& e : j.at("events")) {
      s.events.push_back({e.at("kind").get<std::string>(), e.at("role").get<std::string>(),
                          e.at("id").get<int64_t>(), e.at("step").get<int64_t>(),
                          e.at("time").get<double>(), e.at("text").get<std::string>()});
    }
    s.waiting = j.at("waiting").get<std::string>();
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw IoError(fmt::format("status JSON: {}", e.what()));
  }
}

std::string render_status_html(const JobStatus& s) {
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it,
                 "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
                 "<meta http-equiv=\"refresh\" content=\"5\"><title>ptrain step {}</title>"
                 "<style>body{{font-family:sans-serif;margin:1.5em}}td,th{{padding:2px 10px;"
                 "text-align:right}}</style></head><body>\n<h1>ptrain</h1>\n",
                 s.step);
  const auto counts = count_members(s);
  fmt::format_to(it,
                 "<p>step <b>{}</b> &middot; loss <b>{}</b> &middot; {:.0f} tokens/s &middot; "
                 "membership epoch {} ({} servers, {} workers) &middot; last checkpoint {}</p>\n",
                 s.step, std::isfinite(s.loss) ? fmt::format("{:.4f}", s.loss) : "&ndash;",
                 s.tokens_per_second, s.membership_epoch, counts[1], counts[2],
                 s.last_checkpoint_step < 0 ? "none" : std::to_string(s.last_checkpoint_step));
  fmt::format_to(it,
                 "<p>last step: compute {:.3f} s, push {:.3f} s, wait {:.3f} s, pull {:.3f} s "
                 "&middot; pushed {:.1f} MB, pulled {:.1f} MB</p>\n",
                 s.step_seconds.compute, s.step_seconds.push, s.step_seconds.wait,
                 s.step_seconds.pull, s.bytes_pushed_total / 1e6, s.bytes_pulled_total / 1e6);
  if (!s.waiting.empty()) fmt::format_to(it, "<p><b>{}</b></p>\n", html_escape(s.waiting));
  if (!s.events.empty()) {
    fmt::format_to(it, "<p>membership events (latest last):</p>\n<ul>\n");
    const size_t from = s.events.size() > 10 ? s.events.size() - 10 : 0;
    for (size_t i = from; i < s.events.size(); ++i) {
      fmt::format_to(it, "<li>step {}: {}</li>\n", s.events[i].step, html_escape(s.events[i].text));
    }
    fmt::format_to(it, "</ul>\n");
  }

  // The loss curve: at most 500 points, scaled into a 600x200 box.
  std::vector<LossPoint> pts;
  for (const auto& p : s.loss_history) {
    if (std::isfinite(p.loss)) pts.push_back(p);
  }
  if (pts.size() > 500) {
    std::vector<LossPoint> thin;
    const double stride = static_cast<double>(pts.size() - 1) / 499.0;
    for (int i = 0; i < 500; ++i) thin.push_back(pts[static_cast<size_t>(i * stride + 0.5)]);
    pts = std::move(thin);
  }
  if (pts.size() >= 2) {
    double lo = pts[0].loss, hi = pts[0].loss;
    for (const auto& p : pts) lo = std::min(lo, p.loss), hi = std::max(hi, p.loss);
    if (hi - lo < 1e-12) hi = lo + 1.0;
    const double s0 = static_cast<double>(pts.front().step);
    const double s1 = std::max(s0 + 1.0, static_cast<double>(pts.back().step));
    fmt::format_to(it,
                   "<svg width=\"640\" height=\"230\" viewBox=\"0 0 640 230\">"
                   "<rect x=\"30\" y=\"10\" width=\"600\" height=\"200\" fill=\"none\" "
                   "stroke=\"#ccc\"/><polyline fill=\"none\" stroke=\"#1f77b4\" points=\"");
    for (const auto& p : pts) {
      const double x = 30 + 600 * (static_cast<double>(p.step) - s0) / (s1 - s0);
      const double y = 210 - 200 * (p.loss - lo) / (hi - lo);
      fmt::format_to(it, "{:.1f},{:.1f} ", x, y);
    }
    fmt::format_to(it,
                   "\"/><text x=\"0\" y=\"18\" font-size=\"11\">{:.3g}</text>"
                   "<text x=\"0\" y=\"210\" font-size=\"11\">{:.3g}</text>"
                   "<text x=\"30\" y=\"226\" font-size=\"11\">step {}</text>"
                   "<text x=\"560\" y=\"226\" font-size=\"11\">step {}</text></svg>\n",
                   hi, lo, pts.front().step, pts.back().step);
  } else {
    out += "<p>(the loss curve appears after two steps)</p>\n";
  }

  out += "<table><tr><th>member</th><th>host</th><th>heartbeat age s</th><th>step</th>"
         "<th>loss</th><th>tokens/s</th><th>MB pushed</th><th>MB pulled</th></tr>\n";
  for (const auto& m : s.members) {
    fmt::format_to(it,
                   "<tr><td>{} {}</td><td>{}</td><td>{:.1f}</td><td>{}</td><td>{}</td>"
                   "<td>{:.0f}</td><td>{:.1f}</td><td>{:.1f}</td></tr>\n",
                   role_name(m.role), m.id, html_escape(m.host), m.heartbeat_age_s, m.step,
                   std::isfinite(m.loss) ? fmt::format("{:.4f}", m.loss) : "&ndash;",
                   m.tokens_per_second, m.bytes_pushed / 1e6, m.bytes_pulled / 1e6);
  }
  out += "</table>\n<p><a href=\"/metrics\">/metrics</a> &middot; "
         "<a href=\"/status\">/status</a></p>\n</body></html>\n";
  return out;
}

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
  enum class Page { kMetrics, kStatus, kHtml } page;
  if (path == "/metrics") {
    page = Page::kMetrics;
  } else if (path == "/status") {
    page = Page::kStatus;
  } else if (path == "/" || path == "/index.html") {
    page = Page::kHtml;
  } else {
    r.status = 404;
    r.content_type = "text/plain; charset=utf-8";
    r.body = "not found: try /metrics, /status or /\n";
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
};

namespace {

using Impl = StatusServer::Impl;

bool is_parse_error(const beast::error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_method).category() &&
         ec != http::error::end_of_stream;
}

// One connection: read one request under a deadline, answer it, close.
awaitable<void> serve(std::shared_ptr<Impl> self, tcp::socket sock) {
  struct Count {
    std::atomic<int>& n;
    ~Count() { --n; }
  } count{self->connections};
  beast::error_code ignored;
  const auto remote = sock.remote_endpoint(ignored);
  const std::string peer = net::format_endpoint(remote);
  try {
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
      spdlog::info("status: bad request from {}: {}", peer, ec.message());
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
      // E.g. out of file descriptors: say so, and do not spin.
      spdlog::warn("status: accept failed: {}", ec.message());
      asio::steady_timer pause(self->acceptor.get_executor(), std::chrono::milliseconds(100));
      co_await pause.async_wait(net::nothrow_awaitable);
      continue;
    }
    if (self->connections.load() >= self->options.max_connections) {
      beast::error_code ignored;
      sock.close(ignored);
      continue;
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
