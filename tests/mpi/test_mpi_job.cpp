// `cluster.launch: mpi` end to end (label `mpi`): `mpirun` starts real `ptrain run` ranks on this
// machine (as root: --allow-run-as-root; more ranks than cores: --oversubscribe; threaded ranks:
// --bind-to none; shared memory without the kernel's cross-memory attach, as in containers).
// Every test kills the process group it started (mpirun and its ranks) whatever happens.
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"
#include "support/tiny_job.hpp"

#include "common/io/checkpoint_format.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <thread>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::string write_config(const TempDir& dir, int64_t steps, const std::string& launch,
                         const std::string& rundir, int64_t every = 0) {
  if (!fs::exists(dir / "train.tok")) write_corpus(dir / "train.tok", 20000, 7);
  const std::string cfg = dir / (rundir + ".yaml");
  std::ofstream(cfg) << "run: {dir: " << dir / rundir << ", seed: 5, threads: 1}\n"
                     << "data: {train: train.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: " << steps << ", batch_size: 4, micro_batch: 2, "
                     << "eval_every: 0, log_every: 1}\n"
                        "cluster: {workers: 2, servers: 2, launch: " << launch
                     << ", heartbeat_s: 0.2, peer_timeout_s: 2}\n"
                        "checkpoint: {every_steps: " << every << ", resume: auto}\n";
  return cfg;
}


// mpirun -n N ptrain run CONFIG ARGS..., in a process group of its own.
test::PtrainProcess mpirun(int n, const std::vector<std::string>& args, const std::string& err) {
  std::vector<std::string> argv{PTRAIN_TEST_MPIEXEC, "--allow-run-as-root", "--oversubscribe",
                                "--bind-to", "none", "--mca",
                                "btl_vader_single_copy_mechanism", "none", "-n",
                                std::to_string(n), PTRAIN_TEST_BINARY, "run"};
  argv.insert(argv.end(), args.begin(), args.end());
  return test::start_command(argv, err);
}

// The pid of the `ptrain` process that is MPI rank `rank` of the job whose config is `cfg`.
pid_t rank_pid(const std::string& cfg, int rank) {
  const std::string want = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank);
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string cmd = test::slurp(e.path() / "cmdline");
    if (cmd.find(cfg) == std::string::npos || cmd.find("mpirun") != std::string::npos) continue;
    std::string env = test::slurp(e.path() / "environ");
    std::replace(env.begin(), env.end(), '\0', '\n');
    if (("\n" + env).find("\n" + want + "\n") != std::string::npos) return std::stoi(name);
  }
  return -1;
}

