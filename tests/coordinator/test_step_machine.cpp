// The coordinator's step state machine driven message by message (no threads, no sockets): each
// transition (StepWorkers + StepBegin → pushes, reports and the servers' own norms → StepCommit →
// applied; StepContributors and its norms only after a worker was dropped), the numbers it fixes
// (contributor set, fp64 norm in server-id order, clip coefficient, loss),
// the protocol refusals, a non-finite gradient or loss, and a member lost in each phase under
// both worker-loss policies; plus a worker joining at a step boundary through a membership.
#include "common/error.hpp"
#include "common/net/membership.hpp"
#include "common/proto/codec.hpp"
#include "coordinator/step_machine.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>

using namespace ptrain;
using net::server_endpoint;
using net::worker_endpoint;
namespace p = proto;

namespace {

StepMachine make_machine(int32_t servers, WorkerLossPolicy policy = WorkerLossPolicy::kStopJob,
                         double max_norm = 0.0) {
  StepMachineOptions o;
  for (int32_t s = servers - 1; s >= 0; --s) o.servers.push_back(s);  // any order
  o.max_norm = max_norm;
  o.worker_loss = policy;
  return StepMachine(o);
}

// Worker w trains windows {10w, 10w + 1}.
std::vector<WorkerWork> work_for(std::initializer_list<int32_t> ids) {
  std::vector<WorkerWork> out;
  for (int32_t w : ids) out.push_back({w, {10 * w, 10 * w + 1}});
  return out;
}

p::PushReceived push(int32_t server, int64_t step, int32_t worker, int64_t tokens = 10) {
  return {server, step, worker, tokens};
}
p::WorkerStepDone done(int32_t worker, int64_t step, double loss_sum, int64_t tokens) {
  p::WorkerStepDone d;
  d.worker_id = worker;
  d.step = step;
  d.loss_sum = loss_sum;
  d.tokens = tokens;
  return d;
}
// A server's norm report for the worker set `workers` (workers 0 and 1 unless named).
p::NormReport norm(int32_t server, int64_t step, double sum_squares, int64_t bad = -1,
                   std::vector<int32_t> workers = {0, 1}) {
  return {server, step, sum_squares, 0, bad, std::move(workers)};
}
p::NormReport norm_of(std::vector<int32_t> workers, int32_t server, int64_t step,
                      double sum_squares) {
  return norm(server, step, sum_squares, -1, std::move(workers));
}
p::StepApplied applied(int32_t server, int64_t step, double lr = 1e-3) {
  p::StepApplied a;
  a.server_id = server;
  a.step = step;
  a.version = step + 1;
  a.lr = lr;
  return a;
}

// `out` is exactly one T to each of `to`, in that order; returns the first.
template <class T>
T sent_to_each(const std::vector<StepOutgoing>& out, const std::vector<net::Endpoint>& to) {
  REQUIRE(out.size() == to.size());
  for (size_t i = 0; i < to.size(); ++i) {
    CHECK(out[i].to == to[i]);
    REQUIRE(std::holds_alternative<T>(out[i].message));
    CHECK(std::get<T>(out[i].message) == std::get<T>(out[0].message));
  }
  return std::get<T>(out[0].message);
}

const std::vector<net::Endpoint> kTwoServers = {server_endpoint(0), server_endpoint(1)};

// Message `m` from `from` is refused with a ProtocolError whose text contains `part`.
void refused(StepMachine& sm, const net::Endpoint& from, const p::Message& m,
             const std::string& part) {
  try {
    sm.handle(from, m);
    FAIL("accepted " << p::type_name(p::type_of(m)) << " from " << from.str());
  } catch (const p::ProtocolError& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(part) != std::string::npos);
  }
}

// Runs step `t` of a 2-server machine with workers 0 and 1 up to the end of gathering.
void gather_two(StepMachine& sm, int64_t t) {
  sm.begin_step(t, 0, work_for({0, 1}));
  sm.handle(server_endpoint(0), push(0, t, 0, 10));
  sm.handle(server_endpoint(1), push(1, t, 0, 10));
  sm.handle(server_endpoint(0), push(0, t, 1, 30));
  sm.handle(server_endpoint(1), push(1, t, 1, 30));
  sm.handle(worker_endpoint(0), done(0, t, 30.0, 10));
  sm.handle(worker_endpoint(1), done(1, t, 60.0, 30));
  REQUIRE(sm.phase() == StepPhase::kNorms);
}

}  // namespace

