// The worker loop against real parameter-server threads, with the test playing the coordinator
// over the in-process transport: pull from two servers → forward/backward over micro-batches →
// push each server its slice as token sums → WorkerStepDone. The pushed gradient equals the
// model's own gradient of those windows (the same micro-batch fold), the reported loss and token
// count are the model's, and a bad window is reported to the coordinator as a Failure that names
// the token file. Validation: EvalBegin → EvalDone with the model's loss sum of each val batch.
// The servers start from LoadShard{seed} (their own slices of the initialisation).
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/net/inproc_transport.hpp"
#include "common/tensor/gpt_init.hpp"
#include "support/job_test_util.hpp"
#include "paramserver/aggregator.hpp"
#include "paramserver/param_server.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/model/gpt_state.hpp"
#include "worker/batch_loader.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"
#include "worker/ps_client.hpp"
#include "worker/worker.hpp"

#include <doctest/doctest.h>

#include <thread>

using namespace ptrain;
using namespace ptrain::testing;
using namespace std::chrono_literals;

namespace {

// Two servers and one worker as threads; the test thread is the coordinator.
struct Rig {
  ParamLayout layout{ModelDims{257, 260, 12, 2, 2, 16}};
  TempDir dir{"worker-loop"};
  std::string train = dir / "train.tok";
  std::string val = dir / "val.tok";
  std::shared_ptr<net::InprocFabric> fabric = std::make_shared<net::InprocFabric>();
  net::InprocTransport coord{net::coordinator_endpoint(), fabric};
  std::vector<proto::KeyRange> ranges;
  std::vector<std::thread> threads;
  std::vector<std::string> errors;
  std::mutex mu;

  explicit Rig(int64_t micro_batch, bool leased = false) {
    write_corpus(train, 2000, 3);
    write_corpus(val, 12 * 9 + 5, 4);  // 9 complete windows of T + 1 = 13 tokens
    for (const auto& [b, e] : layout.shard_ranges(2)) ranges.push_back({b, e});
    for (int32_t k = 0; k < 2; ++k) {
      ParamServerOptions so;
      so.server.server_id = k;
      so.server.range = ranges[static_cast<size_t>(k)];
      so.server.load_shard = make_shard_loader(layout, so.server.range);
      so.poll = 50ms;
      UpdateRule rule(AdamWOptions{}, LrSchedule{1e-3, 1e-4, 0, 10},
                      decay_segments(layout, so.server.range));
      threads.emplace_back([this, so, rule]() mutable {
        guard([&] {
          net::InprocTransport t(net::server_endpoint(so.server.server_id), fabric);
          run_param_server(so, std::move(rule), t);
        });
      });
    }
    WorkerOptions wo;
    wo.worker_id = 0;
    wo.train_path = train;
    wo.val_path = val;
    wo.micro_batch = micro_batch;
    wo.threads = 1;
    wo.timeout = 30s;
    wo.leased = leased;
    threads.emplace_back([this, wo] {
      guard([&] {
        net::InprocTransport t(net::worker_endpoint(0), fabric);
        run_worker(wo, layout, ranges, t);
      });
    });
  }
  template <class F>
  void guard(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      std::lock_guard lock(mu);
      errors.push_back(e.what());
    }
  }
  ~Rig() {
    fabric->close("test over");
    for (auto& t : threads) t.join();
  }
  template <class T>
  T expect(const std::string& what) {
    auto env = coord.receive(30s);
    REQUIRE_MESSAGE(env, "nothing arrived while waiting for " << what);
    if (!std::holds_alternative<T>(env->message)) {
      FAIL("expected " << what << ", got " << proto::type_name(proto::type_of(env->message))
                       << " from " << env->from.str());
    }
    return std::get<T>(env->message);
  }
  // What one step sends the coordinator: both servers' PushReceived and the worker's report.
  struct StepReplies {
    std::vector<proto::PushReceived> pushes;
    proto::WorkerStepDone done;
  };
  StepReplies step_replies() {
    StepReplies r;
    for (int got = 0; got < 3; ++got) {
      auto env = coord.receive(30s);
      REQUIRE(env);
      if (auto* p = std::get_if<proto::PushReceived>(&env->message)) {
        r.pushes.push_back(*p);
      } else {
        REQUIRE(std::holds_alternative<proto::WorkerStepDone>(env->message));
        r.done = std::get<proto::WorkerStepDone>(env->message);
      }
    }
    return r;
  }
  // Both servers initialise their slices from `seed` (as init_gpt_params would the whole vector).
  void load(uint64_t seed) {
    for (int32_t k = 0; k < 2; ++k) {
      coord.send(net::server_endpoint(k),
                 proto::LoadShard{0, 0, ranges[static_cast<size_t>(k)], seed, ""});
    }
    for (int32_t k = 0; k < 2; ++k) expect<proto::ShardLoaded>("a server's ShardLoaded");
  }
  void shutdown() {
    for (int32_t k = 0; k < 2; ++k) coord.send(net::server_endpoint(k), proto::Shutdown{"end"});
    coord.send(net::worker_endpoint(0), proto::Shutdown{"end"});
    for (auto& t : threads) t.join();
    threads.clear();
  }
};

}  // namespace

