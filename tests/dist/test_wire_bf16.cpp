// `cluster.wire_dtype: bf16` in a `cluster.launch: processes` job (label dist): real `ptrain`
// processes, pushes and pulls over TCP in bf16. The job trains (loss falls), equals the bf16
// threads job (the same rounding in both launches), differs from the fp32 processes job only by
// the rounding, and moves half the bytes per token.
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"
#include "support/tiny_job.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

std::string write_job(const TempDir& dir, const std::string& launch, const std::string& wire,
                      const std::string& rundir) {
  if (!fs::exists(dir / "train.tok")) write_corpus(dir / "train.tok", 20000, 11);
  const std::string cfg = dir / (rundir + ".yaml");
  std::ofstream(cfg) << "run: {dir: " << (dir / rundir) << ", seed: 5, threads: 1}\n"
                     << "data: {train: train.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: 10, batch_size: 4, micro_batch: 2, eval_every: 0, "
                        "log_every: 1}\n"
                        "optim: {lr: 0.01, warmup_steps: 2}\n"
                        "cluster: {workers: 2, servers: 2, launch: "
                     << launch << ", wire_dtype: " << wire
                     << ", heartbeat_s: 0.2, peer_timeout_s: 5}\n"
                        "checkpoint: {every_steps: 0, resume: never}\n";
  return cfg;
}

std::vector<nlohmann::json> run_job(const TempDir& dir, const std::string& launch,
                                    const std::string& wire, const std::string& rundir) {
  const std::string cfg = write_job(dir, launch, wire, rundir);
  const auto p = test::start_ptrain({"run", cfg}, dir / (rundir + ".err"));
  REQUIRE_MESSAGE(test::wait_ptrain(p, std::chrono::seconds(240)) == 0,
                  test::slurp(dir / (rundir + ".err")));
  std::vector<nlohmann::json> out;
  for (const auto& l : read_lines(dir / (rundir + "/train.jsonl"))) {
    out.push_back(nlohmann::json::parse(l));
  }
  return out;
}

}  // namespace

TEST_CASE("dist: a bf16-wire processes job trains - equals bf16 threads - near fp32 - half the bytes") {
  TempDir dir("dist-bf16");
  const auto bf = run_job(dir, "processes", "bf16", "bf16");
  const auto fp = run_job(dir, "processes", "fp32", "fp32");
  const auto th = run_job(dir, "threads", "bf16", "bf16-threads");
  REQUIRE(bf.size() == 10);
  REQUIRE(fp.size() == 10);
  CHECK(bf.back().at("loss").get<double>() < bf.front().at("loss").get<double>() - 0.3);
  for (size_t i = 0; i < bf.size(); ++i) {
    const double lb = bf[i].at("loss"), lf = fp[i].at("loss");
    CHECK(std::fabs(lb - lf) <= 0.02 * lf);
    const double ratio = bf[i].at("bytes_per_token").get<double>() /
                         fp[i].at("bytes_per_token").get<double>();
    CHECK(ratio > 0.49);
    CHECK(ratio < 0.53);
  }
  const ParamLayout layout = tiny_layout();
  const auto wb = final_weights(dir / "bf16"), wf = final_weights(dir / "fp32"),
             wt = final_weights(dir / "bf16-threads");
  const Worst near_fp32 = worst_rel_l2(layout, wb, wf);
  INFO("bf16 vs fp32: worst tensor " << near_fp32.tensor << " rel L2 " << near_fp32.value);
  CHECK(near_fp32.value > 0);
  CHECK(near_fp32.value < 0.05);
  // Both launches round the same values the same way: TCP and the in-process transport carry
  // the same frames.
  const Worst launches = worst_rel_l2(layout, wb, wt);
  INFO("processes vs threads (bf16): worst tensor " << launches.tensor << " rel L2 "
                                                    << launches.value);
  CHECK(launches.value <= 1e-6);
}
