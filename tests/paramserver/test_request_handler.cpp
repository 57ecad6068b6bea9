// The server's aggregation and its request handler, driven message by message (no threads):
// token-weighted mean in worker-id order (independent of arrival order), the fp64 partial norm
// in fixed chunks (independent of the thread count), the step protocol (push → contributors →
// norm → commit → applied), pulls that wait for a version, and the refusals.
#include "common/error.hpp"
#include "common/proto/codec.hpp"
#include "paramserver/aggregator.hpp"
#include "paramserver/request_handler.hpp"

#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <random>
#include <span>
#include <string>

using namespace ptrain;
using net::coordinator_endpoint;
using net::worker_endpoint;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

template <class T>
const T& only(const std::vector<Outgoing>& out, const net::Endpoint& to) {
  REQUIRE(out.size() == 1);
  CHECK(out[0].to == to);
  REQUIRE(std::holds_alternative<T>(out[0].message));
  return std::get<T>(out[0].message);
}

// A ShardLoader that hands out fixed vectors whatever the LoadShard names (the real one,
// make_shard_loader, is tested in test_shard_loader.cpp).
ShardLoader fixed_state(std::vector<float> w, std::vector<float> m, std::vector<float> v) {
  return [w, m, v](const proto::LoadShard&) { return ShardState{w, m, v}; };
}

ServerOptions with_state(int32_t id, proto::KeyRange r, std::vector<float> w) {
  const size_t n = w.size();
  ServerOptions so{id, r, {}, {}};
  so.load_shard = fixed_state(std::move(w), std::vector<float>(n, 0.0f),
                              std::vector<float>(n, 0.0f));
  return so;
}

// The replies to a LoadShard: ShardLoaded to the coordinator first, then what waited for it.
std::vector<Outgoing> loaded(std::vector<Outgoing> out, int32_t id, int64_t version,
                             proto::KeyRange r) {
  REQUIRE(!out.empty());
  CHECK(out[0].to == coordinator_endpoint());
  REQUIRE(std::holds_alternative<proto::ShardLoaded>(out[0].message));
  const auto& l = std::get<proto::ShardLoaded>(out[0].message);
  CHECK(l.server_id == id);
  CHECK(l.version == version);
  CHECK(l.range == r);
  out.erase(out.begin());
  return out;
}

UpdateRule plain_rule(const proto::KeyRange& r) {
  return UpdateRule(AdamWOptions{0.9, 0.95, 1e-8, 0.0}, LrSchedule{1e-2, 1e-3, 0, 10},
                    {{r.begin, r.end, true}});
}

}  // namespace

TEST_CASE("paramserver: the token-weighted mean is (sum of G_w)/(sum of tokens) - whatever the arrival order") {
  const size_t n = 1000;
  const auto g0 = randn(n, 1), g1 = randn(n, 2), g2 = randn(n, 3);
  GradientAggregator a(n), b(n);
  CHECK(a.add(0, 30, g0));
  CHECK(a.add(1, 50, g1));
  CHECK(a.add(2, 20, g2));
  CHECK(b.add(2, 20, g2));
  CHECK(b.add(0, 30, g0));
  CHECK(b.add(1, 50, g1));
  CHECK_FALSE(b.add(1, 50, g1));  // a second push from the same worker
  std::vector<float> ma(n), mb(n), mc(n);
  CHECK(a.mean(std::vector<int32_t>{0, 1, 2}, ma) == 100);
  CHECK(b.mean(std::vector<int32_t>{2, 1, 0}, mb) == 100);
  CHECK(ma == mb);
  for (size_t i = 0; i < n; ++i) {
    CHECK(ma[i] == doctest::Approx((double(g0[i]) + g1[i] + g2[i]) / 100.0).epsilon(1e-6));
    const float folded = (g0[i] + g1[i]) + g2[i];  // exactly: fp32 left fold by worker id
    CHECK(ma[i] == static_cast<float>(double(folded) / 100.0));
  }
  // A subset (a worker left out of the contributor set): only its tokens count.
  CHECK(a.mean(std::vector<int32_t>{0, 2}, mc) == 50);
  CHECK(mc[7] == doctest::Approx((double(g0[7]) + g2[7]) / 50.0).epsilon(1e-6));
  // Zero tokens: a zero gradient, not a NaN.
  GradientAggregator z(3);
  z.add(0, 0, std::vector<float>(3, 0.0f));
  std::vector<float> mz(3, 1.0f);
  CHECK(z.mean(std::vector<int32_t>{0}, mz) == 0);
  CHECK(mz == std::vector<float>(3, 0.0f));
}