TEST_CASE("worker loop: one step pushes the model's token-sum gradient to each server") {
  Rig rig(/*micro_batch=*/2);
  const auto n = static_cast<size_t>(rig.layout.total());
  std::vector<float> params(n);
  init_gpt_params(rig.layout, 77, params);
  rig.load(77);
  const std::vector<int64_t> windows{3, 7, 1, 50, 20};
  rig.coord.send(net::worker_endpoint(0), proto::StepBegin{0, 0, windows});

  const auto [pushes, done] = rig.step_replies();
  CHECK(pushes.size() == 2);
  for (const auto& p : pushes) {
    CHECK(p.worker_id == 0);
    CHECK(p.step == 0);
    CHECK(p.tokens == 5 * 12);
  }
  CHECK(done.tokens == 5 * 12);

  // The same windows through the model directly: micro-batches {3,7} {1,50} {20}, folded in fp32.
  // Each micro-batch's gradient is downloaded on its own (a fresh sum) and folded on the host.
  auto backend = make_cpu_backend(1);
  Gpt gpt(rig.layout, *backend, 2);
  GptState state(rig.layout, *backend);
  state.upload_params(params);
  const TokenFile file = TokenFile::open(rig.train);
  BatchLoader loader(file, 12);
  std::vector<float> grads(n, 0.0f), mb(n);
  std::vector<int32_t> toks;
  LossSum want;
  for (const auto& [b, e] : micro_batches(5, 2)) {
    loader.load(std::span<const int64_t>(windows.data() + b, static_cast<size_t>(e - b)), toks);
    state.zero_grads();
    const LossSum ls = gpt.forward_backward(state, toks, e - b, 12, 1.0f);
    state.download_grads(mb);
    for (size_t i = 0; i < n; ++i) grads[i] += mb[i];
    want.loss_sum += ls.loss_sum;
    want.tokens += ls.tokens;
  }
  CHECK(done.loss_sum == want.loss_sum);
  CHECK(done.tokens == want.tokens);

  // Each server's norm report is the norm of its slice of grads / tokens.
  for (int32_t k = 0; k < 2; ++k) {
    rig.coord.send(net::server_endpoint(k), proto::StepContributors{0, 0, {0}});
  }
  for (int got = 0; got < 2; ++got) {
    const auto norm = rig.expect<proto::NormReport>("a norm report");
    const auto& r = rig.ranges[static_cast<size_t>(norm.server_id)];
    std::vector<float> mean(static_cast<size_t>(r.size()));
    for (int64_t i = r.begin; i < r.end; ++i) {
      mean[static_cast<size_t>(i - r.begin)] =
          static_cast<float>(double(grads[static_cast<size_t>(i)]) / double(want.tokens));
    }
    CHECK(norm.sum_squares == partial_norm(mean).sum_squares);  // bitwise
    CHECK(norm.tokens == want.tokens);
  }
  // Commit; a pull of version 1 (through a PsClient) assembles both slices.
  for (int32_t k = 0; k < 2; ++k) {
    rig.coord.send(net::server_endpoint(k), proto::StepCommit{0, {0}, 1.0, 1.0f});
  }
  PsClient client(rig.coord, rig.ranges);
  std::vector<float> after(n);
  const auto ticket = client.pull(1, after);
  client.wait(ticket, 30s);
  int applied = 0;
  while (auto env = client.next_other(10ms)) {
    applied += std::holds_alternative<proto::StepApplied>(env->message);
  }
  CHECK(applied == 2);
  CHECK(after != params);
  // A tied embedding element that had a gradient moved by about lr (AdamW's first step).
  const auto wte = static_cast<size_t>(rig.layout.wte() + 32 * 16);
  CHECK(std::fabs(after[wte] - params[wte]) == doctest::Approx(1e-3).epsilon(0.01));
  rig.shutdown();
  CHECK(rig.errors.empty());
}

