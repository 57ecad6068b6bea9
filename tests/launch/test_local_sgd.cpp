// cluster.sync local (DiLoCo; docs/local_sgd.md) as whole threads jobs on the tiny GPT: it trains
// (loss falls; tokens, the ledger and bytes per token count H inner steps per outer step; the
// servers' momentum buffer is in the checkpoint), it resumes bitwise at an outer-step boundary,
// and with H = 1, outer lr 1, momentum 0 and one worker it is bsp as the maths says.
#include "common/io/checkpoint_format.hpp"
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

// H = 1, outer lr 1, momentum 0, one worker: each outer step sets the weights to w − (w − w') =
// w' (to the rounding of the subtraction), w' being one AdamW step from w with the worker's
// gradient and fresh moments. bsp's step is the same AdamW step with the moments it carries, so
// the two agree at the first step always, and at every step when AdamW carries nothing
// (beta1 = beta2 = 0) — and then, for any H, an outer step is H bsp steps. Not bitwise: Δ = w − w'
// and w − Δ round, and the worker sums the clipping norm in another order than the servers.
TEST_CASE("local sgd: outer lr 1 - momentum 0 - one worker equals bsp where AdamW carries no state - H 1 and 4") {
  TempDir dir;
  Config local = local_config(dir, 1);
  local.cluster.outer_lr = 1.0;
  local.cluster.outer_momentum = 0.0;
  Config bsp = small_config(dir);
  bsp.run.dir = dir / "bsp";
  local.run.threads = bsp.run.threads = 1;

  SUBCASE("the first step with the default betas") {
    local.train.steps = bsp.train.steps = 1;
  }
  SUBCASE("H = 4: three outer steps are twelve bsp steps with beta1 = beta2 = 0") {
    // The plan hands out the same windows in the same order (4 blocks of B per outer step) and
    // the inner schedule runs over train.steps x H: inner step i is bsp's step i.
    local.cluster.local_steps = 4;
    local.train.steps = 3;
    bsp.train.steps = 12;
    local.optim.beta1 = bsp.optim.beta1 = 0.0;
    local.optim.beta2 = bsp.optim.beta2 = 0.0;
    local.optim.eps = bsp.optim.eps = 1e-4;  // (below)
  }
  SUBCASE("five steps with beta1 = beta2 = 0") {
    local.optim.beta1 = bsp.optim.beta1 = 0.0;
    local.optim.beta2 = bsp.optim.beta2 = 0.0;
    local.optim.lr = bsp.optim.lr = 1e-3;
    local.optim.min_lr = bsp.optim.min_lr = 1e-4;
    // Without moments AdamW's step is lr·g/(|g| + eps): with the default eps an element whose
    // gradient is rounding noise (the attention's key bias has a zero gradient in exact
    // arithmetic) moves by ±lr on the noise's sign. An eps above the noise keeps the comparison
    // about the maths, not about the sign of rounding errors.
    local.optim.eps = bsp.optim.eps = 1e-4;
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