TEST_CASE("paramserver: the partial norm is fp64 in fixed chunks - finds the first non-finite") {
  const int64_t n = 3 * kNormChunk + 5;
  std::vector<float> half(static_cast<size_t>(n), 0.5f);
  const NormPartial p = partial_norm(half);
  CHECK(p.sum_squares == 0.25 * static_cast<double>(n));  // exact in fp64
  CHECK(p.first_nonfinite == -1);

  const auto g = randn(static_cast<size_t>(n), 9);
  omp_set_num_threads(1);
  const double one = partial_norm(g).sum_squares;
  omp_set_num_threads(2);
  const double two = partial_norm(g).sum_squares;
  CHECK(one == two);  // bitwise: chunking does not depend on threads
  double ref = 0;
  for (float x : g) ref += double(x) * x;
  CHECK(one == doctest::Approx(ref).epsilon(1e-12));

  auto bad = g;
  bad[static_cast<size_t>(2 * kNormChunk + 3)] = std::numeric_limits<float>::infinity();
  bad[static_cast<size_t>(kNormChunk + 1)] = std::numeric_limits<float>::quiet_NaN();
  CHECK(partial_norm(bad).first_nonfinite == kNormChunk + 1);
  CHECK(partial_norm(std::span<const float>()).sum_squares == 0.0);
}