// Waits until the job under `dir`/run logged `steps` steps (and, if asked, published a
// checkpoint); kills it and fails the test after 120 s.
void wait_training(const test::PtrainProcess& p, const TempDir& dir, size_t steps,
                   bool with_checkpoint) {
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while ((with_checkpoint && !fs::exists(dir / "run/checkpoints/latest")) ||
         read_lines(dir / "run/train.jsonl").size() < steps) {
    if (Clock::now() > deadline) {
      kill(-p.pid, SIGKILL);
      test::wait_ptrain_status(p, std::chrono::seconds(10));
      FAIL("the job did not start training: " << test::slurp(dir / "err.txt"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

TEST_CASE("mpi: mpirun -n 5 trains over the MPI data plane - bitwise equal to TCP and threads") {
  TempDir dir("mpi-basic");
  const std::string cfg = write_config(dir, 5, "mpi", "run");
  const auto p = mpirun(5, {cfg}, dir / "err.txt");
  CHECK_MESSAGE(test::wait_ptrain(p, std::chrono::seconds(180)) == 0, test::slurp(dir / "err.txt"));
  const std::string err = test::slurp(dir / "err.txt");
  CHECK(err.find("data plane MPI") != std::string::npos);
  CHECK(fs::read_symlink(dir / "run/checkpoints/latest") == "step-00000005");
  CHECK(read_lines(dir / "run/train.jsonl").size() == 5);
  for (const char* log : {"rank-0-coordinator.log", "rank-1-server.log", "rank-2-server.log",
                          "rank-3-worker.log", "rank-4-worker.log"}) {
    CHECK_MESSAGE(fs::exists(dir.path / "run/logs" / log), log);
  }
  const auto mpi = final_weights(dir / "run");

  // The same job with the TCP data plane inside the same MPI launch, and as threads.
  const std::string cfg2 = write_config(dir, 5, "mpi", "run2");
  const auto q = mpirun(5, {cfg2, "--set", "cluster.transport=tcp"}, dir / "err2.txt");
  CHECK_MESSAGE(test::wait_ptrain(q, std::chrono::seconds(180)) == 0,
                test::slurp(dir / "err2.txt"));
  CHECK(test::slurp(dir / "err2.txt").find("data plane TCP") != std::string::npos);
  const auto tcp = final_weights(dir / "run2");

  const std::string cfg3 = write_config(dir, 5, "threads", "run3");
  const auto r = test::start_ptrain({"run", cfg3}, dir / "err3.txt");
  CHECK_MESSAGE(test::wait_ptrain(r) == 0, test::slurp(dir / "err3.txt"));
  const auto threads = final_weights(dir / "run3");

  REQUIRE(mpi.size() == tcp.size());
  REQUIRE(mpi.size() == threads.size());
  CHECK(std::memcmp(mpi.data(), tcp.data(), mpi.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(mpi.data(), threads.data(), mpi.size() * sizeof(float)) == 0);
}

TEST_CASE("mpi: gradient buckets and weight pieces over the MPI data plane change no bit") {
  // 1 KiB buckets: the tiny model's layers leave one by one and its weights come in ~30 pieces,
  // each an ordinary MPI bulk message; the result is bitwise the job without overlap.
  TempDir dir("mpi-overlap");
  std::vector<std::vector<float>> weights;
  for (const std::string bucket : {"0", "0.001"}) {
    const std::string name = "run-" + bucket;
    const std::string cfg = write_config(dir, 5, "mpi", name);
    const auto p = mpirun(5, {cfg, "--set", "cluster.bucket_mb=" + bucket}, dir / (name + ".err"));
    CHECK_MESSAGE(test::wait_ptrain(p, std::chrono::seconds(180)) == 0,
                  test::slurp(dir / (name + ".err")));
    CHECK(test::slurp(dir / (name + ".err")).find("data plane MPI") != std::string::npos);
    weights.push_back(final_weights(dir / name));
  }
  REQUIRE(weights[0].size() == weights[1].size());
  CHECK(std::memcmp(weights[0].data(), weights[1].data(), weights[0].size() * sizeof(float)) == 0);
}

TEST_CASE("mpi: a wrong number of ranks is refused with the number needed") {
  TempDir dir("mpi-count");
  const std::string cfg = write_config(dir, 5, "mpi", "run");
  const auto p = mpirun(3, {cfg}, dir / "err.txt");
  const int status = test::wait_ptrain_status(p, std::chrono::seconds(60));
  CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0));
  const std::string err = test::slurp(dir / "err.txt");
  CAPTURE(err);
  CHECK(err.find("this MPI job has 3 rank(s)") != std::string::npos);
  CHECK(err.find("needs 5") != std::string::npos);
  CHECK(err.find("mpirun -n 5") != std::string::npos);
}

TEST_CASE("mpi: kill -9 of a worker rank ends every rank within 10 s naming its rank - host - role") {
  TempDir dir("mpi-kill");
  const std::string cfg = write_config(dir, 100000, "mpi", "run", 2);
  const auto p = mpirun(5, {cfg}, dir / "err.txt");
  wait_training(p, dir, 4, /*with_checkpoint=*/true);
  const pid_t victim = rank_pid(cfg, 3);
  REQUIRE_MESSAGE(victim > 0, "no process for rank 3");
  const auto t0 = Clock::now();
  REQUIRE(kill(victim, SIGKILL) == 0);
  const int status = test::wait_ptrain_status(p, std::chrono::seconds(30));
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  const std::string err = test::slurp(dir / "err.txt");
  CAPTURE(err);
  CHECK(took <= 10.0);
  CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0));
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  // The coordinator names the lost rank: its role and id, host and MPI rank.
  // Rank 3 is a worker (ranks 1..2 are the servers): "worker 0 (127.0.0.1:41234) on HOST, MPI
  // rank 3 was lost (connection closed by the peer)".
  CHECK(std::regex_search(
      err, std::regex("worker [0-9]+ \\([^)]*\\) on " + std::string(host) + ", MPI rank 3 was lost")));
  // No rank is left, and the latest checkpoint still reads.
  CHECK(rank_pid(cfg, 0) < 0);
  CHECK(rank_pid(cfg, 4) < 0);
  CHECK_NOTHROW(final_weights(dir / "run"));
}

TEST_CASE("mpi: bench ps measures the MPI data plane beside TCP in one run") {
  TempDir dir("mpi-bench");
  const auto p = test::start_ptrain({"bench", "ps", "--transport", "tcp,mpi", "--servers", "1,2",
                                     "--workers", "2", "--floats", "300000", "--rounds", "2",
                                     "--json"},
                                    dir / "err.txt", dir / "out.json");
  REQUIRE_MESSAGE(test::wait_ptrain(p, std::chrono::seconds(180)) == 0,
                  test::slurp(dir / "err.txt"));
  const auto j = nlohmann::json::parse(test::slurp(dir / "out.json"));
  REQUIRE(j["results"].size() == 4);
  std::set<std::string> seen;
  for (const auto& r : j["results"]) {
    seen.insert(r["transport"].get<std::string>());
    // Every worker pushes and pulls the whole vector each round.
    CHECK(r["bytes"].get<int64_t>() == int64_t{2} * 2 * 2 * 300000 * 4);
    CHECK(r["seconds"].get<double>() > 0);
    // Each row's plain copy goes over its own medium: a TCP socket, or MPI_Send / MPI_Recv.
    CHECK(r["raw"] == r["transport"]);
    CHECK(r["raw_bytes"] == r["bytes"]);
    CHECK(r["raw_seconds"].get<double>() > 0);
  }
  CHECK(seen == std::set<std::string>{"tcp", "mpi"});
}

TEST_CASE("mpi: SIGUSR1 to one worker rank only - rank 0 checkpoints - every rank exits 0") {
  TempDir dir("mpi-usr1");
  const std::string cfg = write_config(dir, 1000000, "mpi", "run");
  const auto p = mpirun(5, {cfg}, dir / "err.txt");
  wait_training(p, dir, 3, /*with_checkpoint=*/false);
  const pid_t worker = rank_pid(cfg, 4);
  REQUIRE(worker > 0);
  REQUIRE(kill(worker, SIGUSR1) == 0);  // not to mpirun, not to rank 0: one worker only
  CHECK_MESSAGE(test::wait_ptrain(p, std::chrono::seconds(60)) == 0, test::slurp(dir / "err.txt"));
  const std::string err = test::slurp(dir / "err.txt");
  CHECK(err.find("passing it to the coordinator") != std::string::npos);
  CHECK(err.find("stopping at step") != std::string::npos);
  const std::string latest = fs::read_symlink(dir / "run/checkpoints/latest").string();
  CHECK(latest.rfind("step-", 0) == 0);
  CHECK(latest != "step-01000000");
  CHECK_NOTHROW(final_weights(dir / "run"));
}
