// The SLURM job templates (scripts/slurm/) on a real one-node SLURM cluster (label `slurm`):
// scripts/slurm/local-cluster.sh brings up munged, slurmctld and slurmd on this machine. When it
// cannot (not root, no slurm-wlm and no way to install it), every case ends with exit code 77 and
// the reason, which CTest shows as a skipped test, not a pass. Jobs are polled with a deadline and
// cancelled on every exit path.
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"

#include "common/io/ledger.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>
#include <thread>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

const std::string kScripts = PTRAIN_TEST_SCRIPTS;

// Output and exit status of a shell command.
std::pair<std::string, int> sh(const std::string& cmd) {
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(f != nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  const int st = ::pclose(f);
  return {out, WIFEXITED(st) ? WEXITSTATUS(st) : 128};
}

// Brings the local cluster up once per process, or ends the test as skipped with the reason.
void need_cluster() {
  static bool up = false;
  if (up) return;
  std::string why;
  if (::geteuid() != 0) {
    why = "not root (the local cluster's daemons run as root)";
  } else {
    const auto [out, rc] = sh(kScripts + "/slurm/local-cluster.sh up");
    if (rc != 0) why = "scripts/slurm/local-cluster.sh up failed: " + out;
  }
  if (!why.empty()) {
    std::cout << "SKIPPED: no local SLURM cluster: " << why << std::endl;
    std::_Exit(77);
  }
  up = true;
}

// Cancels the job when the test ends, however it ends.
struct Job {
  std::string id;
  ~Job() {
    if (!id.empty()) sh("scancel --full --signal=KILL " + id + "; scancel " + id);
  }
};

std::string submit(const TempDir& dir, const std::string& script, const std::string& args,
                   const std::string& sbatch_flags = "") {
  const auto [out, rc] =
      sh("cd '" + dir.path.string() + "' && PTRAIN='" + PTRAIN_TEST_BINARY +
         "' sbatch --parsable " + sbatch_flags + " '" + kScripts + "/slurm/" + script + "' " + args);
  REQUIRE_MESSAGE(rc == 0, "sbatch failed: " << out);
  std::string id = out.substr(0, out.find_first_of(";\n"));
  return id;
}

std::string job_field(const std::string& id, const std::string& field) {
  const auto [out, rc] = sh("scontrol show job " + id);
  if (rc != 0) return "";
  const std::smatch m = [&] {
    std::smatch mm;
    std::regex_search(out, mm, std::regex(field + "=(\\S+)"));
    return mm;
  }();
  return m.empty() ? "" : m[1].str();
}

// Waits until the job's state is one of `states` (polled every 0.2 s); returns it.
std::string wait_state(const std::string& id, const std::set<std::string>& states,
                       std::chrono::seconds limit, const TempDir& dir) {
  const auto until = Clock::now() + limit;
  std::string st;
  while (Clock::now() < until) {
    st = job_field(id, "JobState");
    if (states.count(st)) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  FAIL("job " << id << " is " << st << " after " << limit.count() << " s; its output:\n"
              << test::slurp(dir.path / ("slurm-" + id + ".out")));
  return st;
}

// The tiny job's config in `dir` (its corpus beside it); `cluster` is the YAML of the cluster keys
// besides the liveness settings.
std::string write_config(const TempDir& dir, int64_t steps,
                         const std::string& cluster = "workers: 2, servers: 1",
                         int64_t batch_size = 4) {
  if (!fs::exists(dir / "train.tok")) write_corpus(dir / "train.tok", 20000, 7);
  const std::string cfg = dir / "job.yaml";
  std::ofstream(cfg) << "run: {seed: 5, threads: 1}\n"
                     << "data: {train: train.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: " << steps << ", batch_size: " << batch_size
                     << ", micro_batch: 2, eval_every: 0, log_every: 1}\n"
                        "cluster: {" << cluster << ", heartbeat_s: 0.5, peer_timeout_s: 5}\n"
                        "checkpoint: {every_steps: 0, resume: auto}\n";
  return cfg;
}

std::vector<int64_t> logged_steps(const std::string& run_dir) {
  std::vector<int64_t> out;
  for (const std::string& line : read_lines(run_dir + "/train.jsonl")) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("loss")) out.push_back(j["step"].get<int64_t>());
  }
  return out;
}

