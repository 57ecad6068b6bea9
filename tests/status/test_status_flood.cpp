// The status endpoint under an idle-connection flood: connections that send nothing are closed
// after idle_timeout, and at the connection cap a new request sheds the oldest idle connection, so
// monitoring gets through at once instead of waiting out the flood.
#include "status/status_http.hpp"
#include "support/http_get.hpp"

#include <boost/asio/io_context.hpp>
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

using namespace ptrain;
using namespace std::chrono_literals;

namespace {

int dial(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

// Whether the server closed `fd` within `limit` (recv returns 0 or an error).
bool closed_within(int fd, std::chrono::milliseconds limit) {
  timeval tv{static_cast<time_t>(limit.count() / 1000),
             static_cast<suseconds_t>((limit.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char c;
  const ssize_t n = ::recv(fd, &c, 1, 0);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

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
  const uint16_t port = s.server->port();
  std::vector<int> idle;
  for (int i = 0; i < 64; ++i) idle.push_back(dial(port));
  std::this_thread::sleep_for(100ms);
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string answer =
        test::http_get("127.0.0.1:" + std::to_string(port), "/metrics");
    CHECK(answer.rfind("HTTP/1.1 200", 0) == 0);
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
  }
  for (int fd : idle) ::close(fd);
}

TEST_CASE("status flood: a connection that sends nothing is closed after idle_timeout") {
  StatusServerOptions o;
  o.idle_timeout = 300ms;
  Server s(o);
  const int fd = dial(s.server->port());
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(closed_within(fd, 3000ms));
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  ::close(fd);
}
