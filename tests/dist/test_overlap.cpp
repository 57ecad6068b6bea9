// Overlap of communication with compute (cluster.bucket_mb) in whole jobs (label dist): real
// `ptrain run` jobs, processes over TCP and threads over the in-process wire, 2 workers, 2
// servers, 2 micro-batches per worker, 10 steps. With buckets of 1 KiB (the tiny model's layers
// leave one by one, the weights arrive in ~30 pieces) every logged loss and the final checkpoint
// are bitwise those of the same job without overlap (bucket_mb 0), in fp32 and in bf16 on the
// wire; and the two launches agree.
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"
#include "support/tiny_job.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

struct JobResult {
  std::vector<double> losses;
  std::vector<float> weights;
};

JobResult run_job(const TempDir& dir, const std::string& launch, const std::string& wire,
                  const std::string& bucket_mb, const std::string& name) {
  if (!fs::exists(dir / "train.tok")) write_corpus(dir / "train.tok", 20000, 13);
  const std::string cfg = dir / (name + ".yaml");
  std::ofstream(cfg) << "run: {dir: " << (dir / name) << ", seed: 5, threads: 1}\n"
                     << "data: {train: train.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: 10, batch_size: 8, micro_batch: 2, eval_every: 0, "
                        "log_every: 1}\n"
                        "optim: {lr: 0.01, warmup_steps: 2}\n"
                        "cluster: {workers: 2, servers: 2, launch: "
                     << launch << ", wire_dtype: " << wire << ", bucket_mb: " << bucket_mb
                     << ", heartbeat_s: 0.2, peer_timeout_s: 5}\n"
                        "checkpoint: {every_steps: 0, resume: never}\n";
  const auto p = test::start_ptrain({"run", cfg}, dir / (name + ".err"));
  REQUIRE_MESSAGE(test::wait_ptrain(p, std::chrono::seconds(240)) == 0,
                  test::slurp(dir / (name + ".err")));
  JobResult r;
  for (const auto& l : read_lines(dir / (name + "/train.jsonl"))) {
    const auto j = nlohmann::json::parse(l);
    if (j.contains("loss")) r.losses.push_back(j.at("loss").get<double>());
  }
  r.weights = final_weights(dir / name);
  return r;
}

}  // namespace

TEST_CASE("dist overlap: buckets and pieces change no bit - processes and threads - fp32 and bf16") {
  TempDir dir("dist-overlap");
  for (const std::string wire : {"fp32", "bf16"}) {
    CAPTURE(wire);
    const auto off = run_job(dir, "processes", wire, "0", wire + "-off");
    const auto on = run_job(dir, "processes", wire, "0.001", wire + "-on");
    const auto threads = run_job(dir, "threads", wire, "0.001", wire + "-threads-on");
    REQUIRE(off.losses.size() == 10);
    CHECK(off.losses.back() < off.losses.front() - 0.3);  // it trains
    CHECK(on.losses == off.losses);      // bitwise: every step's loss
    CHECK(on.weights == off.weights);    // bitwise: the final checkpoint
    CHECK(threads.losses == off.losses);
    CHECK(threads.weights == off.weights);
  }
}
