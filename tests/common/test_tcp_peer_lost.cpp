// The TCP node's loss hook (TcpNodeOptions::peer_lost): it is told of each lost peer once, with
// the cause in words; its answer decides whether receive() throws PeerLost (with the node's text,
// "lost worker 3 (127.0.0.1:PORT): connection closed by the peer"); a peer that said goodbye (a
// Shutdown) is not a loss; a later send to a lost peer names it, its address and the cause.
#include "common/net/tcp_transport.hpp"
#include "common/proto/codec.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace ptrain;
using namespace ptrain::net;
using namespace std::chrono_literals;

namespace {

const Secret& secret() {
  static const Secret s("peer-lost-test-secret");
  return s;
}

TcpNodeOptions options(Role role) {
  TcpNodeOptions o;
  o.self_role = role;
  o.heartbeat = 50ms;
  o.peer_timeout = 2s;
  return o;
}

// What the hub's hook was told.
struct Losses {
  std::mutex mu;
  std::vector<std::pair<Endpoint, std::string>> seen;
  std::atomic<bool> fatal{false};

  size_t count() {
    std::lock_guard lock(mu);
    return seen.size();
  }
  // Waits up to 5 s for the n-th report.
  std::pair<Endpoint, std::string> wait_for(size_t n) {
    for (int i = 0; i < 500 && count() < n; ++i) std::this_thread::sleep_for(10ms);
    std::lock_guard lock(mu);
    REQUIRE(seen.size() >= n);
    return seen[n - 1];
  }
};

// A node closing its end is seen as an orderly close (FIN), or as a reset when a heartbeat of the
// hub reached it after its last read: both are the peer ending the connection.
bool peer_ended(const std::string& cause) {
  return cause == "connection closed by the peer" || cause == "connection reset by the peer";
}

class Hub {
 public:
  explicit Hub(std::shared_ptr<Losses> losses) {
    TcpNodeOptions o = options(Role::kServer);
    o.peer_lost = [losses](const Endpoint& e, const std::string& cause) {
      std::lock_guard lock(losses->mu);
      losses->seen.emplace_back(e, cause);
      return losses->fatal.load();
    };
    node_ = std::make_shared<TcpNode>(secret(), o);
    addr_ = node_->listen("127.0.0.1", 0, [](const proto::Message& m, const std::string&) {
      const auto* h = std::get_if<proto::PeerHello>(&m);
      if (h == nullptr) throw proto::ProtocolError("expected a PeerHello");
      return Identity{worker_endpoint(h->id), false};
    });
    transport_ = make_transport(TransportOptions::tcp(server_endpoint(0), node_));
  }
  ~Hub() { node_->close(); }
  Transport& transport() { return *transport_; }

  // A worker node connected to the hub, known to it (one frame went through).
  std::shared_ptr<TcpNode> connect(int32_t id) {
    auto node = std::make_shared<TcpNode>(secret(), options(Role::kWorker));
    node->connect(addr_, server_endpoint(0),
                  proto::PeerHello{static_cast<uint8_t>(Role::kWorker), id, 0}, 5s);
    make_transport(TransportOptions::tcp(worker_endpoint(id), node))
        ->send(server_endpoint(0), proto::Failure{0, "hello"});
    const std::optional<Envelope> env = transport_->receive(5s);
    REQUIRE(env.has_value());
    CHECK(env->from == worker_endpoint(id));
    return node;
  }

 private:
  std::shared_ptr<TcpNode> node_;
  std::string addr_;
  std::unique_ptr<Transport> transport_;
};

}  // namespace

TEST_CASE("tcp: peer_lost is told the cause once - false keeps the node going - a send names the cause") {
  auto losses = std::make_shared<Losses>();
  Hub hub(losses);
  hub.connect(1)->close();  // no Shutdown: a loss
  const auto [who, cause] = losses->wait_for(1);
  CHECK(who == worker_endpoint(1));
  CAPTURE(cause);
  CHECK(peer_ended(cause));
  CHECK_FALSE(hub.transport().receive(300ms));  // the hook said "not fatal": no PeerLost
  CHECK(losses->count() == 1);
  try {
    hub.transport().send(worker_endpoint(1), proto::Shutdown{"late"});
    FAIL("a send to a lost peer went through");
  } catch (const PeerLost& e) {
    const std::string what = e.what();
    CAPTURE(what);
    CHECK(what.find("cannot send to worker 1 (127.0.0.1:") != std::string::npos);
    CHECK(what.find("connection lost (" + cause + ")") != std::string::npos);
  }
}

TEST_CASE("tcp: a peer that said goodbye is no loss - the hook is not called") {
  auto losses = std::make_shared<Losses>();
  Hub hub(losses);
  auto node = hub.connect(2);
  make_transport(TransportOptions::tcp(worker_endpoint(2), node))
      ->send(server_endpoint(0), proto::Shutdown{"bye"});
  const std::optional<Envelope> env = hub.transport().receive(5s);
  REQUIRE(env.has_value());
  CHECK(std::holds_alternative<proto::Shutdown>(env->message));
  node->close();
  CHECK_FALSE(hub.transport().receive(500ms));
  CHECK(losses->count() == 0);
}

TEST_CASE("tcp: a fatal loss is a PeerLost naming the peer - its address and the cause") {
  auto losses = std::make_shared<Losses>();
  losses->fatal = true;
  Hub hub(losses);
  hub.connect(3)->close();
  std::string what;
  try {
    (void)hub.transport().receive(5s);
  } catch (const PeerLost& e) {
    what = e.what();
  }
  CAPTURE(what);
  const auto [who, cause] = losses->wait_for(1);
  CHECK(who == worker_endpoint(3));
  CHECK(what.rfind("lost worker 3 (127.0.0.1:", 0) == 0);
  CHECK(what.find("): " + cause) != std::string::npos);
  CHECK(peer_ended(cause));
}