TEST_CASE("paramserver: a whole step through the request handler") {
  const proto::KeyRange r{16, 48};
  const size_t n = static_cast<size_t>(r.size());
  const auto w0 = randn(n, 4);
  // The shard writer records what it was given: the state a checkpoint of that version holds.
  struct Written {
    std::string dir;
    int64_t version = -1;
    std::vector<float> w, m, v;
  };
  std::vector<Written> written;
  ServerOptions so = with_state(1, r, w0);
  so.write_shard = [&](const std::string& dir, int64_t version, std::span<const float> w,
                       std::span<const float> m, std::span<const float> v,
                       std::span<const float> /*outer_momentum: none under bsp*/) {
    written.push_back({dir, version, {w.begin(), w.end()}, {m.begin(), m.end()},
                       {v.begin(), v.end()}});
  };
  RequestHandler h(so, plain_rule(r));

  // A pull before the shard is loaded waits; LoadShard answers it after ShardLoaded.
  CHECK(h.handle(worker_endpoint(0), proto::PullRequest{5, 0, r}).empty());
  auto out = loaded(h.handle(coordinator_endpoint(), proto::LoadShard{0, 0, r, 7, ""}), 1, 0, r);
  const proto::PullReply reply = only<proto::PullReply>(out, worker_endpoint(0));
  CHECK(reply.request_id == 5);
  CHECK(reply.version == 0);
  CHECK(reply.weights == w0);

  // A sub-range pull; a pull of the next version waits for the commit.
  out = h.handle(worker_endpoint(1), proto::PullRequest{6, 0, {20, 24}});
  CHECK(only<proto::PullReply>(out, worker_endpoint(1)).weights ==
        std::vector<float>(w0.begin() + 4, w0.begin() + 8));
  CHECK(h.handle(worker_endpoint(1), proto::PullRequest{7, 1, r}).empty());

  const auto g0 = randn(n, 5), g1 = randn(n, 6);
  out = h.handle(worker_endpoint(1), proto::GradPush{0, 0, 1, 30, r, g1});
  CHECK(only<proto::PushReceived>(out, coordinator_endpoint()) ==
        proto::PushReceived{1, 0, 1, 30});
  out = h.handle(worker_endpoint(0), proto::GradPush{0, 0, 0, 10, r, g0});
  CHECK(only<proto::PushReceived>(out, coordinator_endpoint()).worker_id == 0);

  out = h.handle(coordinator_endpoint(), proto::StepContributors{0, 0, {1, 0}});
  const proto::NormReport norm = only<proto::NormReport>(out, coordinator_endpoint());
  CHECK(norm.server_id == 1);
  CHECK(norm.tokens == 40);
  CHECK(norm.first_nonfinite == -1);
  double ss = 0;
  std::vector<float> mean(n);
  for (size_t i = 0; i < n; ++i) {
    const float folded = g0[i] + g1[i];  // fp32 fold in worker-id order
    mean[i] = static_cast<float>(double(folded) / 40.0);
    ss += double(mean[i]) * mean[i];
  }
  CHECK(norm.sum_squares == doctest::Approx(ss).epsilon(1e-12));

  out = h.handle(coordinator_endpoint(), proto::StepCommit{0, {0, 1}, 1.0, 0.5f});
  REQUIRE(out.size() == 2);
  CHECK(out[0].to == coordinator_endpoint());
  const auto& applied = std::get<proto::StepApplied>(out[0].message);
  CHECK(applied.version == 1);
  CHECK(applied.lr == doctest::Approx(1e-2));
  const proto::PullReply later = std::get<proto::PullReply>(out[1].message);
  CHECK(out[1].to == worker_endpoint(1));
  CHECK(later.request_id == 7);
  CHECK(later.version == 1);
  // The weights moved by AdamW's first step: -lr·sign(clipped mean) (no decay in this rule).
  for (size_t i = 0; i < n; ++i) {
    const double g = 0.5 * mean[i];
    CHECK(later.weights[i] ==
          doctest::Approx(w0[i] - 1e-2 * g / (std::fabs(g) + 1e-8)).epsilon(1e-5));
  }
  CHECK(h.store().version() == 1);

  // A checkpoint shard of the current version: the writer gets the weights and moments after the
  // step.
  out = h.handle(coordinator_endpoint(), proto::CheckpointShard{3, 1, "/run/step-1.tmp"});
  const auto& ack = only<proto::CheckpointShardWritten>(out, coordinator_endpoint());
  CHECK(ack.request_id == 3);
  CHECK(ack.version == 1);
  CHECK(ack.range == r);
  REQUIRE(written.size() == 1);
  CHECK(written[0].dir == "/run/step-1.tmp");
  CHECK(written[0].version == 1);
  CHECK(written[0].w == std::vector<float>(later.weights.begin(), later.weights.end()));
  REQUIRE(written[0].m.size() == n);
  REQUIRE(written[0].v.size() == n);
  CHECK(written[0].m[0] == doctest::Approx(0.1 * 0.5 * mean[0]).epsilon(1e-5));
  CHECK(written[0].v[0] == doctest::Approx(0.05 * 0.25 * mean[0] * mean[0]).epsilon(1e-5));
  // A checkpoint of a future version waits for it: nothing is written until the step that
  // produces that version is committed, then the shard follows StepApplied.
  CHECK(h.handle(coordinator_endpoint(), proto::CheckpointShard{4, 2, "/run/step-2.tmp"}).empty());
  CHECK(written.size() == 1);
  CHECK(only<proto::PushReceived>(h.handle(worker_endpoint(0), proto::GradPush{1, 0, 0, 10, r, g0}),
                                  coordinator_endpoint())
            .step == 1);
  only<proto::NormReport>(h.handle(coordinator_endpoint(), proto::StepContributors{1, 0, {0}}),
                          coordinator_endpoint());
  out = h.handle(coordinator_endpoint(), proto::StepCommit{1, {0}, 1.0, 1.0f});
  REQUIRE(out.size() == 2);
  CHECK(std::get<proto::StepApplied>(out[0].message).version == 2);
  CHECK(out[1].to == coordinator_endpoint());
  const auto& ack2 = std::get<proto::CheckpointShardWritten>(out[1].message);
  CHECK(ack2.request_id == 4);
  CHECK(ack2.version == 2);
  REQUIRE(written.size() == 2);
  CHECK(written[1].dir == "/run/step-2.tmp");
  CHECK(written[1].version == 2);
  CHECK(written[1].w != written[0].w);

  CHECK_FALSE(h.stopped());
  h.handle(coordinator_endpoint(), proto::Shutdown{"done"});
  CHECK(h.stopped());
}

