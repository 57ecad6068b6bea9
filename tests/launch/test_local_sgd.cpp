// cluster.sync local (DiLoCo; docs/local_sgd.md) as whole threads jobs on the tiny GPT: it trains
// (loss falls; tokens, the ledger and bytes per token count H inner steps per outer step; the
// servers' momentum buffer and the workers' inner AdamW states are in the checkpoint), it
// resumes bitwise at an outer-step boundary (the inner states handed back by position; refused
// naming the file when one is missing), and with outer lr 1, momentum 0 and one worker it is bsp
// as the maths says.
#include "common/io/checkpoint_format.hpp"
#include "common/io/inner_state.hpp"
#include "common/io/ledger.hpp"
#include "launch/threads_job.hpp"
#include "support/final_state.hpp"
#include "support/job_test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <set>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

std::vector<nlohmann::json> step_lines(const Config& c) {
  std::vector<nlohmann::json> out;
  for (const auto& l : read_lines(c.run.dir + "/train.jsonl")) {
    auto j = nlohmann::json::parse(l);
    if (j.contains("loss")) out.push_back(std::move(j));
  }
  return out;
}

Config local_config(const TempDir& dir, int64_t H) {
  Config c = small_config(dir);  // B = 8, micro_batch = 4, 1249 windows of T 16
  c.cluster.sync = SyncMode::kLocal;
  c.cluster.local_steps = H;
  return c;
}

}  // namespace

TEST_CASE("local sgd: trains - H x B windows per outer step in tokens and ledger - bytes per token fall by H - momentum checkpointed") {
  TempDir dir;
  const int64_t H = 4;
  Config local = local_config(dir, H);
  local.cluster.workers = 2;
  local.cluster.servers = 2;
  local.train.steps = 6;
  local.checkpoint.every_steps = 3;
  const RunSummary s = run_threads_job(local);
  CHECK(s.final_step == 6);
  CHECK(s.tokens_seen == 6 * H * 8 * 16);

  // The loss of the last outer step (the mean over its inner steps) is well below the first's.
  const auto lines = step_lines(local);
  REQUIRE(lines.size() == 6);
  const double first = lines.front().at("loss").get<double>();
  const double last = lines.back().at("loss").get<double>();
  MESSAGE("local H=4: loss " << first << " -> " << last);
  CHECK(first == doctest::Approx(std::log(257.0)).epsilon(0.15));
  CHECK(last < first - 1.0);
  CHECK(lines.back().at("tokens").get<int64_t>() == 6 * H * 8 * 16);

  // The ledger: each outer step applied H x B distinct windows, none twice in the epoch.
  const LedgerCheck lc = check_run_ledger(local.run.dir);
  CHECK(lc.last_step == 6);
  CHECK(lc.windows_per_epoch.at(0) == 6 * H * 8);
  std::set<int64_t> seen;
  int64_t step_rows = 0;
  for (const auto& l : read_lines(local.run.dir + "/ledger.jsonl")) {
    const auto j = nlohmann::json::parse(l);
    if (!j.contains("windows")) continue;
    ++step_rows;
    CHECK(j.at("windows").size() == static_cast<size_t>(H * 8));
    for (const auto& w : j.at("windows")) CHECK(seen.insert(w.get<int64_t>()).second);
  }
  CHECK(step_rows == 6);

  // The servers' outer momentum buffer is in the checkpoint (and not zero after 6 outer steps).
  const CheckpointSlice c =
      read_checkpoint_range(s.last_checkpoint, layout_for(local), {0, layout_for(local).total()});
  REQUIRE(c.outer_momentum.size() == static_cast<size_t>(layout_for(local).total()));
  double norm = 0.0;
  for (float x : c.outer_momentum) norm += static_cast<double>(x) * x;
  CHECK(norm > 0.0);

  // Each worker's inner AdamW state, slot = its position: 6 outer steps of H inner steps each.
  const CheckpointMeta meta = read_checkpoint_meta(s.last_checkpoint);
  REQUIRE(meta.inner_state_slots == std::vector<int64_t>{0, 1});
  for (int64_t slot : {0, 1}) {
    const InnerState in = read_inner_state(s.last_checkpoint, layout_for(local), 6, slot);
    CHECK(in.inner_steps == 6 * H);
    double v = 0.0;
    for (float x : in.v) v += x;
    CHECK(v > 0.0);
  }

  // Bytes per trained token: a bsp run of the same outer-step count moves the same bytes per
  // step for H times fewer tokens.
  Config bsp = small_config(dir);
  bsp.run.dir = dir / "bsp";
  bsp.cluster.workers = 2;
  bsp.cluster.servers = 2;
  bsp.train.steps = 6;
  run_threads_job(bsp);
  const auto bsp_lines = step_lines(bsp);
  REQUIRE(bsp_lines.size() == 6);
  const double bpt_local = lines.back().at("bytes_per_token").get<double>();
  const double bpt_bsp = bsp_lines.back().at("bytes_per_token").get<double>();
  MESSAGE("bytes per token: bsp " << bpt_bsp << ", local H=4 " << bpt_local);
  CHECK(bpt_local * H == doctest::Approx(bpt_bsp).epsilon(0.01));
}

