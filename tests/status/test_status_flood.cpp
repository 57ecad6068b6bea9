// The status endpoint under an idle-connection flood: connections that send nothing are closed
// after idle_timeout, and at the connection cap a new request sheds the oldest idle connection, so
// monitoring gets through at once instead of waiting out the flood.
#include "status/status_http.hpp"
#include "support/http_get.hpp"
#include "support/raw_socket.hpp"

#include <boost/asio/io_context.hpp>
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

using namespace ptrain;
using namespace std::chrono_literals;
using test::closed_within;
using test::dial;

namespace {

struct Server {
  boost::asio::io_context io;
  std::unique_ptr<StatusServer> server;
  std::thread thread;
  explicit Server(StatusServerOptions o) {
    server = std::make_unique<StatusServer>(io, "127.0.0.1", 0, [] { return JobStatus{}; }, o);
    thread = std::thread([this] { io.run(); });
  }
  ~Server() {
    server->stop();
    io.stop();
    thread.join();
  }
};

}  // namespace

TEST_CASE("status flood: idle connections are shed first - monitoring gets through at once") {
  StatusServerOptions o;
  o.max_connections = 16;
  o.idle_timeout = 5s;  // longer than the test's patience: shedding, not the timeout, must act
  Server s(o);
  const std::string addr = "127.0.0.1:" + std::to_string(s.server->port());
  std::vector<int> idle;
  for (int i = 0; i < 64; ++i) idle.push_back(dial(addr));
  std::this_thread::sleep_for(100ms);
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string answer = test::http_get(addr, "/metrics");
    CHECK(answer.rfind("HTTP/1.1 200", 0) == 0);
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
  }
  for (int fd : idle) ::close(fd);
}

TEST_CASE("status flood: a connection that sends nothing is closed after idle_timeout") {
  StatusServerOptions o;
  o.idle_timeout = 300ms;
  Server s(o);
  const int fd = dial("127.0.0.1:" + std::to_string(s.server->port()));
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(closed_within(fd, 3000ms));
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  ::close(fd);
}