TEST_CASE("paramserver: refusals and protocol violations") {
  const proto::KeyRange r{0, 8};
  const size_t n = 8;
  RequestHandler h(with_state(0, r, std::vector<float>(n, 1.0f)), plain_rule(r));
  loaded(h.handle(coordinator_endpoint(), proto::LoadShard{4, 2, r, 0, "ckpt.h5"}), 0, 4, r);
  const std::vector<float> g(n, 0.1f);

  auto failure = [](const std::vector<Outgoing>& out, const net::Endpoint& to) {
    return only<proto::Failure>(out, to).message;
  };
  CHECK(failure(h.handle(worker_endpoint(0), proto::GradPush{4, 1, 0, 8, r, g}),
                worker_endpoint(0))
            .find("stale push") != std::string::npos);
  // A late push (a step already applied without that worker) is ignored, not refused; a push
  // for a future step is refused.
  CHECK(h.handle(worker_endpoint(0), proto::GradPush{3, 2, 0, 8, r, g}).empty());
  CHECK(failure(h.handle(worker_endpoint(0), proto::GradPush{5, 2, 0, 8, r, g}),
                worker_endpoint(0))
            .find("step 5 refused") != std::string::npos);
  CHECK(failure(h.handle(worker_endpoint(0), proto::GradPush{4, 2, 0, 4, {4, 12}, g}),
                worker_endpoint(0))
            .find("covers [4, 12), outside the shard") != std::string::npos);
  CHECK(failure(h.handle(worker_endpoint(2), proto::PullRequest{1, 4, {4, 12}}),
                worker_endpoint(2))
            .find("outside the shard") != std::string::npos);
  h.handle(worker_endpoint(0), proto::GradPush{4, 2, 0, 8, r, g});
  CHECK(failure(h.handle(worker_endpoint(0), proto::GradPush{4, 2, 0, 8, r, g}),
                worker_endpoint(0))
            .find("second push") != std::string::npos);

  // Coordinator mistakes throw.
  CHECK_THROWS_WITH_AS(h.handle(coordinator_endpoint(), proto::StepCommit{4, {0}, 1, 1}),
                       doctest::Contains("no step is prepared"), proto::ProtocolError);
  CHECK_THROWS_WITH_AS(h.handle(coordinator_endpoint(), proto::StepContributors{4, 2, {0, 1}}),
                       doctest::Contains("worker 1 as a contributor"), proto::ProtocolError);
  h.handle(coordinator_endpoint(), proto::StepContributors{4, 2, {0}});
  CHECK_THROWS_WITH_AS(h.handle(coordinator_endpoint(), proto::StepCommit{4, {0, 1}, 1, 1}),
                       doctest::Contains("names contributors"), proto::ProtocolError);
  CHECK_THROWS_WITH_AS(h.handle(coordinator_endpoint(), proto::LoadShard{0, 0, {0, 4}, 0, ""}),
                       doctest::Contains("LoadShard for [0, 4)"), proto::ProtocolError);
  CHECK_THROWS_AS(h.handle(worker_endpoint(0), proto::StepBegin{}), proto::ProtocolError);

  // A non-finite gradient is reported with its flat index.
  RequestHandler h2(with_state(1, {100, 104}, std::vector<float>(4, 0.f)), plain_rule({100, 104}));
  h2.handle(coordinator_endpoint(), proto::LoadShard{0, 0, {100, 104}, 0, ""});
  h2.handle(worker_endpoint(0),
            proto::GradPush{0, 0, 0, 1, {100, 104},
                            {0, 0, std::numeric_limits<float>::quiet_NaN(), 0}});
  auto out = h2.handle(coordinator_endpoint(), proto::StepContributors{0, 0, {0}});
  CHECK(only<proto::NormReport>(out, coordinator_endpoint()).first_nonfinite == 102);
}