TEST_CASE("worker loop: a bad window is reported to the coordinator - naming the file") {
  Rig rig(4);
  rig.load(1);
  rig.coord.send(net::worker_endpoint(0), proto::StepBegin{0, 0, {1, 1000000}});
  const auto f = rig.expect<proto::Failure>("the worker's failure");
  CHECK(f.code == static_cast<int32_t>(ExitCode::kData));
  CHECK(f.message.find(rig.train) != std::string::npos);
  CHECK(f.message.find("window 1000000") != std::string::npos);
}

TEST_CASE("worker loop: servers already past the step - the worker reports it empty - not a hang") {
  Rig rig(4);
  // The servers hold version 5: step 0 closed without this worker (it was late). It computes
  // nothing, pushes nothing, and reports step 0 with no tokens, so the coordinator frees it.
  for (int32_t k = 0; k < 2; ++k) {
    rig.coord.send(net::server_endpoint(k),
                   proto::LoadShard{5, 0, rig.ranges[static_cast<size_t>(k)], 3, ""});
  }
  for (int32_t k = 0; k < 2; ++k) rig.expect<proto::ShardLoaded>("a server's ShardLoaded");
  rig.coord.send(net::worker_endpoint(0), proto::StepBegin{0, 0, {1}});
  const auto d = rig.expect<proto::WorkerStepDone>("the worker's empty report");
  CHECK(d.step == 0);
  CHECK(d.tokens == 0);
  CHECK(d.loss_sum == 0.0);
}

TEST_CASE("worker loop: EvalBegin answers the forward loss of each batch of its val windows") {
  Rig rig(/*micro_batch=*/3);
  const auto n = static_cast<size_t>(rig.layout.total());
  std::vector<float> params(n);
  init_gpt_params(rig.layout, 5, params);
  rig.load(5);
  // Windows [3, 9) of val.tok in batches of 3: {3,4,5} {6,7,8}.
  rig.coord.send(net::worker_endpoint(0), proto::EvalBegin{42, 0, 3, 9, 3});
  const auto done = rig.expect<proto::EvalDone>("the worker's EvalDone");
  CHECK(done.request_id == 42);
  CHECK(done.worker_id == 0);
  CHECK(done.version == 0);
  CHECK(done.window_begin == 3);
  REQUIRE(done.loss_sums.size() == 2);
  REQUIRE(done.tokens.size() == 2);

  auto backend = make_cpu_backend(1);
  Gpt gpt(rig.layout, *backend, 3);
  GptState state(rig.layout, *backend);
  state.upload_params(params);
  const TokenFile file = TokenFile::open(rig.val);
  BatchLoader loader(file, 12);
  std::vector<int32_t> toks;
  for (int64_t k = 0; k < 2; ++k) {
    const std::vector<int64_t> ids{3 + 3 * k, 4 + 3 * k, 5 + 3 * k};
    loader.load(ids, toks);
    const LossSum ls = gpt.forward_loss(state, toks, 3, 12);
    CHECK(done.loss_sums[static_cast<size_t>(k)] == ls.loss_sum);  // bitwise
    CHECK(done.tokens[static_cast<size_t>(k)] == 3 * 12);
  }
  // A short last batch: windows [6, 8) in batches of 2 = one batch of 2.
  rig.coord.send(net::worker_endpoint(0), proto::EvalBegin{43, 0, 6, 8, 2});
  const auto last = rig.expect<proto::EvalDone>("the worker's second EvalDone");
  REQUIRE(last.loss_sums.size() == 1);
  CHECK(last.tokens[0] == 2 * 12);
  // A batch larger than the worker's micro-batch (its model's capacity) is a protocol error.
  rig.coord.send(net::worker_endpoint(0), proto::EvalBegin{44, 0, 0, 8, 4});
  const auto f = rig.expect<proto::Failure>("the worker's failure");
  CHECK(f.message.find("batches of 4") != std::string::npos);
}

TEST_CASE("worker loop: EvalBegin past the end of data.val fails naming the file") {
  Rig rig(4);
  rig.load(2);
  rig.coord.send(net::worker_endpoint(0), proto::EvalBegin{1, 0, 8, 12, 4});
  const auto f = rig.expect<proto::Failure>("the worker's failure");
  CHECK(f.code == static_cast<int32_t>(ExitCode::kData));
  CHECK(f.message.find(rig.val) != std::string::npos);
}