TEST_CASE("step machine: a step with 1 worker and 2 servers runs every transition") {
  StepMachine sm = make_machine(2);
  CHECK(sm.phase() == StepPhase::kIdle);
  const auto begin = sm.begin_step(3, 7, work_for({0}));
  // The servers learn whom the step waits for, then the worker gets its windows.
  REQUIRE(begin.size() == 3);
  CHECK(begin[0].to == server_endpoint(0));
  CHECK(begin[1].to == server_endpoint(1));
  CHECK(std::get<p::StepWorkers>(begin[0].message) == p::StepWorkers{3, 7, {0}});
  CHECK(std::get<p::StepWorkers>(begin[1].message) == p::StepWorkers{3, 7, {0}});
  CHECK(begin[2].to == worker_endpoint(0));
  CHECK(std::get<p::StepBegin>(begin[2].message) == p::StepBegin{3, 7, {0, 1}});
  CHECK(sm.phase() == StepPhase::kGathering);

  CHECK(sm.handle(server_endpoint(0), push(0, 3, 0, 20)).empty());
  // Server 0 holds every push of the step: it reports its norm on its own.
  CHECK(sm.handle(server_endpoint(0), norm_of({0}, 0, 3, 16.0)).empty());
  CHECK(sm.handle(worker_endpoint(0), done(0, 3, 50.0, 20)).empty());
  CHECK(sm.phase() == StepPhase::kGathering);  // server 1 has no push yet
  // Every push is in: no StepContributors round, the servers' own reports serve.
  CHECK(sm.handle(server_endpoint(1), push(1, 3, 0, 20)).empty());
  CHECK(sm.phase() == StepPhase::kNorms);
  CHECK(sm.contributors() == std::vector<int32_t>{0});

  const auto commit = sent_to_each<p::StepCommit>(
      sm.handle(server_endpoint(1), norm_of({0}, 1, 3, 9.0)), kTwoServers);
  CHECK(commit.step == 3);
  CHECK(commit.workers == std::vector<int32_t>{0});
  CHECK(commit.global_norm == 5.0);
  CHECK(commit.clip_coef == 1.0f);  // clipping off
  CHECK(sm.phase() == StepPhase::kApplying);

  CHECK(sm.handle(server_endpoint(1), applied(1, 3, 2e-3)).empty());
  CHECK_FALSE(sm.applied());
  CHECK(sm.handle(server_endpoint(0), applied(0, 3, 1e-3)).empty());
  CHECK(sm.applied());
  CHECK(sm.loss() == 50.0 / 20.0);
  CHECK(sm.tokens() == 20);
  CHECK(sm.lr() == 1e-3);  // server 0's
  CHECK(sm.applied_reports().size() == 2);
  CHECK_FALSE(sm.failure());
}

TEST_CASE("step machine: 2 workers and 2 servers - any arrival order - same set and numbers") {
  StepMachine sm = make_machine(2);
  sm.begin_step(0, 0, work_for({1, 0}));  // the machine sorts the work by worker id
  CHECK(sm.workers() == std::vector<int32_t>{0, 1});
  CHECK(sm.handle(worker_endpoint(1), done(1, 0, 60.0, 30)).empty());
  CHECK(sm.handle(server_endpoint(1), push(1, 0, 1, 30)).empty());
  CHECK(sm.handle(server_endpoint(0), push(0, 0, 0, 10)).empty());
  CHECK(sm.contributors().empty());  // each reached one server
  CHECK(sm.handle(server_endpoint(0), push(0, 0, 1, 30)).empty());
  CHECK(sm.contributors() == std::vector<int32_t>{1});  // worker 0 has not reached server 1
  CHECK(sm.handle(worker_endpoint(0), done(0, 0, 30.0, 10)).empty());
  CHECK(sm.handle(server_endpoint(1), push(1, 0, 0, 10)).empty());
  CHECK(sm.phase() == StepPhase::kNorms);
  CHECK(sm.contributors() == std::vector<int32_t>{0, 1});
  CHECK(sm.loss() == (30.0 + 60.0) / 40.0);
  CHECK(sm.tokens() == 40);
  CHECK_FALSE(sm.accuracy());  // GPT workers report no accuracy (correct = -1)
  CHECK(sm.max_compute_s() == 0.0);
}

