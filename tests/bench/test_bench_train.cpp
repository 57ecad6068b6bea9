// `ptrain bench train`'s step (bench/bench_train.hpp, LocalJob) against a real threads job with
// one worker and one server on the same token file: the same weights, AdamW moments, losses and
// learning rates, bitwise, after every step of a run whose gradient clipping engages and whose
// learning rate moves through warmup and the cosine. And the other way round: a step with another
// clip setting or another schedule is told apart by the same comparison.
#include "bench/bench_train.hpp"
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "launch/threads_job.hpp"
#include "support/job_test_util.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

using namespace ptrain;
using namespace ptrain::testing;

namespace {

struct BenchRun {
  std::vector<LocalStepResult> steps;
  std::vector<float> weights, m, v;
  int64_t version = 0;
};

// `steps` steps of LocalJob on `token_file` ("" = random tokens), computed on the CPU backend
// with run.threads threads (what a 1-worker threads job gives its worker).
BenchRun bench_run(const Config& c, const ParamLayout& layout, const std::string& token_file,
                   int64_t steps) {
  auto backend = make_backend("cpu", static_cast<int>(c.run.threads));
  LocalJob job(c, layout, *backend, token_file);
  BenchRun r;
  for (int64_t i = 0; i < steps; ++i) r.steps.push_back(job.run_step());
  r.weights.assign(job.weights().begin(), job.weights().end());
  r.m.assign(job.m().begin(), job.m().end());
  r.v.assign(job.v().begin(), job.v().end());
  r.version = job.version();
  return r;
}

}  // namespace

TEST_CASE("bench train: its step is the job's step - bitwise a 1-worker 1-server threads job") {
  TempDir dir("bench-train");
  Config c = small_config(dir);  // 5 steps, B 8, micro-batch 4, warmup 2, clip 1.0, decay 0.1
  const ParamLayout layout = layout_for(c);
  const RunSummary job = run_threads_job(c);
  REQUIRE(job.final_step == c.train.steps);
  const CheckpointData ref = read_checkpoint(job.last_checkpoint, layout, true);
  std::vector<nlohmann::json> log;
  for (const auto& l : read_lines(c.run.dir + "/train.jsonl")) {
    const auto j = nlohmann::json::parse(l);
    if (j.contains("loss")) log.push_back(j);
  }
  REQUIRE(static_cast<int64_t>(log.size()) == c.train.steps);

  const BenchRun b = bench_run(c, layout, c.data.train, c.train.steps);
  CHECK(b.version == c.train.steps);
  CHECK(b.weights == ref.params);
  CHECK(b.m == ref.m);
  CHECK(b.v == ref.v);
  for (size_t i = 0; i < b.steps.size(); ++i) {
    CAPTURE(i);
    CHECK(b.steps[i].step == static_cast<int64_t>(i));
    CHECK(b.steps[i].tokens == c.train.batch_size * c.model.seq_len);
    CHECK(b.steps[i].loss == log[i]["loss"].get<double>());
    CHECK(b.steps[i].lr == log[i]["lr"].get<double>());
  }
  CHECK(job.final_loss == b.steps.back().loss);

  // The comparison covers clipping and the schedule: the clip engaged, and the learning rate
  // moved (warmup: lr/2, lr; then the cosine from lr towards min_lr at step 5: at least 4 values).
  const bool clipped = std::any_of(b.steps.begin(), b.steps.end(),
                                   [](const LocalStepResult& s) { return s.clip_coef < 1.0f; });
  CHECK(clipped);
  std::set<double> lrs;
  for (const auto& s : b.steps) lrs.insert(s.lr);
  CHECK(lrs.size() >= 4);

  // Controls: another clip setting, or a constant learning rate, changes the weights (so a bench
  // with its own clip or schedule would fail the comparison above).
  Config no_clip = c;
  no_clip.optim.grad_clip = 0.0;
  const BenchRun nc = bench_run(no_clip, layout, c.data.train, c.train.steps);
  CHECK(nc.weights != ref.params);
  for (const auto& s : nc.steps) CHECK(s.clip_coef == 1.0f);
  Config constant_lr = c;
  constant_lr.optim.warmup_steps = 0;
  constant_lr.optim.min_lr = constant_lr.optim.lr;
  const BenchRun cl = bench_run(constant_lr, layout, c.data.train, c.train.steps);
  CHECK(cl.weights != ref.params);
  for (const auto& s : cl.steps) CHECK(s.lr == c.optim.lr);
}

TEST_CASE("bench train: random tokens - the same batch each step - repeatable and finite") {
  TempDir dir("bench-train-random");
  Config c = small_config(dir);
  const ParamLayout layout = layout_for(c);
  const BenchRun a = bench_run(c, layout, "", 3);
  const BenchRun b = bench_run(c, layout, "", 3);
  CHECK(a.weights == b.weights);
  for (size_t i = 0; i < a.steps.size(); ++i) {
    CAPTURE(i);
    CHECK(std::isfinite(a.steps[i].loss));
    CHECK(a.steps[i].loss == b.steps[i].loss);
    CHECK(a.steps[i].tokens == c.train.batch_size * c.model.seq_len);
    CHECK(a.steps[i].grad_norm > 0.0);
  }
  // Training on one batch over and over: its loss falls.
  CHECK(a.steps.back().loss < a.steps.front().loss);
}

TEST_CASE("bench train: a token file of a larger vocabulary than the model's is refused by name") {
  TempDir dir("bench-train-vocab");
  Config c = small_config(dir);
  const std::string big = dir / "big.tok";
  write_token_file(big, 50000, std::vector<uint32_t>(200, 3));
  auto backend = make_backend("cpu", 1);
  const ParamLayout layout = layout_for(c);
  CHECK_THROWS_WITH_AS(LocalJob(c, layout, *backend, big),
                       doctest::Contains("big.tok was written with a vocabulary of 50000"),
                       DataError);
}
