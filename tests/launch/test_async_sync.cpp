// cluster.sync ssp and async (docs/sync_modes.md) as whole threads jobs on the tiny GPT: one
// worker in ssp is bsp bitwise (the same windows, the same update, one push per step); several
// workers train, every step is one worker's push with its staleness in the ledger, ssp keeps
// every worker within cluster.staleness pushes of the slowest, and a stopped run resumes with
// every window applied exactly once.
#include "common/io/checkpoint_format.hpp"
#include "common/io/ledger.hpp"
#include "launch/threads_job.hpp"
#include "support/final_state.hpp"
#include "support/job_test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

std::vector<nlohmann::json> lines_with(const std::string& path, const char* key) {
  std::vector<nlohmann::json> out;
  for (const auto& l : read_lines(path)) {
    auto j = nlohmann::json::parse(l);
    if (j.contains(key)) out.push_back(std::move(j));
  }
  return out;
}

Config sync_config(const TempDir& dir, SyncMode mode, int64_t workers, int64_t staleness = 0) {
  Config c = small_config(dir);  // B = 8, micro_batch = 4, T = 16
  c.cluster.sync = mode;
  c.cluster.staleness = staleness;
  c.cluster.workers = workers;
  c.cluster.servers = 2;
  return c;
}

}  // namespace

TEST_CASE("ssp: one worker is bsp bitwise - the same windows and the same updates") {
  TempDir dir;
  Config ssp = sync_config(dir, SyncMode::kSsp, 1);
  ssp.train.steps = 6;
  Config bsp = ssp;
  bsp.run.dir = dir / "bsp";
  bsp.cluster.sync = SyncMode::kBsp;
  const RunSummary a = run_threads_job(ssp);
  const RunSummary b = run_threads_job(bsp);
  CHECK(a.final_step == 6);
  CHECK(final_state(ssp, a).params == final_state(bsp, b).params);
  CHECK(a.final_loss == b.final_loss);
  // Every push of a single worker is fresh: computed on the version it updates.
  for (const auto& j : lines_with(ssp.run.dir + "/ledger.jsonl", "windows")) {
    CHECK(j.at("staleness").get<int64_t>() == 0);
    CHECK(j.at("ahead").get<int64_t>() == 0);
    CHECK(j.at("worker").get<int32_t>() == 0);
  }
  for (const auto& j : lines_with(bsp.run.dir + "/ledger.jsonl", "windows")) {
    CHECK_FALSE(j.contains("staleness"));  // bsp's lines are unchanged
  }
}

TEST_CASE("ssp and async: several workers train - one push per step - staleness recorded - ssp within its bound") {
  TempDir dir;
  struct Case {
    std::string name;
    SyncMode mode;
    int64_t workers;
    int64_t staleness;
  };
  for (const Case& k : {Case{"ssp K=0", SyncMode::kSsp, 2, 0}, Case{"ssp K=1", SyncMode::kSsp, 3, 1},
                        Case{"async", SyncMode::kAsync, 3, 0}}) {
    CAPTURE(k.name);
    Config c = sync_config(dir, k.mode, k.workers, k.staleness);
    c.run.dir = dir / k.name;
    c.train.steps = 24;
    const RunSummary s = run_threads_job(c);
    CHECK(s.final_step == 24);
    CHECK(s.tokens_seen == 24 * 8 * 16);  // every push is one worker's whole batch of B windows

    const auto steps = lines_with(c.run.dir + "/train.jsonl", "loss");
    REQUIRE(steps.size() == 24);
    double first = 0.0, last = 0.0;
    for (size_t i = 0; i < 4; ++i) {
      first += steps[i].at("loss").get<double>() / 4;
      last += steps[steps.size() - 1 - i].at("loss").get<double>() / 4;
    }
    MESSAGE(k.name << ": mean loss of the first 4 steps " << first << ", of the last 4 " << last);
    CHECK(last < first - 0.5);

    // The ledger: one worker per step, B windows, none twice; ahead within the bound.
    const LedgerCheck lc = check_run_ledger(c.run.dir);
    INFO(lc.to_json());
    CHECK(lc.ok());
    std::map<int32_t, int64_t> pushes;
    int64_t most_stale = 0, most_ahead = 0;
    std::set<int64_t> seen;
    for (const auto& j : lines_with(c.run.dir + "/ledger.jsonl", "windows")) {
      CHECK(j.at("windows").size() == 8u);
      for (const auto& w : j.at("windows")) CHECK(seen.insert(w.get<int64_t>()).second);
      const int64_t step = j.at("step").get<int64_t>();
      const int64_t base = j.at("base_version").get<int64_t>();
      CHECK(j.at("staleness").get<int64_t>() == step - 1 - base);
      CHECK(base >= 0);
      CHECK(base <= step - 1);
      ++pushes[j.at("worker").get<int32_t>()];
      most_stale = std::max(most_stale, j.at("staleness").get<int64_t>());
      most_ahead = std::max(most_ahead, j.at("ahead").get<int64_t>());
      if (k.mode == SyncMode::kSsp) CHECK(j.at("ahead").get<int64_t>() <= k.staleness);
    }
    MESSAGE(k.name << ": most stale push " << most_stale << ", most ahead " << most_ahead);
    CHECK(static_cast<int64_t>(pushes.size()) == k.workers);  // every worker pushed
    // With every worker computing at once, some gradient was read before another's update.
    CHECK(most_stale >= 1);
  }
}

TEST_CASE("async: stop and resume - every window applied exactly once - the run completes") {
  TempDir dir;
  Config c = sync_config(dir, SyncMode::kAsync, 3);
  c.train.steps = 12;
  c.checkpoint.resume = "auto";
  ThreadsJobOptions stop_at_5;
  stop_at_5.stop_requested = [](int64_t step) { return step == 5; };
  const RunSummary first = run_threads_job(c, stop_at_5);
  CHECK(first.interrupted);
  CHECK(first.final_step == 5);
  // Leases out at the stop were not applied: the checkpoint hands their windows out again.
  CHECK_FALSE(read_checkpoint_meta(first.last_checkpoint).data.returned.empty());
  const RunSummary second = run_threads_job(c);
  CHECK(second.start_step == 5);
  CHECK(second.final_step == 12);
  CHECK(read_checkpoint_meta(second.last_checkpoint).tokens_seen == 12 * 8 * 16);
  const LedgerCheck lc = check_run_ledger(c.run.dir);
  INFO(lc.to_json());
  CHECK(lc.ok());
  CHECK(lc.doubled == 0);
  CHECK(lc.last_step == 12);
  CHECK(lc.windows_per_epoch.at(0) == 12 * 8);  // the corpus's first epoch is longer than that
}
