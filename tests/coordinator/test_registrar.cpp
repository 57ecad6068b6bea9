// The coordinator's TCP registration as a membership, driven without sockets: Register frames in
// arrival order are joins with stable ids, the job's size is enforced, the node's "peer lost" hook
// is a loss event (once, naming the member, its address and the node's cause) that never stops the
// node itself, and the epoch is 0 at the start and bumps on every later change.
#include "common/error.hpp"
#include "common/proto/codec.hpp"
#include "coordinator/registrar.hpp"

#include <doctest/doctest.h>

using namespace ptrain;
using net::server_endpoint;
using net::worker_endpoint;

namespace {

proto::Register reg(net::Role role, std::string listen = "", std::string host = "") {
  return proto::Register{static_cast<uint8_t>(role), std::move(listen), std::move(host)};
}

}  // namespace

TEST_CASE("registrar: registrations join in arrival order with stable ids - epoch 0 at the start") {
  Registrar r(2, 2);
  const net::Identity a = r.identify(reg(net::Role::kWorker, "", "hostA"), "10.0.0.5:40001");
  CHECK(a.endpoint == worker_endpoint(0));
  CHECK(a.deliver);
  CHECK(r.identify(reg(net::Role::kServer, ":7000", "hostB"), "10.0.0.6:40002").endpoint ==
        server_endpoint(0));
  CHECK(r.identify(reg(net::Role::kServer, "10.0.0.9:7001"), "[::1]:40003").endpoint ==
        server_endpoint(1));
  CHECK(r.identify(reg(net::Role::kWorker), "[::1]:40004").endpoint == worker_endpoint(1));
  // ":PORT" is completed with the host the coordinator sees; a full address is kept.
  CHECK(r.server_addresses() == std::vector<std::string>{"10.0.0.6:7000", "10.0.0.9:7001"});

  const std::vector<net::Member> m = r.members();
  REQUIRE(m.size() == 4);
  CHECK(m[0].endpoint == server_endpoint(0));  // servers first, then workers, by id
  CHECK(m[0].host == "10.0.0.6");
  CHECK(m[0].address == "10.0.0.6:40002");
  CHECK(m[0].name == "hostB");
  CHECK(m[1].host == "::1");
  CHECK(m[2].endpoint == worker_endpoint(0));
  CHECK(m[2].label() == "worker 0 (10.0.0.5:40001)");

  const auto joins = r.take_events();
  REQUIRE(joins.size() == 4);
  for (const auto& ev : joins) {
    CHECK(ev.change == net::MembershipChange::kJoined);
    CHECK(ev.epoch == 0);  // assembling the job: not yet a change of a running job
  }
  CHECK(joins[0].member.endpoint == worker_endpoint(0));  // in arrival order
  CHECK_FALSE(r.started());
  r.start();
  CHECK(r.epoch() == 0);
}

TEST_CASE("registrar: roles beyond the job's size and malformed first frames are refused") {
  Registrar r(1, 1, /*max_workers=*/1);
  r.identify(reg(net::Role::kServer, ":7000"), "127.0.0.1:1");
  r.identify(reg(net::Role::kWorker), "127.0.0.1:2");
  try {
    r.identify(reg(net::Role::kWorker), "127.0.0.1:3");
    FAIL("a worker beyond cluster.max_workers was accepted");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("its cap (cluster.max_workers = 1)") != std::string::npos);
  }
  CHECK_THROWS_AS(r.identify(reg(net::Role::kServer), "127.0.0.1:4"), ConfigError);
  CHECK_THROWS_AS(r.identify(proto::Heartbeat{}, "127.0.0.1:5"), proto::ProtocolError);
  CHECK_THROWS_AS(r.identify(reg(net::Role::kCoordinator), "127.0.0.1:6"), proto::ProtocolError);
  CHECK(r.members().size() == 2);
}

TEST_CASE("registrar: a dropped connection is one loss event naming its cause - the node is never told to stop") {
  Registrar r(1, 2);
  r.identify(reg(net::Role::kServer, ":7000"), "127.0.0.1:1");
  r.identify(reg(net::Role::kWorker), "127.0.0.1:41234");
  r.identify(reg(net::Role::kWorker), "127.0.0.1:41235");
  r.take_events();
  r.start();

  CHECK_FALSE(r.connection_lost(worker_endpoint(0), "missed heartbeats for 10 s"));
  // Reported twice: one event, with the first cause.
  CHECK_FALSE(r.connection_lost(worker_endpoint(0), "connection closed by the peer"));
  CHECK_FALSE(r.connection_lost(worker_endpoint(9), "connection reset by the peer"));  // no member
  const auto events = r.take_events();
  REQUIRE(events.size() == 1);
  CHECK(events[0].change == net::MembershipChange::kLost);
  CHECK(events[0].member.endpoint == worker_endpoint(0));
  CHECK(events[0].epoch == 1);
  INFO(events[0].reason);
  CHECK(events[0].reason == "worker 0 (127.0.0.1:41234) was lost (missed heartbeats for 10 s)");
  CHECK(r.epoch() == 1);
  CHECK(r.workers() == std::vector<net::Endpoint>{worker_endpoint(1)});  // id 1 keeps its id

  // The coordinator's own report of the same loss (a failed send) is not news either.
  CHECK_FALSE(r.report_lost(worker_endpoint(0), "cannot send to worker 0: not connected"));
  CHECK_FALSE(r.connection_lost(server_endpoint(0), "connection reset by the peer"));
  const auto server_events = r.take_events();
  REQUIRE(server_events.size() == 1);
  CHECK(server_events[0].reason ==
        "server 0 (127.0.0.1:1) was lost (connection reset by the peer)");
  CHECK(r.epoch() == 2);
  // A worker joining later (no cap: cluster.max_workers 0) gets a new id: ids are not reused.
  CHECK(r.identify(reg(net::Role::kWorker), "127.0.0.1:9").endpoint == worker_endpoint(2));
  const auto joined = r.take_events();
  REQUIRE(joined.size() == 1);
  CHECK(joined[0].change == net::MembershipChange::kJoined);
  CHECK(joined[0].epoch == 3);
  // A worker that says goodbye leaves (kLeft), once.
  CHECK(r.report_left(worker_endpoint(2), "worker 2 left"));
  CHECK_FALSE(r.report_left(worker_endpoint(2), "worker 2 left"));
  const auto left = r.take_events();
  REQUIRE(left.size() == 1);
  CHECK(left[0].change == net::MembershipChange::kLeft);
}
