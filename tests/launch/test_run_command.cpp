// `ptrain run CONFIG [--set k=v]...` through the built binary (PTRAIN_TEST_BINARY): a small job
// trains and exits 0 with train.jsonl, a progress line and a final checkpoint; launch modes not
// built yet are refused; SIGTERM stops at the next step with a checkpoint and exit 0, and the
// next `ptrain run` (checkpoint.resume: auto) continues from it.
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

using test::slurp;
using Proc = test::PtrainProcess;

Proc start(const std::vector<std::string>& args, const std::string& err_file) {
  return test::start_ptrain(args, err_file);
}

int wait_exit(const Proc& p) { return test::wait_ptrain(p); }

std::string write_config(const TempDir& dir, int64_t steps) {
  write_corpus(dir / "train.tok", 20000, 7);
  const std::string cfg = dir / "job.yaml";
  std::ofstream(cfg) << "run: {dir: run, seed: 5, threads: 2}\n"
                        "data: {train: train.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: " << steps << ", batch_size: 4, micro_batch: 2, "
                        "eval_every: 0, log_every: 1}\n"
                        "cluster: {workers: 2, servers: 2, launch: threads}\n"
                        "checkpoint: {every_steps: 0, resume: auto}\n";
  return cfg;
}

}  // namespace

TEST_CASE("coordinator run command: trains - logs and checkpoints - refuses what is not built") {
  TempDir dir("run-cmd");
  const std::string cfg = write_config(dir, 3);
  const Proc p = start({"run", cfg}, dir / "err.txt");
  CHECK(wait_exit(p) == 0);
  const std::string err = slurp(dir / "err.txt");
  CHECK(err.find("step 3/3 | loss") != std::string::npos);
  CHECK(err.find("tok/s") != std::string::npos);
  CHECK(err.find("ETA") != std::string::npos);
  CHECK(read_lines(dir / "run/train.jsonl").size() == 3);
  CHECK(fs::read_symlink(dir / "run/checkpoints/latest") == "step-00000003");

  const Proc q = start({"run", cfg, "--set", "cluster.sync=async"}, dir / "err2.txt");
  CHECK(wait_exit(q) == 3);  // refused by the config (ConfigError)
  CHECK(slurp(dir / "err2.txt").find("not implemented yet") != std::string::npos);
}

TEST_CASE("coordinator run command: SIGTERM stops with a checkpoint - the next run resumes") {
  TempDir dir("run-term");
  const std::string cfg = write_config(dir, 100000);
  const Proc p = start({"run", cfg}, dir / "err.txt");
  // Wait for a few logged steps, then ask it to stop.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (read_lines(dir / "run/train.jsonl").size() < 3) {
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "no training progress");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(p.pid, SIGTERM);
  CHECK(wait_exit(p) == 0);
  const std::string err = slurp(dir / "err.txt");
  CHECK(err.find("interrupted at step") != std::string::npos);
  const auto lines = read_lines(dir / "run/train.jsonl");
  const int64_t stopped = nlohmann::json::parse(lines.back()).at("step").get<int64_t>();
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(stopped));
  CHECK(fs::read_symlink(dir / "run/checkpoints/latest") == name);

  const Proc q = start({"run", cfg, "--set", "train.steps=" + std::to_string(stopped + 2)},
                       dir / "err2.txt");
  CHECK(wait_exit(q) == 0);
  const std::string err2 = slurp(dir / "err2.txt");
  CHECK(err2.find("resuming from") != std::string::npos);
  CHECK(err2.find("step " + std::to_string(stopped + 2) + "/") != std::string::npos);
}