TEST_CASE("step machine: masked-LM accuracy is token-weighted over the contributors' reports") {
  StepMachine sm = make_machine(1);
  sm.begin_step(0, 0, work_for({0, 1, 2}));
  p::WorkerStepDone d0 = done(0, 0, 30.0, 10), d1 = done(1, 0, 60.0, 30), d2 = done(2, 0, 5.0, 50);
  d0.correct = 5;   // 50% of 10
  d1.correct = 3;   // 10% of 30
  d2.correct = 50;  // worker 2 does not contribute (never pushed): not counted
  CHECK(sm.handle(server_endpoint(0), push(0, 0, 0, 10)).empty());
  CHECK(sm.handle(worker_endpoint(0), d0).empty());
  CHECK(sm.handle(worker_endpoint(1), d1).empty());
  CHECK(sm.handle(worker_endpoint(2), d2).empty());
  CHECK(sm.handle(server_endpoint(0), push(0, 0, 1, 30)).empty());
  REQUIRE(sm.accuracy().has_value());
  // Token-weighted: (5 + 3) / (10 + 30) = 0.2, not the mean of 0.5 and 0.1.
  CHECK(*sm.accuracy() == doctest::Approx(0.2));
}

TEST_CASE("step machine: partial norms are summed in server-id order in fp64") {
  // (1e16 + 1) + 1 == 1e16 in fp64, while (1 + 1) + 1e16 == 1e16 + 2: the order shows.
  StepMachine sm = make_machine(3);
  sm.begin_step(0, 0, work_for({0}));
  for (int32_t s : {0, 1, 2}) sm.handle(server_endpoint(s), push(s, 0, 0));
  sm.handle(worker_endpoint(0), done(0, 0, 1.0, 10));
  REQUIRE(sm.phase() == StepPhase::kNorms);
  sm.handle(server_endpoint(2), norm_of({0}, 2, 0, 1.0));
  sm.handle(server_endpoint(1), norm_of({0}, 1, 0, 1.0));
  const auto out = sm.handle(server_endpoint(0), norm_of({0}, 0, 0, 1e16));
  REQUIRE(out.size() == 3);
  CHECK(sm.global_norm() == 1e8);
  CHECK(std::get<p::StepCommit>(out[0].message).global_norm == 1e8);
}

TEST_CASE("step machine: the clip coefficient is min(1 - max_norm over norm + 1e-6)") {
  for (const double max_norm : {1.0, 10.0}) {
    CAPTURE(max_norm);
    StepMachine sm = make_machine(2, WorkerLossPolicy::kStopJob, max_norm);
    gather_two(sm, 0);
    sm.handle(server_endpoint(0), norm(0, 0, 16.0));
    const auto commit =
        sent_to_each<p::StepCommit>(sm.handle(server_endpoint(1), norm(1, 0, 9.0)), kTwoServers);
    const float want = static_cast<float>(std::min(1.0, max_norm / (5.0 + 1e-6)));
    CHECK(commit.clip_coef == want);
    CHECK(sm.clip_coef() == want);
    CHECK(commit.workers == std::vector<int32_t>{0, 1});
  }
  CHECK(clip_coefficient(10.0, 1.0) == 1.0 / (10.0 + 1e-6));
  CHECK(clip_coefficient(100.0, 0.0) == 1.0);
}