TEST_CASE("local sgd: N outer steps straight == N/2 + stop + resume + N/2 - bitwise") {
  TempDir dir;
  Config straight = local_config(dir, 3);
  straight.train.steps = 6;
  straight.cluster.workers = 2;
  straight.cluster.servers = 2;
  const RunSummary s = run_threads_job(straight);
  const auto want = final_state(straight, s);
  const CheckpointSlice want_slice = read_checkpoint_range(
      s.last_checkpoint, layout_for(straight), {0, layout_for(straight).total()});

  Config halves = straight;
  halves.run.dir = dir / "halves";
  halves.checkpoint.resume = "auto";
  ThreadsJobOptions stop_at_3;
  stop_at_3.stop_requested = [](int64_t step) { return step == 3; };
  const RunSummary first = run_threads_job(halves, stop_at_3);
  CHECK(first.interrupted);
  CHECK(first.final_step == 3);
  const RunSummary second = run_threads_job(halves);
  CHECK(second.start_step == 3);
  CHECK(second.final_step == 6);
  const auto got = final_state(halves, second);
  CHECK(got.params == want.params);
  const CheckpointSlice got_slice = read_checkpoint_range(
      second.last_checkpoint, layout_for(halves), {0, layout_for(halves).total()});
  CHECK(got_slice.outer_momentum == want_slice.outer_momentum);
  CHECK(second.final_loss == s.final_loss);
  CHECK(read_checkpoint_meta(second.last_checkpoint).tokens_seen == 6 * 3 * 8 * 16);
}