TEST_CASE("paramserver: CheckpointShard calls the shard writer at that version and acks - waits for a future one") {
  const proto::KeyRange r{10, 14};
  int calls = 0;
  std::string dir_seen;
  int64_t version_seen = -1;
  std::vector<float> w_seen;
  ServerOptions so;
  so.server_id = 1;
  so.range = r;
  so.write_shard = [&](const std::string& dir, int64_t version, std::span<const float> w,
                       std::span<const float> m, std::span<const float> v,
                       std::span<const float> /*outer_momentum: none under bsp*/) {
    ++calls;
    dir_seen = dir;
    version_seen = version;
    w_seen.assign(w.begin(), w.end());
    CHECK(m.size() == 4);
    CHECK(v.size() == 4);
    if (dir == "/fail") throw IoError("disk full");
  };
  so.load_shard = fixed_state({1, 2, 3, 4}, {0, 0, 0, 0}, {0, 0, 0, 0});
  RequestHandler h(so, plain_rule(r));
  // Asked before the shard is loaded: waits, then is served by the load.
  CHECK(h.handle(coordinator_endpoint(), proto::CheckpointShard{5, 3, "/tmp/x.tmp"}).empty());
  auto out = loaded(h.handle(coordinator_endpoint(), proto::LoadShard{3, 0, r, 0, "c.h5"}), 1, 3, r);
  const auto& ack = only<proto::CheckpointShardWritten>(out, coordinator_endpoint());
  CHECK(ack.request_id == 5);
  CHECK(ack.server_id == 1);
  CHECK(ack.version == 3);
  CHECK(ack.range == r);
  CHECK(calls == 1);
  CHECK(dir_seen == "/tmp/x.tmp");
  CHECK(version_seen == 3);
  CHECK(w_seen == std::vector<float>{1, 2, 3, 4});
  // An older version is refused; a writer that fails is answered with a Failure naming the shard.
  out = h.handle(coordinator_endpoint(), proto::CheckpointShard{6, 2, "/tmp/y.tmp"});
  CHECK(only<proto::Failure>(out, coordinator_endpoint()).message.find("version 2") !=
        std::string::npos);
  out = h.handle(coordinator_endpoint(), proto::CheckpointShard{7, 3, "/fail"});
  const auto& f = only<proto::Failure>(out, coordinator_endpoint());
  CHECK(f.message.find("checkpoint shard 1") != std::string::npos);
  CHECK(f.message.find("disk full") != std::string::npos);
}

TEST_CASE("paramserver: LoadShard passes the seed or checkpoint to the loader - a failing loader is a Failure naming the file") {
  const proto::KeyRange r{8, 12};
  std::vector<proto::LoadShard> seen;
  ServerOptions so{2, r, {}, {}};
  so.load_shard = [&](const proto::LoadShard& m) {
    seen.push_back(m);
    if (m.checkpoint == "/bad.h5") throw CheckpointError("/bad.h5: tensor x fails its checksum");
    return ShardState{std::vector<float>(4, 0.5f), std::vector<float>(4, 0.0f),
                      std::vector<float>(4, 0.0f)};
  };
  RequestHandler h(so, plain_rule(r));
  // A pull waits while the load fails; the Failure goes to the coordinator with the loader's code.
  CHECK(h.handle(worker_endpoint(0), proto::PullRequest{1, 6, r}).empty());
  auto out = h.handle(coordinator_endpoint(), proto::LoadShard{6, 1, r, 99, "/bad.h5"});
  const auto& f = only<proto::Failure>(out, coordinator_endpoint());
  CHECK(f.code == static_cast<int32_t>(ExitCode::kCheckpoint));
  CHECK(f.message.find("server 2") != std::string::npos);
  CHECK(f.message.find("/bad.h5") != std::string::npos);
  CHECK(f.message.find("fails its checksum") != std::string::npos);
  CHECK_FALSE(h.store().loaded());
  // A good load: the loader saw both messages as sent; the waiting pull is answered.
  out = loaded(h.handle(coordinator_endpoint(), proto::LoadShard{6, 1, r, 99, "/good.h5"}), 2, 6,
               r);
  REQUIRE(seen.size() == 2);
  CHECK(seen[1] == proto::LoadShard{6, 1, r, 99, "/good.h5"});
  CHECK(only<proto::PullReply>(out, worker_endpoint(0)).weights == std::vector<float>(4, 0.5f));
  // No loader at all: refused, not ignored.
  RequestHandler bare(ServerOptions{0, r, {}, {}}, plain_rule(r));
  CHECK(only<proto::Failure>(bare.handle(coordinator_endpoint(), proto::LoadShard{0, 0, r, 1, ""}),
                             coordinator_endpoint())
            .message.find("no shard loader") != std::string::npos);
}