void wait_for_steps(const std::string& run_dir, size_t n, const std::string& id,
                    const TempDir& dir) {
  const auto until = Clock::now() + std::chrono::seconds(120);
  while (logged_steps(run_dir).size() < n) {
    REQUIRE_MESSAGE(Clock::now() < until, "job " << id << " logged no training steps:\n"
                                                 << test::slurp(dir.path / ("slurm-" + id + ".out")));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// Waits until RUN_DIR/ledger.jsonl holds a membership event of `kind` ("join", "leave").
void wait_for_event(const std::string& run_dir, const std::string& kind, const std::string& id,
                    const TempDir& dir) {
  const auto until = Clock::now() + std::chrono::seconds(120);
  const std::string needle = "\"event\":\"" + kind + "\"";
  while (test::slurp(fs::path(run_dir) / "ledger.jsonl").find(needle) == std::string::npos) {
    REQUIRE_MESSAGE(Clock::now() < until, "no " << kind << " event in the ledger of job " << id
                                                << ":\n"
                                                << test::slurp(dir.path / ("slurm-" + id + ".out")));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

int64_t latest_step(const std::string& run_dir) {
  const std::string name = fs::read_symlink(run_dir + "/checkpoints/latest").string();
  return std::stoll(name.substr(name.find('-') + 1));
}

// A long job (a million steps) from train.sbatch, held by `job`, once it has logged 3 steps.
void start_long_job(const TempDir& dir, const std::string& run, Job& job,
                    const std::string& sbatch_flags = "") {
  const std::string cfg = write_config(dir, 1000000);
  job.id = submit(dir, "train.sbatch", cfg + " " + run, sbatch_flags);
  wait_state(job.id, {"RUNNING"}, std::chrono::seconds(60), dir);
  wait_for_steps(run, 3, job.id, dir);
}

}  // namespace

TEST_CASE("slurm: train.sbatch trains a 4-task MPI job - checkpoint - loss - logs per task") {
  need_cluster();
  TempDir dir("slurm-train");
  const std::string cfg = write_config(dir, 6);
  const std::string run = dir / "run";
  Job job{submit(dir, "train.sbatch", cfg + " " + run)};
  const std::string st =
      wait_state(job.id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, std::chrono::seconds(180), dir);
  const std::string out = test::slurp(dir.path / ("slurm-" + job.id + ".out"));
  CAPTURE(out);
  REQUIRE(st == "COMPLETED");
  CHECK(latest_step(run) == 6);
  const auto lines = read_lines(run + "/train.jsonl");
  REQUIRE(lines.size() == 6);
  const double first = nlohmann::json::parse(lines.front())["loss"].get<double>();
  const double last = nlohmann::json::parse(lines.back())["loss"].get<double>();
  CHECK(std::isfinite(last));
  CHECK(last < first);
  for (int task = 0; task < 4; ++task) {
    const char* role = task == 0 ? "coordinator" : task == 1 ? "server" : "worker";
    const fs::path log = fs::path(run) / "logs" /
                         fmt::format("rank-{}-{}.job-{}.task-{}.log", task, role, job.id, task);
    CHECK_MESSAGE(fs::exists(log), log);
  }
}

TEST_CASE("slurm: scancel --signal=USR1 to the tasks - a checkpoint - the job ends cleanly") {
  need_cluster();
  TempDir dir("slurm-usr1");
  const std::string run = dir / "run";
  Job job;
  start_long_job(dir, run, job);
  REQUIRE(sh("scancel --signal=USR1 " + job.id).second == 0);
  const std::string st = wait_state(job.id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"},
                                    std::chrono::seconds(60), dir);
  CAPTURE(test::slurp(dir.path / ("slurm-" + job.id + ".out")));
  CHECK(st == "COMPLETED");
  CHECK(job_field(job.id, "ExitCode") == "0:0");
  const int64_t k = latest_step(run);
  CHECK(k >= 3);
  CHECK(k < 1000000);
  CHECK(logged_steps(run).back() == k);
}

TEST_CASE("slurm: scancel --full --signal=USR1 (batch shell and tasks) - one checkpoint - clean end") {
  need_cluster();
  TempDir dir("slurm-usr1-full");
  const std::string run = dir / "run";
  Job job;
  // Without the requeue, so that the job's end is observable: every task gets SIGUSR1 twice (from
  // scancel, then from the batch shell's trap passing it on), and must still stop only once.
  start_long_job(dir, run, job, "--export=ALL,PTRAIN_NO_REQUEUE=1");
  REQUIRE(sh("scancel --full --signal=USR1 " + job.id).second == 0);
  const std::string st = wait_state(job.id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"},
                                    std::chrono::seconds(60), dir);
  const std::string out = test::slurp(dir.path / ("slurm-" + job.id + ".out"));
  CAPTURE(out);
  CHECK(st == "COMPLETED");
  CHECK(job_field(job.id, "ExitCode") == "0:0");
  CHECK(job_field(job.id, "Restarts") == "0");
  CHECK(out.find("SIGUSR1: every task checkpoints and stops") != std::string::npos);
  CHECK(out.find("the tasks ended (exit 0)") != std::string::npos);
  const int64_t k = latest_step(run);
  CHECK(k >= 3);
  CHECK(logged_steps(run).back() == k);
  size_t checkpoints = 0;
  for (const auto& e : fs::directory_iterator(fs::path(run) / "checkpoints")) {
    checkpoints += e.path().filename().string().rfind("step-", 0) == 0 ? 1 : 0;
  }
  CHECK(checkpoints == 1);  // checkpoint.every_steps is 0: only the stop wrote one
}

TEST_CASE("slurm: SIGUSR1 to the batch shell - checkpoint - requeue - resumes from it") {
  need_cluster();
  TempDir dir("slurm-requeue");
  const std::string run = dir / "run";
  Job job;
  start_long_job(dir, run, job);
  // What the template's `--signal=B:USR1@120` delivers before the time limit, now.
  REQUIRE(sh("scancel --batch --signal=USR1 " + job.id).second == 0);
  // The job requeues itself; it starts again once its old credential has expired (the local
  // cluster's cred_expire + 1 s = 21 s). Forcing StartTime=now races that revocation: slurmd
  // may then kill the new run ("Job credential revoked").
  wait_state(job.id, {"PENDING"}, std::chrono::seconds(60), dir);
  const int64_t k = latest_step(run);
  CHECK(k >= 3);
  wait_state(job.id, {"RUNNING"}, std::chrono::seconds(90), dir);
  CHECK(job_field(job.id, "Restarts") == "1");
  // The second run continues at step k + 1: the steps logged are 1, 2, ... without a repeat.
  const auto until = Clock::now() + std::chrono::seconds(120);
  std::vector<int64_t> steps;
  for (;;) {
    steps = logged_steps(run);
    if (!steps.empty() && steps.back() >= k + 2) break;
    REQUIRE_MESSAGE(Clock::now() < until, "no step after the requeue:\n"
                                              << test::slurp(dir.path / ("slurm-" + job.id + ".out")));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (size_t i = 0; i < steps.size(); ++i) CHECK(steps[i] == static_cast<int64_t>(i) + 1);
  const std::string out = test::slurp(dir.path / ("slurm-" + job.id + ".out"));
  CHECK(out.find("requeueing job " + job.id) != std::string::npos);
  CHECK(out.find("(restart 1)") != std::string::npos);
}

TEST_CASE("slurm: elastic-core.sbatch starts the coordinator and servers - a worker joins by RUN_DIR") {
  need_cluster();
  TempDir dir("slurm-core");
  const std::string cfg = write_config(dir, 8, "workers: 1, servers: 2");
  const std::string run = dir / "run";
  Job core{submit(dir, "elastic-core.sbatch", cfg + " " + run, "-n 3")};
  // A worker outside the job, as a worker job would be: it needs only what RUN_DIR holds.
  const auto until = Clock::now() + std::chrono::seconds(60);
  while (!fs::exists(run + "/coordinator.addr")) {
    REQUIRE_MESSAGE(Clock::now() < until, "no coordinator.addr:\n"
                                              << test::slurp(dir.path / ("slurm-" + core.id + ".out")));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const std::string addr = read_lines(run + "/coordinator.addr").at(0);
  const auto w = test::start_ptrain({"worker", "--coordinator", addr, "--secret-file",
                                     run + "/secret", "--threads", "1"},
                                    dir / "worker.err");
  CHECK_MESSAGE(test::wait_ptrain(w, std::chrono::seconds(120)) == 0, test::slurp(dir / "worker.err"));
  const std::string st = wait_state(core.id, {"COMPLETED", "FAILED", "CANCELLED"},
                                    std::chrono::seconds(60), dir);
  CHECK(st == "COMPLETED");
  CHECK(latest_step(run) == 8);
  for (int task = 0; task < 3; ++task) {
    CHECK(fs::exists(fs::path(run) / "logs" / fmt::format("core.job-{}.task-{}.log", core.id, task)));
  }
}

TEST_CASE("slurm: elastic pair - a worker job added and one cancelled while it trains") {
  need_cluster();
  // Worker join (`ptrain worker --run-dir`) is what the workers' template runs: without it in
  // this build, say so and skip.
  const auto [help, hrc] = sh(std::string("'") + PTRAIN_TEST_BINARY + "' worker --help");
  if (help.find("--run-dir") == std::string::npos) {
    std::cout << "SKIPPED: this ptrain has no `worker --run-dir` (worker join), which "
                 "elastic-workers.sbatch runs"
              << std::endl;
    std::_Exit(77);
  }
  TempDir dir("slurm-elastic");
  const std::string cfg =
      write_config(dir, 1000000, "workers: 1, min_workers: 1, servers: 1", /*batch_size=*/8);
  const std::string run = dir / "run";
  Job core{submit(dir, "elastic-core.sbatch", cfg + " " + run)};
  Job workers{submit(dir, "elastic-workers.sbatch", run, "--array=0-1")};
  wait_for_steps(run, 3, core.id, dir);
  Job more{submit(dir, "elastic-workers.sbatch", run)};
  wait_for_event(run, "join", core.id, dir);  // its worker joins the running job
  REQUIRE(sh("scancel " + workers.id + "_0").second == 0);  // one worker leaves
  wait_for_event(run, "leave", core.id, dir);
  wait_for_steps(run, logged_steps(run).size() + 5, core.id, dir);  // and training goes on
  // SIGUSR1 to the core job's tasks: the coordinator checkpoints and stops every role (the
  // servers keep serving until its Shutdown), and the job ends cleanly.
  REQUIRE(sh("scancel --signal=USR1 " + core.id).second == 0);
  const std::string st = wait_state(core.id, {"COMPLETED", "FAILED", "CANCELLED"},
                                    std::chrono::seconds(60), dir);
  CAPTURE(test::slurp(dir.path / ("slurm-" + core.id + ".out")));
  CHECK(st == "COMPLETED");
  CHECK(job_field(core.id, "ExitCode") == "0:0");
  const int64_t k = latest_step(run);
  CHECK(k == logged_steps(run).back());
  // The workers still in the job were stopped by the coordinator's Shutdown: their jobs end too.
  for (const std::string& id : {workers.id + "_1", more.id}) {
    CHECK_MESSAGE(wait_state(id, {"COMPLETED", "FAILED", "CANCELLED"}, std::chrono::seconds(60),
                             dir) == "COMPLETED",
                  "worker job " << id << ": " << sh("tail -n 5 '" + run + "'/logs/worker.*").first);
  }
  // Membership in the ledger: the added worker joined the running job, the cancelled one left
  // (the workers present at the start are the job's first members, not joins).
  // And the data: within each data epoch no window twice, every completed epoch whole.
  LedgerCheck c = check_run_ledger(run);
  CAPTURE(c.to_json());
  CHECK(c.events["join"] >= 1);
  CHECK(c.events["leave"] >= 1);
  CHECK(c.ok());
  CHECK(c.last_step == k);
  // Logs per task, named with the SLURM job and task ids.
  const fs::path logs = fs::path(run) / "logs";
  for (int task = 0; task < 2; ++task) {
    CHECK(fs::exists(logs / fmt::format("core.job-{}.task-{}.log", core.id, task)));
  }
  CHECK(fs::exists(logs / fmt::format("worker.job-{}.task-0.log", more.id)));
}
