// RUN_DIR/ledger.jsonl (common/io/ledger.hpp): the writer's lines, the trim on resume, and the
// checker finding a doubled window, a missing one, and windows still in the returned pool.
#include "common/error.hpp"
#include "common/io/ledger.hpp"
#include "support/job_test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <fstream>

using namespace ptrain;
using namespace ptrain::testing;

namespace {

// A 4-window data set: epoch 0 applied in steps 1 and 2, epoch 1 begun in step 3.
void write_run(const std::string& run_dir) {
  LedgerWriter w(run_dir, 0);
  w.step(1, {{0, 2}, {0, 0}});
  w.event("lost", "worker", 1, 1);
  w.step(2, {{0, 3}, {0, 1}, {1, 2}});  // spans the end of epoch 0
  w.step(3, {{1, 0}});
}

}  // namespace

TEST_CASE("ledger: one line per step and data epoch - events - the exactly-once check") {
  TempDir dir("ledger");
  write_run(dir.path.string());
  const auto lines = read_lines(dir / "ledger.jsonl");
  REQUIRE(lines.size() == 5);
  const auto l2 = nlohmann::json::parse(lines[2]);
  CHECK(l2["step"] == 2);
  CHECK(l2["data_epoch"] == 0);
  CHECK(l2["windows"] == nlohmann::json::array({3, 1}));
  CHECK(nlohmann::json::parse(lines[3])["data_epoch"] == 1);
  CHECK(nlohmann::json::parse(lines[1])["event"] == "lost");

  // Cursor in epoch 1: epoch 0 must be whole.
  LedgerCheck c = check_ledger(dir / "ledger.jsonl", 4, DataState{5, 1, 2, {}}, 3);
  CHECK(c.ok());
  CHECK(c.complete_epochs == std::vector<int64_t>{0});
  CHECK(c.events["lost"] == 1);

  // A window twice in an epoch, and a missing one, are found and named.
  {
    LedgerWriter w(dir.path.string(), 3);
    w.step(4, {{1, 0}});
  }
  c = check_ledger(dir / "ledger.jsonl", 4, DataState{5, 2, 0, {}}, 4);
  CHECK_FALSE(c.ok());
  CHECK(c.doubled == 1);
  CHECK(c.missing == 2);  // windows 1 and 3 of epoch 1
  CHECK(c.problems[0].find("window 0 of data epoch 1 a second time") != std::string::npos);

  // Windows still waiting in the returned pool are not missing.
  DataState pool{5, 2, 0};
  pool.returned = {{1, 1}, {1, 3}};
  c = check_ledger(dir / "ledger.jsonl", 4, pool, 4);
  CHECK(c.missing == 0);
  CHECK(c.doubled == 1);
}

TEST_CASE("ledger: a resumed run trims the lines past its resume step") {
  TempDir dir("ledger-trim");
  write_run(dir.path.string());
  {
    std::ofstream(dir / "ledger.jsonl", std::ios::app) << "{\"step\": 9, \"data_";  // torn line
  }
  {
    LedgerWriter w(dir.path.string(), 1);
    w.event("resume", "coordinator", 0, 1);
  }
  const auto lines = read_lines(dir / "ledger.jsonl");
  REQUIRE(lines.size() == 3);
  CHECK(nlohmann::json::parse(lines[0])["step"] == 1);
  CHECK(nlohmann::json::parse(lines[2])["event"] == "resume");
  append_ledger_event(dir.path.string(), "restart", "server", 1, 1);
  CHECK(read_lines(dir / "ledger.jsonl").size() == 4);
  CHECK_THROWS_AS(check_ledger(dir / "nope.jsonl", 4, DataState{}, -1), IoError);
}