// cluster.sync ssp / async: a lease is computed at once and announced (PushReady); its push waits
// for the StepBegin that names the same windows. A message out of that order is a protocol error
// the worker reports to the coordinator, naming the lease.
TEST_CASE("worker loop: a lease is computed - PushReady - then pushed at its StepBegin") {
  Rig rig(2, /*leased=*/true);
  rig.load(5);
  const std::vector<int64_t> windows{3, 7, 1};
  rig.coord.send(net::worker_endpoint(0), proto::LeaseGrant{4, 0, 0, windows});
  const auto ready = rig.expect<proto::PushReady>("the worker's PushReady");
  CHECK(ready.worker_id == 0);
  CHECK(ready.lease_id == 4);
  CHECK(ready.base_version == 0);
  rig.coord.send(net::worker_endpoint(0), proto::StepBegin{0, 0, windows});
  const auto [pushes, done] = rig.step_replies();
  CHECK(pushes.size() == 2);
  for (const auto& p : pushes) CHECK(p.tokens == 3 * 12);
  CHECK(done.step == 0);
  CHECK(done.tokens == 3 * 12);
  rig.shutdown();
  CHECK(rig.errors.empty());
}

TEST_CASE("worker loop: leases out of order are refused naming the lease - a bsp worker refuses a lease") {
  const std::vector<int64_t> windows{3, 7};
  auto refused = [](Rig& rig, const std::string& want) {
    const auto f = rig.expect<proto::Failure>("the worker's failure");
    CHECK(f.code == static_cast<int32_t>(ExitCode::kIo));  // a protocol error
    CHECK_MESSAGE(f.message.find(want) != std::string::npos, f.message);
  };
  SUBCASE("a second lease while one waits for its step") {
    Rig rig(2, true);
    rig.load(5);
    rig.coord.send(net::worker_endpoint(0), proto::LeaseGrant{1, 0, 0, windows});
    rig.expect<proto::PushReady>("PushReady");
    rig.coord.send(net::worker_endpoint(0), proto::LeaseGrant{2, 0, 0, windows});
    refused(rig, "unexpected LeaseGrant 2 from coordinator (lease 1 is computed and waits for its step)");
  }
  SUBCASE("a StepBegin naming other windows than the lease's") {
    Rig rig(2, true);
    rig.load(5);
    rig.coord.send(net::worker_endpoint(0), proto::LeaseGrant{1, 0, 0, windows});
    rig.expect<proto::PushReady>("PushReady");
    rig.coord.send(net::worker_endpoint(0), proto::StepBegin{0, 0, {3, 8}});
    refused(rig, "StepBegin of step 1 names 2 window(s) that are not those of lease 1");
  }
  SUBCASE("a StepBegin before any lease") {
    Rig rig(2, true);
    rig.load(5);
    rig.coord.send(net::worker_endpoint(0), proto::StepBegin{0, 0, windows});
    refused(rig, "but no lease is computed");
  }
  SUBCASE("a lease to a bsp worker") {
    Rig rig(2, false);
    rig.load(5);
    rig.coord.send(net::worker_endpoint(0), proto::LeaseGrant{1, 0, 0, windows});
    refused(rig, "this job's cluster.sync is not ssp or async");
  }
}

// cluster.sync local's inner optimizer state: a worker of another mode holds none, so a request
// to save or load one is a protocol error it reports, naming the message and the mode.
TEST_CASE("worker loop: a bsp worker refuses InnerStateSave and InnerStateLoad naming the sync mode") {
  for (const bool save : {true, false}) {
    CAPTURE(save);
    Rig rig(2);
    rig.load(5);
    if (save) {
      rig.coord.send(net::worker_endpoint(0), proto::InnerStateSave{1, 0, 0, "tmp"});
    } else {
      rig.coord.send(net::worker_endpoint(0), proto::InnerStateLoad{1, 0, 0, "ckpt"});
    }
    const auto f = rig.expect<proto::Failure>("the worker's failure");
    CHECK(f.code == static_cast<int32_t>(ExitCode::kIo));  // a protocol error
    const std::string want = std::string("unexpected ") +
                             (save ? "InnerStateSave" : "InnerStateLoad") +
                             " from coordinator (this job's cluster.sync is not local)";
    CHECK_MESSAGE(f.message.find(want) != std::string::npos, f.message);
  }
}
