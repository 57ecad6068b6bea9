// The membership table (common/net/membership.hpp) and the fixed membership of the threads
// launch: member order, ids never reused, the epoch 0 at the start and one bump per later change,
// events in order and each loss once, and the checks on a given member list.
#include "common/error.hpp"
#include "common/net/membership.hpp"

#include <doctest/doctest.h>

using namespace ptrain;
using net::server_endpoint;
using net::worker_endpoint;

namespace {

class TestMembership final : public net::Membership {
 public:
  net::Member join(net::Role role) { return add_member(role, "h", "", ""); }
  bool leave(const net::Endpoint& e) {
    return remove_member(e, net::MembershipChange::kLeft, e.str() + " left");
  }
};

}  // namespace

TEST_CASE("membership: a fixed membership has S servers and W workers at epoch 0 - no events") {
  net::FixedMembership m(2, 3, "local");
  CHECK(m.started());
  CHECK(m.epoch() == 0);
  CHECK(m.take_events().empty());
  CHECK(m.servers() == std::vector<net::Endpoint>{server_endpoint(0), server_endpoint(1)});
  CHECK(m.workers() ==
        std::vector<net::Endpoint>{worker_endpoint(0), worker_endpoint(1), worker_endpoint(2)});
  const auto all = m.members();
  REQUIRE(all.size() == 5);
  CHECK(all[0].host == "local");
  CHECK(all[0].label() == "server 0");
  CHECK(m.find(worker_endpoint(2)).has_value());
  CHECK_FALSE(m.find(worker_endpoint(3)).has_value());

  CHECK(m.report_lost(worker_endpoint(1), "worker 1 was lost"));
  CHECK_FALSE(m.report_lost(worker_endpoint(1), "again"));
  const auto ev = m.take_events();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].change == net::MembershipChange::kLost);
  CHECK(ev[0].member.endpoint == worker_endpoint(1));
  CHECK(ev[0].epoch == 1);
  CHECK(ev[0].reason == "worker 1 was lost");
  CHECK(m.epoch() == 1);
  CHECK(m.workers() == std::vector<net::Endpoint>{worker_endpoint(0), worker_endpoint(2)});
}

TEST_CASE("membership: a fixed membership from a member list checks the ids of each role") {
  // As an MPI launch would build it from its rank map, in rank order.
  net::FixedMembership m({{worker_endpoint(1), "n2", "", "n2"},
                          {server_endpoint(0), "n0", "", "n0"},
                          {worker_endpoint(0), "n1", "", "n1"}});
  const auto all = m.members();
  REQUIRE(all.size() == 3);
  CHECK(all[0].endpoint == server_endpoint(0));
  CHECK(all[2].endpoint == worker_endpoint(1));
  CHECK(all[2].host == "n2");
  CHECK(m.epoch() == 0);
  CHECK(m.take_events().empty());

  auto refused = [](std::vector<net::Member> list, const std::string& part) {
    try {
      net::FixedMembership bad(std::move(list));
      FAIL("accepted");
    } catch (const ConfigError& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(part) != std::string::npos);
    }
  };
  auto bare = [](net::Endpoint e) { return net::Member{e, "", "", ""}; };
  refused({bare(worker_endpoint(0)), bare(worker_endpoint(0))}, "lists worker 0 twice");
  refused({bare(server_endpoint(0)), bare(worker_endpoint(1))}, "lists worker 1 but not worker 0");
  refused({bare(net::coordinator_endpoint())}, "only servers and workers");
  CHECK_THROWS_AS(net::FixedMembership(-1, 1, "x"), ConfigError);
}

TEST_CASE("membership: epoch bumps once per change after start - ids are never reused") {
  TestMembership m;
  CHECK(m.join(net::Role::kWorker).endpoint == worker_endpoint(0));
  CHECK(m.join(net::Role::kServer).endpoint == server_endpoint(0));
  CHECK(m.join(net::Role::kWorker).endpoint == worker_endpoint(1));
  CHECK(m.epoch() == 0);  // assembling: no bump
  m.start();
  CHECK(m.epoch() == 0);
  CHECK(m.report_lost(worker_endpoint(1), "worker 1 was lost"));
  CHECK(m.epoch() == 1);
  CHECK(m.join(net::Role::kWorker).endpoint == worker_endpoint(2));  // not 1 again
  CHECK(m.epoch() == 2);
  CHECK(m.leave(worker_endpoint(0)));
  CHECK_FALSE(m.leave(worker_endpoint(0)));
  CHECK(m.epoch() == 3);
  const auto ev = m.take_events();
  REQUIRE(ev.size() == 6);
  const std::vector<net::MembershipChange> kinds = {
      net::MembershipChange::kJoined, net::MembershipChange::kJoined,
      net::MembershipChange::kJoined, net::MembershipChange::kLost,
      net::MembershipChange::kJoined, net::MembershipChange::kLeft};
  const std::vector<int64_t> epochs = {0, 0, 0, 1, 2, 3};
  for (size_t i = 0; i < ev.size(); ++i) {
    CAPTURE(i);
    CHECK(ev[i].change == kinds[i]);
    CHECK(ev[i].epoch == epochs[i]);
  }
  CHECK(std::string(net::change_name(ev[5].change)) == "left");
  CHECK(m.take_events().empty());
  CHECK(m.workers() == std::vector<net::Endpoint>{worker_endpoint(2)});
}
