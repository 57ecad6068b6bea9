// One job per run directory (RUN_DIR/lock): a second `ptrain run` on a run directory in use is
// refused at once, naming the holder, and touches nothing of the first job (its secret, addresses,
// logs and train.jsonl); a lock left by a dead job is replaced; a coordinator spawned by the
// launcher joins its job; coordinator.addr keeps `HOST:PORT` on its first line and names the job.
#include "common/error.hpp"
#include "common/util/run_lock.hpp"
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::string lock_config(const TempDir& dir, const std::string& launch) {
  write_corpus(dir / "train.tok", 20000, 7);
  const std::string cfg = dir / ("job-" + launch + ".yaml");
  std::ofstream(cfg) << "run: {dir: " << dir / "run" << ", seed: 5, threads: 1}\n"
                        "data: {train: train.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: 100000, batch_size: 4, micro_batch: 2, "
                        "eval_every: 0, log_every: 1}\n"
                        "cluster: {workers: 1, servers: 1, launch: " << launch << "}\n"
                        "checkpoint: {every_steps: 0, resume: never}\n";
  return cfg;
}

}  // namespace

TEST_CASE("run dir lock: a second job is refused at once naming the holder - the first runs on") {
  for (const std::string launch : {"threads", "processes"}) {
    CAPTURE(launch);
    TempDir dir("run-lock-" + launch);
    const std::string cfg = lock_config(dir, launch);
    const test::PtrainProcess first = test::start_ptrain({"run", cfg}, dir / "err1.txt");
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (read_lines(dir / "run/train.jsonl").size() < 2) {
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, test::slurp(dir / "err1.txt"));
      std::this_thread::sleep_for(20ms);
    }
    const std::string secret_before =
        launch == "processes" ? test::slurp(dir / "run/secret") : std::string();
    const auto t0 = std::chrono::steady_clock::now();
    const test::PtrainProcess second = test::start_ptrain({"run", cfg}, dir / "err2.txt");
    const int rc = test::wait_ptrain(second);
    const auto took = std::chrono::steady_clock::now() - t0;
    const std::string err2 = test::slurp(dir / "err2.txt");
    CAPTURE(err2);
    CHECK(rc == 2);  // UsageError
    CHECK(took < 5s);
    CHECK(err2.find("is in use by another job: pid " + std::to_string(first.pid)) !=
          std::string::npos);
    // The first job's files are its own still, and it keeps training.
    if (launch == "processes") {
      CHECK(test::slurp(dir / "run/secret") == secret_before);
      const std::optional<CoordinatorAddr> a = read_coordinator_addr(dir / "run");
      REQUIRE(a.has_value());
      CHECK(a->host_port.rfind("127.0.0.1:", 0) == 0);
      const std::optional<RunLockHolder> h = read_run_lock(dir / "run");
      REQUIRE(h.has_value());
      CHECK(a->job_id == h->job_id);
      CHECK(test::slurp(dir / "run/coordinator.addr").find('\n') == a->host_port.size());
    }
    const size_t lines = read_lines(dir / "run/train.jsonl").size();
    const auto more = std::chrono::steady_clock::now() + 30s;
    while (read_lines(dir / "run/train.jsonl").size() < lines + 2) {
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < more, test::slurp(dir / "err1.txt"));
      std::this_thread::sleep_for(20ms);
    }
    ::kill(first.pid, SIGTERM);
    CHECK(test::wait_ptrain(first) == 0);
    // Released: the holder line is gone and a new job may take the directory.
    CHECK_FALSE(read_run_lock(dir / "run").has_value());
  }
}

TEST_CASE("run dir lock: held in process - stale holders replaced - released on destruction") {
  TempDir dir("run-lock-unit");
  const std::string run = dir / "run";
  {
    const RunLock a = RunLock::acquire(run);
    CHECK(a.held());
    CHECK(a.job_id().size() == 16);
    const std::optional<RunLockHolder> h = read_run_lock(run);
    REQUIRE(h.has_value());
    CHECK(h->pid == static_cast<long>(::getpid()));
    CHECK(h->job_id == a.job_id());
    // Another open file description conflicts, even in this process.
    const std::string want = "is in use by another job: pid " + std::to_string(::getpid());
    CHECK_THROWS_WITH_AS(RunLock::acquire(run), doctest::Contains(want.c_str()), UsageError);
    // Our parent does not hold it: no joining.
    CHECK_THROWS_AS(RunLock::acquire_or_join_parent(run), UsageError);
  }
  CHECK_FALSE(read_run_lock(run).has_value());
  // A dead job's line (no flock held any more) is replaced.
  std::ofstream(run + "/lock") << "pid=999999 host=elsewhere job=0123456789abcdef "
                                  "started=2020-01-01T00:00:00Z\n";
  const RunLock b = RunLock::acquire(run);
  CHECK(read_run_lock(run)->pid == static_cast<long>(::getpid()));
  CHECK(b.job_id() != "0123456789abcdef");
}

TEST_CASE("run dir lock: coordinator.addr is HOST:PORT on line 1 - job id on line 2") {
  TempDir dir("run-addr");
  const std::string run = dir / "run";
  fs::create_directories(run);
  CHECK_FALSE(read_coordinator_addr(run).has_value());
  write_coordinator_addr(run, "127.0.0.1:4567", "00ff00ff00ff00ff");
  CHECK(test::slurp(run + "/coordinator.addr") == "127.0.0.1:4567\njob=00ff00ff00ff00ff\n");
  const auto a = read_coordinator_addr(run);
  REQUIRE(a.has_value());
  CHECK(a->host_port == "127.0.0.1:4567");
  CHECK(a->job_id == "00ff00ff00ff00ff");
  write_coordinator_addr(run, "[::1]:9", "");
  CHECK(test::slurp(run + "/coordinator.addr") == "[::1]:9\n");
  CHECK_THROWS_AS(write_coordinator_addr(run, "0.0.0.0:9", ""), UsageError);
  CHECK_THROWS_AS(write_coordinator_addr(run, "nope", ""), UsageError);
  std::ofstream(run + "/coordinator.addr") << "garbage\n";
  CHECK_THROWS_WITH_AS(read_coordinator_addr(run), doctest::Contains("coordinator.addr"),
                       UsageError);
}