TEST_CASE("step machine: duplicate - wrong-step - wrong-sender and out-of-phase messages are refused") {
  StepMachine sm = make_machine(2);
  refused(sm, server_endpoint(0), push(0, 0, 0), "no step is running");
  sm.begin_step(4, 0, work_for({0, 1}));
  sm.handle(server_endpoint(0), push(0, 4, 0));
  refused(sm, server_endpoint(0), push(0, 4, 0), "a second push of worker 0");
  refused(sm, server_endpoint(0), push(0, 3, 1), "it is for step 4");
  refused(sm, server_endpoint(1), push(0, 4, 1), "it names server 0");    // not who it says
  refused(sm, worker_endpoint(0), push(0, 4, 1), "it names server 0");
  refused(sm, server_endpoint(5), push(5, 4, 1), "it names server 5");    // not a server of the job
  refused(sm, server_endpoint(0), push(0, 4, 7), "worker 7 has no part");  // not in the step
  sm.handle(worker_endpoint(0), done(0, 4, 1.0, 10));
  refused(sm, worker_endpoint(0), done(0, 4, 1.0, 10), "a second report");
  refused(sm, worker_endpoint(1), done(0, 4, 1.0, 10), "it names worker 0");
  refused(sm, worker_endpoint(1), done(1, 5, 1.0, 10), "it is for step 6");
  refused(sm, worker_endpoint(3), done(3, 4, 1.0, 10), "no part in this step");
  refused(sm, server_endpoint(0), norm(0, 4, 1.0, -1, {1}), "the step awaits [0, 1]");
  refused(sm, server_endpoint(0), norm(0, 4, 1.0, -1, {0, 1, 2}), "covers workers [0, 1, 2]");
  refused(sm, server_endpoint(0), applied(0, 4), "no commit is pending");
  refused(sm, server_endpoint(0), p::CheckpointShardWritten{}, "not a message of a step");
  refused(sm, worker_endpoint(0), p::Register{}, "not a message of a step");
  // The whole text names the message, the sender, the step and the phase.
  refused(sm, server_endpoint(1), push(0, 4, 1),
          "unexpected PushReceived from server 1 during step 5 (gathering pushes and worker "
          "reports)");

  StepMachine late = make_machine(2);
  gather_two(late, 0);
  refused(late, server_endpoint(0), push(0, 0, 0), "already fixed");
  late.handle(server_endpoint(0), norm(0, 0, 1.0));
  refused(late, server_endpoint(0), norm(0, 0, 1.0), "a second norm report");
  refused(late, server_endpoint(1), norm(1, 1, 1.0), "it is for step 2");
  late.handle(server_endpoint(1), norm(1, 0, 1.0));
  refused(late, server_endpoint(1), norm(1, 0, 1.0), "no norm is awaited");
  late.handle(server_endpoint(0), applied(0, 0));
  refused(late, server_endpoint(0), applied(0, 0), "a second report");
  late.handle(server_endpoint(1), applied(1, 0));
  REQUIRE(late.applied());
  refused(late, server_endpoint(0), applied(0, 0), "after step 1 was applied");
  // A new step only once the last one is applied.
  StepMachine busy = make_machine(1);
  busy.begin_step(0, 0, work_for({0}));
  CHECK_THROWS_AS(busy.begin_step(1, 0, work_for({0})), InternalError);
  CHECK_THROWS_AS(make_machine(1).begin_step(0, 0, {}), InternalError);
}

TEST_CASE("step machine: a non-finite gradient or loss fails the step before any commit") {
  StepMachine sm = make_machine(2);
  gather_two(sm, 2);
  CHECK(sm.handle(server_endpoint(1), norm(1, 2, 1.0, 1234)).empty());
  CHECK(sm.handle(server_endpoint(0), norm(0, 2, std::numeric_limits<double>::infinity(), 17))
            .empty());  // no StepCommit
  CHECK(sm.phase() == StepPhase::kFailed);
  REQUIRE(sm.failure());
  CHECK(sm.failure()->kind == StepFailure::Kind::kNonFinite);
  CHECK(sm.failure()->phase == StepPhase::kNorms);
  CHECK(sm.first_nonfinite() == 17);  // the lowest server id's
  CHECK(sm.failure()->message.find("step 3") != std::string::npos);
  CHECK_THROWS_AS(sm.handle(server_endpoint(0), applied(0, 2)), InternalError);

  StepMachine nan_loss = make_machine(1);
  nan_loss.begin_step(0, 0, work_for({0}));
  nan_loss.handle(server_endpoint(0), push(0, 0, 0));
  nan_loss.handle(worker_endpoint(0), done(0, 0, std::nan(""), 10));
  CHECK(nan_loss.handle(server_endpoint(0), norm_of({0}, 0, 0, 4.0)).empty());
  REQUIRE(nan_loss.failure());
  CHECK(nan_loss.failure()->kind == StepFailure::Kind::kNonFinite);
  CHECK_FALSE(nan_loss.first_nonfinite());
  CHECK(nan_loss.failure()->message.find("the loss is nan") != std::string::npos);
}

