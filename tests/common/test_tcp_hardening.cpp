// The TCP node under hostile or careless peers: a wrong secret is reported as such on both sides
// at once (not as a timeout); a flood of unauthenticated connections is capped per listener and
// shed oldest first; junk is dropped at once with its reason; accept errors are logged at a
// bounded rate. Everything on 127.0.0.1 with free ports.
#include "common/net/tcp_transport.hpp"
#include "common/proto/codec.hpp"
#include "support/log_capture.hpp"
#include "support/raw_socket.hpp"

#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace ptrain;
using namespace ptrain::net;
using namespace std::chrono_literals;
using test::closed_within;
using test::dial;

namespace {

std::shared_ptr<TcpNode> listening_node(const Secret& secret, std::string& addr,
                                        TcpNodeOptions o = {}) {
  o.self_role = Role::kCoordinator;
  auto node = std::make_shared<TcpNode>(secret, o);
  addr = node->listen("127.0.0.1", 0, [](const proto::Message&, const std::string&) {
    return Identity{worker_endpoint(0), false};
  });
  return node;
}

// Waits up to `limit` for `cond`.
template <class F>
bool eventually(F cond, std::chrono::milliseconds limit = 3000ms) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

}  // namespace

TEST_CASE("tcp hardening: a wrong secret is named on both sides at once - not a timeout") {
  test::LogCapture log;
  std::string addr;
  auto server = listening_node(Secret("the-right-secret"), addr);
  TcpNodeOptions o;
  o.self_role = Role::kWorker;
  TcpNode client(Secret("a-wrong-secret"), o);
  const auto t0 = std::chrono::steady_clock::now();
  std::string what;
  try {
    client.connect(addr, coordinator_endpoint(), proto::Failure{0, "hello"}, 10s);
  } catch (const IoError& e) {
    what = e.what();
  }
  const auto took = std::chrono::steady_clock::now() - t0;
  CAPTURE(what);
  CHECK(what.find("the job secret does not match") != std::string::npos);
  CHECK(what.find("timed out") == std::string::npos);
  CHECK(took < 2s);  // the handshake deadline is 5 s
  // The accepting side says the same, also well before its own 5 s deadline.
  CHECK(eventually([&] { return log.count("refused a connection from") > 0; }, 2000ms));
  const std::string all = log.all();
  CAPTURE(all);
  CHECK(all.find("the job secret does not match") != std::string::npos);
  CHECK(all.find("timed out") == std::string::npos);
  client.close();
  server->close();
}

TEST_CASE("tcp hardening: a flood of idle connections is capped - a real peer still gets in") {
  test::LogCapture log;
  const Secret secret("flood-secret");
  TcpNodeOptions o;
  o.max_pending_auth = 8;
  std::string addr;
  auto server = listening_node(secret, addr, o);
  std::vector<int> idle;
  for (int i = 0; i < 200; ++i) idle.push_back(dial(addr));
  // The oldest were shed: the first connection is closed long before the 5 s deadline.
  CHECK(closed_within(idle.front(), 2000ms));
  TcpNodeOptions co;
  co.self_role = Role::kWorker;
  TcpNode client(secret, co);
  const auto t0 = std::chrono::steady_clock::now();
  client.connect(addr, coordinator_endpoint(), proto::Failure{0, "hello"}, 5s);
  CHECK(std::chrono::steady_clock::now() - t0 < 1s);
  // Refusals are logged at a bounded rate: a handful of lines and a count, not 192 lines.
  std::this_thread::sleep_for(200ms);
  const size_t refusals = log.count("refused a connection from");
  CAPTURE(refusals);
  CHECK(refusals >= 1);
  CHECK(refusals <= 6);
  CHECK(log.all().find("dropped unauthenticated after") != std::string::npos);
  for (int fd : idle) ::close(fd);
  client.close();
  server->close();
}

TEST_CASE("tcp hardening: junk is dropped at its first byte with the reason") {
  test::LogCapture log;
  std::string addr;
  auto server = listening_node(Secret("junk-secret"), addr);
  for (const std::string& junk : {std::string("x"), std::string("\r\n"), std::string("GET / HTTP/1.1\r\n\r\n"),
                                 std::string("PTRN")}) {
    const int fd = dial(addr);
    ::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(closed_within(fd, 3000ms));
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);  // not the 5 s handshake deadline
    ::close(fd);
  }
  std::this_thread::sleep_for(100ms);
  const std::string all = log.all();
  CAPTURE(all);
  CHECK(all.find("not a ptrain auth frame (it starts with 0x78") != std::string::npos);
  CHECK(all.find("an HTTP request") != std::string::npos);
  CHECK(all.find("a protocol frame before authenticating") != std::string::npos);
  server->close();
}