// Outer lr 1, momentum 0, one worker: each outer step sets the weights to w − (w − w') = w' (to
// the rounding of the subtraction), w' being the worker's weights after its H inner AdamW steps.
// The worker's inner moments carry over from one outer step to the next as bsp's do on the
// servers, and the plan hands out the same windows in the same order (H blocks of B per outer
// step) with the inner schedule over train.steps × H: so N outer steps are N × H bsp steps. Not
// bitwise: Δ = w − w' and w − Δ round, and the worker sums the clipping norm in another order
// than the servers.
TEST_CASE("local sgd: outer lr 1 - momentum 0 - one worker equals bsp - H 1 and 4") {
  TempDir dir;
  Config local = local_config(dir, 1);
  local.cluster.outer_lr = 1.0;
  local.cluster.outer_momentum = 0.0;
  Config bsp = small_config(dir);
  bsp.run.dir = dir / "bsp";
  local.run.threads = bsp.run.threads = 1;
  // AdamW's step of an element whose gradient is rounding noise (the attention's key bias has a
  // zero gradient in exact arithmetic) is ±lr on the noise's sign with the default eps: an eps
  // above the noise keeps the comparison about the maths, not about the sign of rounding errors.
  local.optim.eps = bsp.optim.eps = 1e-4;

  SUBCASE("H = 1: five steps") {
    local.train.steps = bsp.train.steps = 5;
  }
  SUBCASE("H = 4: three outer steps are twelve bsp steps") {
    local.cluster.local_steps = 4;
    local.train.steps = 3;
    bsp.train.steps = 12;
  }
  SUBCASE("H = 2: two outer steps then a resume and two more are eight bsp steps") {
    // The moments cross the checkpoint in the worker's inner-0.h5.
    local.cluster.local_steps = 2;
    local.train.steps = 4;
    bsp.train.steps = 8;
    local.checkpoint.resume = "auto";
    ThreadsJobOptions stop_at_2;
    stop_at_2.stop_requested = [](int64_t step) { return step == 2; };
    CHECK(run_threads_job(local, stop_at_2).final_step == 2);
    CHECK(fs::exists(fs::path(local.run.dir) / "checkpoints" / "latest" / "inner-0.h5"));
  }
  const auto a = final_state(local, run_threads_job(local));
  const auto b = final_state(bsp, run_threads_job(bsp));
  const Worst w = worst_rel_l2(layout_for(bsp), a.params, b.params);
  MESSAGE("local H=" << local.cluster.local_steps << " vs bsp after " << bsp.train.steps << " step(s): worst per-tensor relative L2 "
                                    << w.value << " (" << w.tensor << ")");
  CHECK(w.value <= 1e-5);
  // ... and with momentum the two differ (the test can fail).
  Config momentum = local;
  momentum.run.dir = dir / "momentum";
  momentum.cluster.outer_momentum = 0.9;
  momentum.train.steps = 2;
  Config bsp2 = bsp;
  bsp2.run.dir = dir / "bsp2";
  bsp2.train.steps = 2;
  const auto c = final_state(momentum, run_threads_job(momentum));
  const auto d = final_state(bsp2, run_threads_job(bsp2));
  CHECK(worst_rel_l2(layout_for(bsp), c.params, d.params).value > 1e-4);
}

// A resume needs every listed inner state: one missing (or damaged) stops the job naming the
// file, before any step; more workers than states: the extra ones start at zero; fewer: the
// states left over are not used. bsp resumes such a checkpoint without them.
TEST_CASE("local sgd: a resume without a listed inner state is refused naming the file - other worker counts resume") {
  TempDir dir;
  Config c = local_config(dir, 2);
  c.cluster.workers = 2;
  c.train.steps = 2;
  c.checkpoint.every_steps = 2;
  c.checkpoint.resume = "auto";
  const RunSummary s = run_threads_job(c);
  const fs::path ckpt = fs::path(checkpoint_file(s.last_checkpoint)).parent_path() / "inner-1.h5";
  REQUIRE(fs::exists(ckpt));
  const fs::path aside = fs::path(dir.path) / "inner-1.h5.aside";
  fs::rename(ckpt, aside);

  Config more = c;
  more.train.steps = 4;
  auto error_of = [](const Config& cfg) {
    try {
      run_threads_job(cfg);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  // resume auto: the checkpoint does not verify, and it is the only one.
  const std::string err = error_of(more);
  CHECK_MESSAGE(err.find("inner-1.h5: the inner optimizer state of slot 1 is missing") !=
                    std::string::npos,
                err);
  // resume from this checkpoint by path: the worker of position 1 cannot take it, and the job
  // stops before any step.
  Config by_path = more;
  by_path.checkpoint.resume = s.last_checkpoint;
  const std::string err2 = error_of(by_path);
  CHECK_MESSAGE(err2.find("inner-1.h5") != std::string::npos, err2);
  CHECK_MESSAGE(err2.find("slot 1") != std::string::npos, err2);
  CHECK(read_checkpoint_meta(s.last_checkpoint).step == 2);
  CHECK_FALSE(fs::exists(fs::path(c.run.dir) / "checkpoints" / "step-00000004"));
  CHECK(read_checkpoint_meta(c.run.dir + "/checkpoints/latest").step == 2);

  fs::rename(aside, ckpt);
  SUBCASE("one worker: slot 1's state is not used") { more.cluster.workers = 1; }
  SUBCASE("three workers: the third starts at zero") { more.cluster.workers = 3; }
  SUBCASE("bsp") { more.cluster.sync = SyncMode::kBsp; }
  const RunSummary r = run_threads_job(more);
  CHECK(r.start_step == 2);
  CHECK(r.final_step == 4);
}
