// The status endpoint's server: Beast over Asio, one coroutine per connection (the only Beast user
// in ptrain). The renderers and the router it serves are in status_render.cpp.
#include "status/status_http.hpp"

#include "common/net/asio.hpp"  // first: includes <utility> before Asio
#include "common/util/fs.hpp"
#include "common/log.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <list>

namespace ptrain {
namespace {

namespace asio = net::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using net::awaitable;
using net::tcp;

}  // namespace

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
