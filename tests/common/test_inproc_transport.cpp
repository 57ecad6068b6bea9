// The in-process transport: endpoints exchange messages through the codec (the frames are the
// ones TCP will carry), per-sender order is kept, counters count whole frames, timeouts return
// nothing, close() wakes every endpoint, and N endpoints as threads deliver everything
// (closed-form check: the sum of what arrives).
#include "common/net/inproc_transport.hpp"
#include "common/net/transport.hpp"
#include "common/proto/codec.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <thread>

using namespace ptrain;
using namespace ptrain::net;
using namespace std::chrono_literals;

TEST_CASE("transport: a message goes through the codec to the named endpoint") {
  auto fabric = std::make_shared<InprocFabric>();
  auto a = make_transport(TransportOptions::inproc(worker_endpoint(0), fabric));
  auto b = make_transport(TransportOptions::inproc(server_endpoint(1), fabric));
  const proto::GradPush push{3, 0, 0, 64, {0, 4}, {1, 2, 3, 4}};
  a->send(server_endpoint(1), push);
  auto env = b->receive(1s);
  REQUIRE(env);
  CHECK(env->from == worker_endpoint(0));
  CHECK(std::get<proto::GradPush>(env->message) == push);

  const auto frame_bytes = proto::encode(push).size();
  CHECK(a->counters().frames_sent == 1);
  CHECK(a->counters().bytes_sent == frame_bytes);
  CHECK(a->counters().bytes_sent_by_type[static_cast<size_t>(proto::MessageType::kGradPush)] ==
        frame_bytes);
  CHECK(b->counters().bytes_received == frame_bytes);
  CHECK(b->counters().frames_received == 1);
  CHECK(!b->receive(10ms));  // nothing more: a timeout, not an error
}

TEST_CASE("transport: endpoints print as role and id") {
  CHECK(coordinator_endpoint().str() == "coordinator");
  CHECK(server_endpoint(2).str() == "server 2");
  CHECK(worker_endpoint(0).str() == "worker 0");
}

TEST_CASE("transport: order from one sender is kept - mailboxes exist before their owner") {
  auto fabric = std::make_shared<InprocFabric>();
  InprocTransport a(worker_endpoint(0), fabric);
  for (int64_t i = 0; i < 100; ++i) a.send(coordinator_endpoint(), proto::StepBegin{i, 0, {}});
  InprocTransport c(coordinator_endpoint(), fabric);  // attaches after the sends
  for (int64_t i = 0; i < 100; ++i) {
    auto env = c.receive(1s);
    REQUIRE(env);
    CHECK(std::get<proto::StepBegin>(env->message).step == i);
  }
}

TEST_CASE("transport: close wakes a blocked receive and refuses later sends") {
  auto fabric = std::make_shared<InprocFabric>();
  InprocTransport a(worker_endpoint(0), fabric);
  InprocTransport b(worker_endpoint(1), fabric);
  std::atomic<bool> woke{false};
  std::thread t([&] {
    try {
      (void)b.receive(std::chrono::hours(1));
    } catch (const TransportClosed& e) {
      woke = std::string(e.what()).find("stopping") != std::string::npos;
    }
  });
  std::this_thread::sleep_for(20ms);
  a.close();
  t.join();
  CHECK(woke);
  CHECK_THROWS_AS(a.send(worker_endpoint(1), proto::Shutdown{}), TransportClosed);
}

TEST_CASE("transport: a corrupted frame is refused naming the sender") {
  // A subclass that damages frames on the wire: the base's decoder must catch it.
  struct Flaky final : Transport {
    Flaky(Endpoint self, std::shared_ptr<InprocFabric> f) : Transport(self, {}), f_(std::move(f)) {}
    void close() override { f_->close("test"); }
    void send_frame(const Endpoint& to, proto::OutFrame out) override {
      std::vector<std::byte> frame = proto::flatten(out);
      frame.back() ^= std::byte{1};
      f_->deliver(to, RawFrame{self(), std::move(frame)});
    }
    std::optional<RawFrame> receive_frame(std::chrono::milliseconds t) override {
      return f_->take(self(), t);
    }
    std::shared_ptr<InprocFabric> f_;
  };
  auto fabric = std::make_shared<InprocFabric>();
  Flaky a(worker_endpoint(3), fabric);
  InprocTransport b(coordinator_endpoint(), fabric);
  a.send(coordinator_endpoint(), proto::Shutdown{"hello"});
  CHECK_THROWS_WITH_AS(b.receive(1s), doctest::Contains("bad frame from worker 3"),
                       proto::ProtocolError);
}

TEST_CASE("transport: the factory refuses a transport without its wire - naming the endpoint") {
  // A TCP transport is built over a network node (the conformance suite builds real ones);
  // without one the factory refuses, naming the endpoint.
  CHECK_THROWS_WITH_AS(make_transport(TransportOptions::tcp(worker_endpoint(0), nullptr)),
                       doctest::Contains("TCP transport of worker 0 needs a network node"),
                       UsageError);
  CHECK_THROWS_WITH_AS(make_transport(TransportOptions::inproc(server_endpoint(2), nullptr)),
                       doctest::Contains("in-process transport of server 2 needs a fabric"),
                       UsageError);
}

TEST_CASE("transport: N sender threads - one receiver - everything arrives (sizes 0 - 1 - 2 - 7)") {
  for (int n : {0, 1, 2, 7}) {
    auto fabric = std::make_shared<InprocFabric>();
    InprocTransport sink(coordinator_endpoint(), fabric);
    constexpr int kPer = 50;
    std::vector<std::thread> senders;
    for (int s = 0; s < n; ++s) {
      senders.emplace_back([&, s] {
        InprocTransport t(worker_endpoint(s), fabric);
        for (int i = 0; i < kPer; ++i) {
          t.send(coordinator_endpoint(), proto::PushReceived{0, i, s, 1});
        }
      });
    }
    int64_t sum_ids = 0, count = 0;
    std::vector<int> last(static_cast<size_t>(n), -1);
    while (count < static_cast<int64_t>(n) * kPer) {
      auto env = sink.receive(5s);
      REQUIRE(env);
      const auto& m = std::get<proto::PushReceived>(env->message);
      CHECK(m.step == last[static_cast<size_t>(m.worker_id)] + 1);  // per-sender order
      last[static_cast<size_t>(m.worker_id)] = static_cast<int>(m.step);
      sum_ids += m.worker_id;
      ++count;
    }
    for (auto& t : senders) t.join();
    CHECK(sum_ids == int64_t{kPer} * n * (n - 1) / 2);
    CHECK(!sink.receive(5ms));
  }
}