TEST_CASE("step machine: stop-job policy - a worker lost in any phase fails naming it and the phase") {
  struct Case {
    const char* name;
    int stage;  // 0 before any push, 1 after some pushes, 2 norms, 3 applying, 4 applied
    const char* phase_text;
  };
  for (const Case c : {Case{"before any push", 0, "gathering pushes and worker reports"},
                       Case{"after some pushes", 1, "gathering pushes and worker reports"},
                       Case{"during norms", 2, "partial gradient norms"},
                       Case{"during commit", 3, "servers applying the update"},
                       Case{"after applied", 4, "after step 1 was applied"}}) {
    CAPTURE(c.name);
    StepMachine sm = make_machine(2);
    if (c.stage <= 1) {
      sm.begin_step(0, 0, work_for({0, 1}));
      if (c.stage == 1) sm.handle(server_endpoint(0), push(0, 0, 1));
    } else {
      gather_two(sm, 0);
      if (c.stage >= 3) {
        sm.handle(server_endpoint(0), norm(0, 0, 1.0));
        sm.handle(server_endpoint(1), norm(1, 0, 1.0));
      }
      if (c.stage == 4) {
        sm.handle(server_endpoint(0), applied(0, 0));
        sm.handle(server_endpoint(1), applied(1, 0));
      }
    }
    const StepPhase before = sm.phase();
    CHECK(sm.on_member_lost(worker_endpoint(1), "worker 1 (10.0.0.2:4711) was lost").empty());
    CHECK(sm.phase() == StepPhase::kFailed);
    REQUIRE(sm.failure());
    CHECK(sm.failure()->kind == StepFailure::Kind::kMemberLost);
    CHECK(sm.failure()->member == worker_endpoint(1));
    CHECK(sm.failure()->phase == before);
    INFO(sm.failure()->message);
    CHECK(sm.failure()->message.find("worker 1 (10.0.0.2:4711) was lost") != std::string::npos);
    CHECK(sm.failure()->message.find(c.phase_text) != std::string::npos);
    CHECK(sm.failure()->message.find("a lost worker stops the job") != std::string::npos);
    // Reported once: a second loss changes nothing.
    CHECK(sm.on_member_lost(worker_endpoint(0), "worker 0 was lost").empty());
    CHECK(sm.failure()->member == worker_endpoint(1));
  }
}

TEST_CASE("step machine: a server lost in any phase fails the step under both policies") {
  for (const auto policy : {WorkerLossPolicy::kStopJob, WorkerLossPolicy::kCompleteStep}) {
    for (int stage = 0; stage < 4; ++stage) {
      CAPTURE(stage);
      StepMachine sm = make_machine(2, policy);
      if (stage == 0) {
        sm.begin_step(0, 0, work_for({0, 1}));
      } else {
        gather_two(sm, 0);
        if (stage >= 2) {
          sm.handle(server_endpoint(0), norm(0, 0, 1.0));
          sm.handle(server_endpoint(1), norm(1, 0, 1.0));
        }
        if (stage == 3) {
          sm.handle(server_endpoint(0), applied(0, 0));
          sm.handle(server_endpoint(1), applied(1, 0));
        }
      }
      CHECK(sm.on_member_lost(server_endpoint(1), "server 1 was lost").empty());
      REQUIRE(sm.failure());
      CHECK(sm.failure()->kind == StepFailure::Kind::kMemberLost);
      CHECK(sm.failure()->member == server_endpoint(1));
      CHECK(sm.failure()->message.find("a lost server stops the job") != std::string::npos);
    }
  }
}

