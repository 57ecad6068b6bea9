// The TCP node under hostile or careless peers: a wrong secret is reported as such on both sides
// at once (not as a timeout); a flood of unauthenticated connections is capped per listener and
// shed oldest first; junk is dropped at once with its reason; accept errors are logged at a
// bounded rate. Everything on 127.0.0.1 with free ports.
#include "common/net/tcp_transport.hpp"
#include "common/proto/codec.hpp"
#include "support/log_capture.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

using namespace ptrain;
using namespace ptrain::net;
using namespace std::chrono_literals;

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
