// The coordinator of cluster.sync ssp / async fed bad PushReady messages: a real parameter server
// thread, the coordinator in a thread, and the test playing worker 0 over the in-process
// transport. Every PushReady that does not answer the lease the worker holds — another worker's
// id, another lease, a second one, a weights version the lease cannot have been computed from,
// or any PushReady in a bsp job — stops the coordinator with a protocol error that names the
// lease, the peer and what is wrong; a good one begins the step with the lease's windows.
#include "common/net/inproc_transport.hpp"
#include "common/net/membership.hpp"
#include "coordinator/coordinator.hpp"
#include "paramserver/param_server.hpp"
#include "paramserver/update_rule.hpp"
#include "support/job_test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <mutex>
#include <thread>

using namespace ptrain;
using namespace ptrain::testing;
using namespace std::chrono_literals;

namespace {

struct LeasedRig {
  TempDir dir{"leased-protocol"};
  Config config;
  ParamLayout layout;
  std::vector<proto::KeyRange> ranges;
  std::shared_ptr<net::InprocFabric> fabric = std::make_shared<net::InprocFabric>();
  net::InprocTransport worker{net::worker_endpoint(0), fabric};
  std::vector<std::thread> threads;
  std::mutex mu;
  std::string coordinator_error;

  explicit LeasedRig(SyncMode sync)
      : config(make_config(dir, sync)), layout(layout_for(config)) {
    std::filesystem::create_directories(config.run.dir);
    for (const auto& [b, e] : layout.shard_ranges(1)) ranges.push_back({b, e});
    ParamServerOptions so;
    so.server.server_id = 0;
    so.server.range = ranges[0];
    so.server.load_shard = make_shard_loader(layout, so.server.range);
    so.poll = 50ms;
    UpdateRule rule = update_rule_for(config, layout, so.server.range);
    threads.emplace_back([this, so, rule]() mutable {
      try {
        net::InprocTransport t(net::server_endpoint(0), fabric);
        run_param_server(so, std::move(rule), t);
      } catch (const std::exception&) {
        // The job is over: the coordinator closed the fabric or stopped it.
      }
    });
    threads.emplace_back([this] {
      CoordinatorOptions co;
      co.config = config;
      co.server_ranges = ranges;
      co.timeout = 30s;
      net::FixedMembership membership(1, 1, "local");
      try {
        net::InprocTransport t(net::coordinator_endpoint(), fabric);
        run_coordinator(co, layout, t, membership);
      } catch (const std::exception& e) {
        std::lock_guard lock(mu);
        coordinator_error = e.what();
      }
      fabric->close("coordinator ended");
    });
  }
  ~LeasedRig() {
    fabric->close("test over");
    for (auto& t : threads) t.join();
  }
  static Config make_config(const TempDir& dir, SyncMode sync) {
    Config c = small_config(dir);
    c.cluster.sync = sync;
    c.cluster.staleness = sync == SyncMode::kSsp ? 1 : 0;
    return c;
  }
  // The next message to worker 0 (status traffic aside).
  template <class T>
  T expect(const std::string& what) {
    std::optional<net::Envelope> env;
    try {
      env = worker.receive(30s);
    } catch (const std::exception& e) {
      FAIL("waiting for " << what << ": " << std::string(e.what())
                               << "; the coordinator: " << stopped_with());
    }
    REQUIRE_MESSAGE(env, "nothing arrived at worker 0 while waiting for " << what);
    if (!std::holds_alternative<T>(env->message)) {
      FAIL("expected " << what << ", got "
                       << std::string(proto::type_name(proto::type_of(env->message))));
    }
    return std::get<T>(env->message);
  }
  // The coordinator's error once it stopped.
  std::string stopped_with() {
    threads.back().join();
    threads.pop_back();
    std::lock_guard lock(mu);
    return coordinator_error;
  }
};

}  // namespace

TEST_CASE("coordinator: ssp PushReady out of order - another worker - another lease - a version the lease cannot have - stops naming it") {
  struct Bad {
    const char* what;
    proto::PushReady (*make)(const proto::LeaseGrant&);
    const char* want;
  };
  const Bad cases[] = {
      {"another worker's id", [](const proto::LeaseGrant& g) { return proto::PushReady{5, g.lease_id, 0}; },
       "from worker 0: it names worker 5"},
      {"another lease", [](const proto::LeaseGrant& g) { return proto::PushReady{0, g.lease_id + 7, 0}; },
       "that is not the lease the worker holds"},
      {"a version newer than the servers hold", [](const proto::LeaseGrant& g) { return proto::PushReady{0, g.lease_id, 3}; },
       "computed from weights version 3; the lease asked for 0 or newer and the servers hold at most 0"},
      {"a version older than the lease asked for", [](const proto::LeaseGrant& g) { return proto::PushReady{0, g.lease_id, -1}; },
       "computed from weights version -1"},
  };
  for (const Bad& bad : cases) {
    CAPTURE(bad.what);
    LeasedRig rig(SyncMode::kSsp);
    const auto grant = rig.expect<proto::LeaseGrant>("the first lease");
    CHECK(grant.min_version == 0);
    CHECK(grant.windows.size() == 8);  // train.batch_size: one worker's push is a whole step
    rig.worker.send(net::coordinator_endpoint(), bad.make(grant));
    const std::string err = rig.stopped_with();
    CHECK_MESSAGE(err.find("unexpected PushReady for lease") != std::string::npos, err);
    CHECK_MESSAGE(err.find(bad.want) != std::string::npos, err);
  }
}

TEST_CASE("coordinator: a second PushReady for one lease is refused - a good one begins the step with its windows") {
  LeasedRig rig(SyncMode::kAsync);
  const auto grant = rig.expect<proto::LeaseGrant>("the first lease");
  rig.worker.send(net::coordinator_endpoint(), proto::PushReady{0, grant.lease_id, 0});
  const auto begin = rig.expect<proto::StepBegin>("the step of the lease");
  CHECK(begin.step == 0);
  CHECK(begin.windows == grant.windows);
  // The lease is now a step: a repeat of its PushReady answers no lease the worker holds.
  rig.worker.send(net::coordinator_endpoint(), proto::PushReady{0, grant.lease_id, 0});
  const std::string err = rig.stopped_with();
  CHECK_MESSAGE(err.find(fmt::format("unexpected PushReady for lease {} from worker 0", grant.lease_id)) !=
                    std::string::npos,
                err);
}

TEST_CASE("coordinator: a PushReady in a bsp job stops it naming the sync mode") {
  LeasedRig rig(SyncMode::kBsp);
  const auto begin = rig.expect<proto::StepBegin>("step 1");
  rig.worker.send(net::coordinator_endpoint(), proto::PushReady{0, 0, 0});
  const std::string err = rig.stopped_with();
  CHECK_MESSAGE(err.find("cluster.sync is bsp, not ssp or async") != std::string::npos, err);
  CHECK(begin.windows.size() == 8);
}