TEST_CASE("step machine: complete-step policy - a worker lost before any push is dropped") {
  StepMachine sm = make_machine(2, WorkerLossPolicy::kCompleteStep);
  sm.begin_step(5, 0, work_for({0, 1}));
  CHECK(sm.on_member_lost(worker_endpoint(1), "worker 1 was lost").empty());
  CHECK_FALSE(sm.failure());
  CHECK(sm.dropped() == std::vector<int32_t>{1});
  sm.handle(server_endpoint(0), push(0, 5, 0, 10));
  sm.handle(server_endpoint(1), push(1, 5, 0, 10));
  // Its push that was in flight is ignored, not refused.
  CHECK(sm.handle(server_endpoint(0), push(0, 5, 1, 30)).empty());
  // With it, server 0 holds every push of the StepWorkers set and reports {0, 1} on its own.
  CHECK(sm.handle(server_endpoint(0), norm(0, 5, 7.0)).empty());
  const auto c = sent_to_each<p::StepContributors>(
      sm.handle(worker_endpoint(0), done(0, 5, 25.0, 10)), kTwoServers);
  CHECK(c.workers == std::vector<int32_t>{0});
  CHECK(sm.loss() == 2.5);
  CHECK(sm.tokens() == 10);
  // Only the answers for {0} count; server 0's own report for {0, 1} was void.
  CHECK(sm.handle(server_endpoint(0), norm_of({0}, 0, 5, 16.0)).empty());
  refused(sm, server_endpoint(0), norm_of({0}, 0, 5, 16.0), "a second norm report");
  refused(sm, server_endpoint(1), norm_of({1}, 1, 5, 1.0), "the step awaits [0]");
  // A report for the whole set that crossed StepContributors on the wire is ignored.
  CHECK(sm.handle(server_endpoint(1), norm(1, 5, 7.0)).empty());
  const auto commit = sent_to_each<p::StepCommit>(
      sm.handle(server_endpoint(1), norm_of({0}, 1, 5, 9.0)), kTwoServers);
  CHECK(commit.workers == std::vector<int32_t>{0});
  CHECK(commit.global_norm == 5.0);
}

TEST_CASE("step machine: complete-step policy - a worker whose push reached some servers is dropped") {
  StepMachine sm = make_machine(2, WorkerLossPolicy::kCompleteStep);
  sm.begin_step(0, 3, work_for({0, 1}));
  sm.handle(server_endpoint(0), push(0, 0, 0, 10));
  sm.handle(server_endpoint(1), push(1, 0, 0, 10));
  sm.handle(server_endpoint(0), push(0, 0, 1, 30));  // reached server 0 only
  sm.handle(worker_endpoint(1), done(1, 0, 60.0, 30));
  sm.handle(worker_endpoint(0), done(0, 0, 30.0, 10));
  CHECK(sm.phase() == StepPhase::kGathering);
  // The loss completes the gathering: the contributors go out from on_member_lost.
  const auto c = sent_to_each<p::StepContributors>(
      sm.on_member_lost(worker_endpoint(1), "worker 1 was lost"), kTwoServers);
  CHECK(c == p::StepContributors{0, 3, {0}});
  CHECK(sm.dropped() == std::vector<int32_t>{1});
  CHECK(sm.loss() == 3.0);  // its report does not count: its gradient is not applied
  CHECK(sm.tokens() == 10);
  // Its push reaching server 1 late is ignored in every later phase.
  CHECK(sm.handle(server_endpoint(1), push(1, 0, 1, 30)).empty());
  sm.handle(server_endpoint(0), norm_of({0}, 0, 0, 1.0));
  const auto commit = sent_to_each<p::StepCommit>(
      sm.handle(server_endpoint(1), norm_of({0}, 1, 0, 1.0)), kTwoServers);
  CHECK(commit.workers == std::vector<int32_t>{0});
  sm.handle(server_endpoint(0), applied(0, 0));
  sm.handle(server_endpoint(1), applied(1, 0));
  CHECK(sm.applied());
  CHECK(sm.handle(worker_endpoint(1), done(1, 0, 60.0, 30)).empty());
}

TEST_CASE("step machine: complete-step policy - a worker lost after pushing everywhere contributes") {
  StepMachine sm = make_machine(2, WorkerLossPolicy::kCompleteStep);
  sm.begin_step(0, 0, work_for({0, 1}));
  sm.handle(server_endpoint(0), push(0, 0, 1, 30));
  sm.handle(server_endpoint(1), push(1, 0, 1, 30));
  CHECK(sm.on_member_lost(worker_endpoint(1), "worker 1 was lost").empty());  // before its report
  CHECK(sm.dropped().empty());
  sm.handle(server_endpoint(0), push(0, 0, 0, 10));
  sm.handle(server_endpoint(1), push(1, 0, 0, 10));
  CHECK(sm.handle(worker_endpoint(0), done(0, 0, 30.0, 10)).empty());
  CHECK(sm.phase() == StepPhase::kNorms);  // nobody dropped: the servers' own reports serve
  CHECK(sm.contributors() == std::vector<int32_t>{0, 1});
  CHECK(sm.loss() == 3.0);    // over the reports that came
  CHECK(sm.tokens() == 40);   // its tokens from its pushes
  // Its report, still in flight once the contributors are fixed, is ignored.
  CHECK(sm.handle(worker_endpoint(1), done(1, 0, 60.0, 30)).empty());
  CHECK(sm.loss() == 3.0);
}