TEST_CASE("paramserver: gradient slots are reused across steps - a push already in its slot is "
          "not copied") {
  GradientAggregator a(4);
  CHECK(a.free_slots().empty());  // no worker known yet
  CHECK(a.add(3, 2, std::vector<float>{1, 2, 3, 4}));  // first push: copied into a new slot
  CHECK(a.free_slots().empty());  // filled
  a.clear();
  auto free = a.free_slots();
  REQUIRE(free.size() == 1);
  CHECK(free[0].first == 3);
  const std::span<float> slot = free[0].second;
  REQUIRE(slot.size() == 4);
  // A transport wrote the next push straight into the slot; add() is handed the slot itself.
  const float next[4] = {8, 6, 4, 2};
  std::copy(next, next + 4, slot.begin());
  CHECK(a.add(3, 2, slot));
  CHECK(a.has(3));
  CHECK_FALSE(a.add(3, 2, slot));  // still one push per step
  std::vector<float> mean(4);
  CHECK(a.mean(std::vector<int32_t>{3}, mean) == 2);
  CHECK(mean == std::vector<float>{4, 3, 2, 1});
  a.clear();
  CHECK(a.free_slots()[0].second.data() == slot.data());  // the same memory, step after step
}

TEST_CASE("paramserver: the handler offers each known worker's slot for the current step only") {
  const proto::KeyRange r{0, 8};
  RequestHandler h(with_state(0, r, randn(8, 1)), plain_rule(r));
  CHECK(h.gradient_slots().empty());  // not loaded
  h.handle(coordinator_endpoint(), proto::LoadShard{0, 0, r, 1, ""});
  CHECK(h.gradient_slots().empty());  // no worker has pushed yet: no slot exists
  h.handle(worker_endpoint(1), proto::GradPush{0, 0, 1, 4, r, randn(8, 2)});
  CHECK(h.gradient_slots().empty());  // its slot holds this step's push
  h.handle(coordinator_endpoint(), proto::StepContributors{0, 0, {1}});
  CHECK(h.gradient_slots().empty());  // reducing: no push is accepted
  h.handle(coordinator_endpoint(), proto::StepCommit{0, {1}, 1.0, 1.0f});
  const auto slots = h.gradient_slots();
  REQUIRE(slots.size() == 1);
  CHECK(slots[0].worker == 1);
  CHECK(slots[0].step == 1);
  REQUIRE(slots[0].slot.size() == 8);
  // A push received in place (its floats are the slot) is accepted for step 1.
  const auto g = randn(8, 3);
  std::copy(g.begin(), g.end(), slots[0].slot.begin());
  const auto out = h.handle(
      worker_endpoint(1), proto::GradPush{1, 0, 1, 4, r, proto::FloatRange::borrow(slots[0].slot)});
  CHECK(only<proto::PushReceived>(out, coordinator_endpoint()).step == 1);
}