TEST_CASE("step machine: complete-step policy - a worker lost during norms or commit changes nothing") {
  for (const bool commit_stage : {false, true}) {
    CAPTURE(commit_stage);
    StepMachine sm = make_machine(2, WorkerLossPolicy::kCompleteStep);
    gather_two(sm, 0);
    if (commit_stage) {
      sm.handle(server_endpoint(0), norm(0, 0, 1.0));
      sm.handle(server_endpoint(1), norm(1, 0, 1.0));
    }
    CHECK(sm.on_member_lost(worker_endpoint(0), "worker 0 was lost").empty());
    CHECK_FALSE(sm.failure());
    CHECK(sm.contributors() == std::vector<int32_t>{0, 1});
    if (!commit_stage) {
      sm.handle(server_endpoint(0), norm(0, 0, 1.0));
      const auto commit = sent_to_each<p::StepCommit>(
          sm.handle(server_endpoint(1), norm(1, 0, 1.0)), kTwoServers);
      CHECK(commit.workers == std::vector<int32_t>{0, 1});
    }
    sm.handle(server_endpoint(0), applied(0, 0));
    sm.handle(server_endpoint(1), applied(1, 0));
    CHECK(sm.applied());
    CHECK(sm.loss() == 90.0 / 40.0);
  }
}

TEST_CASE("step machine: complete-step policy - every worker lost before pushing fails the step") {
  StepMachine sm = make_machine(2, WorkerLossPolicy::kCompleteStep);
  sm.begin_step(0, 0, work_for({0, 1}));
  sm.handle(server_endpoint(0), push(0, 0, 0));
  CHECK(sm.on_member_lost(worker_endpoint(0), "worker 0 was lost").empty());
  CHECK_FALSE(sm.failure());
  CHECK(sm.on_member_lost(worker_endpoint(1), "worker 1 was lost").empty());
  REQUIRE(sm.failure());
  CHECK(sm.failure()->kind == StepFailure::Kind::kNoContributors);
}

TEST_CASE("step machine: complete-step policy - a loss between steps leaves the next step to the caller") {
  StepMachine sm = make_machine(2, WorkerLossPolicy::kCompleteStep);
  CHECK(sm.on_member_lost(worker_endpoint(1), "worker 1 was lost").empty());  // before any step
  gather_two(sm, 0);
  sm.handle(server_endpoint(0), norm(0, 0, 1.0));
  sm.handle(server_endpoint(1), norm(1, 0, 1.0));
  sm.handle(server_endpoint(0), applied(0, 0));
  sm.handle(server_endpoint(1), applied(1, 0));
  CHECK(sm.on_member_lost(worker_endpoint(1), "worker 1 was lost").empty());
  CHECK_FALSE(sm.failure());
  const auto begin = sm.begin_step(1, 1, work_for({0}));
  REQUIRE(begin.size() == 3);
  CHECK(begin[2].to == worker_endpoint(0));
}

namespace {

// A membership a test can change: joins and losses at will.
class TestMembership final : public net::Membership {
 public:
  net::Member join(net::Role role) { return add_member(role, "local", "", ""); }
};

// The step's work as the coordinator builds it: every worker member, in id order.
std::vector<WorkerWork> work_of(const net::Membership& m) {
  std::vector<WorkerWork> out;
  for (const auto& w : m.workers()) out.push_back({w.id, {w.id}});
  return out;
}

}  // namespace

TEST_CASE("step machine: a worker that joins mid-step takes part from the next step boundary") {
  TestMembership members;
  members.join(net::Role::kServer);
  members.join(net::Role::kServer);
  members.join(net::Role::kWorker);
  members.start();
  CHECK(members.take_events().size() == 3);
  StepMachine sm = make_machine(2);
  sm.begin_step(0, members.epoch(), work_of(members));
  sm.handle(server_endpoint(0), push(0, 0, 0));
  CHECK(members.join(net::Role::kWorker).endpoint == worker_endpoint(1));  // joins mid-step
  // The running step is not changed: it still waits only for worker 0.
  sm.handle(server_endpoint(1), push(1, 0, 0));
  CHECK(sm.handle(worker_endpoint(0), done(0, 0, 1.0, 10)).empty());
  CHECK(sm.contributors() == std::vector<int32_t>{0});
  sm.handle(server_endpoint(0), norm_of({0}, 0, 0, 1.0));
  sm.handle(server_endpoint(1), norm_of({0}, 1, 0, 1.0));
  sm.handle(server_endpoint(0), applied(0, 0));
  sm.handle(server_endpoint(1), applied(1, 0));
  REQUIRE(sm.applied());
  // At the boundary: the join is an event of epoch 1, and the next step includes the newcomer.
  const auto events = members.take_events();
  REQUIRE(events.size() == 1);
  CHECK(events[0].change == net::MembershipChange::kJoined);
  CHECK(events[0].epoch == 1);
  const auto begin = sm.begin_step(1, members.epoch(), work_of(members));
  REQUIRE(begin.size() == 4);  // StepWorkers to 2 servers, StepBegin to 2 workers
  CHECK(std::get<p::StepWorkers>(begin[0].message) == p::StepWorkers{1, 1, {0, 1}});
  CHECK(begin[3].to == worker_endpoint(1));
  CHECK(std::get<p::StepBegin>(begin[3].message).membership_epoch == 1);
  sm.handle(server_endpoint(0), push(0, 1, 0));
  sm.handle(server_endpoint(1), push(1, 1, 0));
  CHECK(sm.handle(worker_endpoint(0), done(0, 1, 1.0, 10)).empty());  // waits for worker 1
  sm.handle(server_endpoint(0), push(0, 1, 1));
  sm.handle(server_endpoint(1), push(1, 1, 1));
  CHECK(sm.handle(worker_endpoint(1), done(1, 1, 1.0, 10)).empty());
  CHECK(sm.contributors() == std::vector<int32_t>{0, 1});
  sm.handle(server_endpoint(0), norm(0, 1, 1.0));
  const auto commit =
      sent_to_each<p::StepCommit>(sm.handle(server_endpoint(1), norm(1, 1, 1.0)), kTwoServers);
  CHECK(commit.workers == std::vector<int32_t>{0, 1});
}

TEST_CASE("step machine: a norm report of an earlier attempt at the step is ignored") {
  // Step 3 begun again with worker 2 after workers 0 and 1 were dropped: server 0 had reduced
  // {0, 1} on its own before it learnt the new set.
  StepMachine sm = make_machine(1, WorkerLossPolicy::kCompleteStep);
  sm.begin_step(2, 0, work_for({2}));
  CHECK(sm.handle(server_endpoint(0), norm_of({0, 1}, 0, 2, 1.0)).empty());
  refused(sm, server_endpoint(0), norm_of({1, 2}, 0, 2, 1.0), "the step awaits [2]");
  sm.handle(server_endpoint(0), push(0, 2, 2));
  sm.handle(worker_endpoint(2), done(2, 2, 1.0, 10));
  CHECK_FALSE(sm.committed());
  const auto commit = sent_to_each<p::StepCommit>(
      sm.handle(server_endpoint(0), norm_of({2}, 0, 2, 4.0)), {server_endpoint(0)});
  CHECK(sm.committed());
  CHECK_FALSE(sm.applied());
  CHECK(commit.global_norm == 2.0);
  CHECK(commit.workers == std::vector<int32_t>{2});
}

TEST_CASE("step machine: a server's own norm report may arrive before the last push is known") {
  // Server 1's PushReceived for worker 1 and its NormReport travel in that order, but the two
  // servers' connections are independent: server 0's report can come before server 1's push.
  StepMachine sm = make_machine(2);
  sm.begin_step(0, 0, work_for({0, 1}));
  for (int32_t w : {0, 1}) sm.handle(server_endpoint(0), push(0, 0, w));
  CHECK(sm.handle(server_endpoint(0), norm(0, 0, 16.0)).empty());
  sm.handle(server_endpoint(1), push(1, 0, 0));
  sm.handle(worker_endpoint(0), done(0, 0, 1.0, 10));
  sm.handle(worker_endpoint(1), done(1, 0, 1.0, 10));
  CHECK(sm.phase() == StepPhase::kGathering);
  CHECK(sm.handle(server_endpoint(1), push(1, 0, 1)).empty());
  const auto commit =
      sent_to_each<p::StepCommit>(sm.handle(server_endpoint(1), norm(1, 0, 9.0)), kTwoServers);
  CHECK(commit.global_norm == 5.0);
}