TEST_CASE("paramserver: StepWorkers - the norm goes out with the last push - StepContributors replaces it") {
  const proto::KeyRange r{0, 16};
  const size_t n = 16;
  const auto w0 = randn(n, 3);
  const auto g0 = randn(n, 5), g1 = randn(n, 6), g2 = randn(n, 7);

  // The reference: the explicit round (StepContributors) on a handler that never got StepWorkers.
  RequestHandler ref(with_state(0, r, w0), plain_rule(r));
  loaded(ref.handle(coordinator_endpoint(), proto::LoadShard{0, 0, r, 7, ""}), 0, 0, r);
  ref.handle(worker_endpoint(0), proto::GradPush{0, 0, 0, 10, r, g0});
  ref.handle(worker_endpoint(1), proto::GradPush{0, 0, 1, 30, r, g1});
  const proto::NormReport want = only<proto::NormReport>(
      ref.handle(coordinator_endpoint(), proto::StepContributors{0, 0, {0, 1}}),
      coordinator_endpoint());
  CHECK(want.workers == std::vector<int32_t>{0, 1});

  RequestHandler h(with_state(0, r, w0), plain_rule(r));
  loaded(h.handle(coordinator_endpoint(), proto::LoadShard{0, 0, r, 7, ""}), 0, 0, r);
  CHECK(h.handle(coordinator_endpoint(), proto::StepWorkers{0, 0, {1, 0}}).empty());
  auto out = h.handle(worker_endpoint(1), proto::GradPush{0, 0, 1, 30, r, g1});
  CHECK(only<proto::PushReceived>(out, coordinator_endpoint()).worker_id == 1);
  // The last push of the set: PushReceived, then the server's own NormReport — bitwise the
  // explicit round's.
  out = h.handle(worker_endpoint(0), proto::GradPush{0, 0, 0, 10, r, g0});
  REQUIRE(out.size() == 2);
  CHECK(std::get<proto::PushReceived>(out[0].message).worker_id == 0);
  CHECK(out[1].to == coordinator_endpoint());
  CHECK(std::get<proto::NormReport>(out[1].message) == want);
  // A push after the reduction (a worker not in the set) is ignored, not reduced.
  CHECK(h.handle(worker_endpoint(2), proto::GradPush{0, 0, 2, 5, r, g2}).empty());
  // A worker was dropped elsewhere: the coordinator fixes {1}; the server reduces again.
  const proto::NormReport only1 = only<proto::NormReport>(
      h.handle(coordinator_endpoint(), proto::StepContributors{0, 0, {1}}), coordinator_endpoint());
  CHECK(only1.workers == std::vector<int32_t>{1});
  CHECK(only1.tokens == 30);
  CHECK(only1.sum_squares != want.sum_squares);
  CHECK_THROWS_WITH_AS(h.handle(coordinator_endpoint(), proto::StepCommit{0, {0, 1}, 1, 1}),
                       doctest::Contains("names contributors"), proto::ProtocolError);
  out = h.handle(coordinator_endpoint(), proto::StepCommit{0, {1}, 1, 1});
  CHECK(only<proto::StepApplied>(out, coordinator_endpoint()).version == 1);

  // The step begun again with another set: a reduction for the first set is void, the pushes
  // stay; with every push of the new set in, StepWorkers itself answers with the norm.
  h.handle(worker_endpoint(0), proto::GradPush{1, 0, 0, 10, r, g0});
  h.handle(worker_endpoint(1), proto::GradPush{1, 0, 1, 30, r, g1});
  CHECK(only<proto::NormReport>(h.handle(coordinator_endpoint(), proto::StepWorkers{1, 0, {0}}),
                                coordinator_endpoint())
            .workers == std::vector<int32_t>{0});
  const proto::NormReport again = only<proto::NormReport>(
      h.handle(coordinator_endpoint(), proto::StepWorkers{1, 1, {1}}), coordinator_endpoint());
  CHECK(again.workers == std::vector<int32_t>{1});
  CHECK(again.tokens == 30);

  // Coordinator mistakes throw.
  CHECK_THROWS_WITH_AS(h.handle(coordinator_endpoint(), proto::StepWorkers{5, 1, {0}}),
                       doctest::Contains("StepWorkers for step 5 while at version 1"),
                       proto::ProtocolError);
  CHECK_THROWS_WITH_AS(h.handle(coordinator_endpoint(), proto::StepWorkers{1, 1, {}}),
                       doctest::Contains("names no worker"), proto::ProtocolError);
}
