// `cluster.wire_dtype: bf16` in whole threads jobs: the job trains (loss falls), its loss curve
// differs from the fp32 job's only by the rounding (close, not equal), it repeats bitwise, and the
// data plane moves half the bytes — in train.jsonl (bytes_per_token) and in the figures /metrics
// serves (ptrain_pushed_bytes_total, ptrain_pulled_bytes_total, ptrain_bytes_per_token). Also the
// config key: its values, and a clear error for any other.
#include "common/config/config.hpp"
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "launch/threads_job.hpp"
#include "status/status_http.hpp"
#include "support/job_test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <sstream>

using namespace ptrain;
using namespace ptrain::testing;

namespace {

std::vector<nlohmann::json> step_lines(const Config& c) {
  std::vector<nlohmann::json> out;
  for (const auto& l : read_lines(c.run.dir + "/train.jsonl")) {
    auto j = nlohmann::json::parse(l);
    if (!j.contains("val_loss")) out.push_back(std::move(j));
  }
  return out;
}

JobStatus final_status(const Config& c) {
  std::ifstream in(c.run.dir + "/status.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_status_json(ss.str());
}

// The value of an unlabelled sample in Prometheus text.
double metric(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + " ");
  REQUIRE_MESSAGE(at != std::string::npos, name);
  return std::stod(text.substr(at + name.size() + 2));
}

}  // namespace

TEST_CASE("wire dtype: a bf16 threads job trains - close to fp32 - repeats bitwise - half the bytes") {
  TempDir dir("wire-bf16");
  Config fp32 = small_config(dir);
  fp32.train.steps = 12;
  fp32.cluster.workers = 2;
  fp32.cluster.servers = 2;
  Config bf16 = fp32;
  bf16.cluster.wire_dtype = WireDtype::kBf16;
  bf16.run.dir = dir / "run-bf16";
  Config again = bf16;
  again.run.dir = dir / "run-bf16-again";
  run_threads_job(fp32);
  run_threads_job(bf16);
  run_threads_job(again);

  const auto a = step_lines(fp32), b = step_lines(bf16);
  REQUIRE(a.size() == 12);
  REQUIRE(b.size() == 12);
  // Trains: the loss falls.
  CHECK(b.back().at("loss").get<double>() < b.front().at("loss").get<double>() - 0.3);
  // Only the rounding differs: the same curve within a small margin, but not the same numbers.
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    const double la = a[i].at("loss"), lb = b[i].at("loss");
    CHECK(std::fabs(la - lb) <= 0.02 * la);
    differs = differs || la != lb;
  }
  CHECK(differs);
  const ParamLayout layout = layout_for(fp32);
  const auto wa = read_checkpoint(fp32.run.dir + "/checkpoints/latest/checkpoint.h5", layout, false);
  const auto wb = read_checkpoint(bf16.run.dir + "/checkpoints/latest/checkpoint.h5", layout, false);
  const auto wc = read_checkpoint(again.run.dir + "/checkpoints/latest/checkpoint.h5", layout, false);
  // After 12 AdamW steps at lr 1e-2 the whole vector differs by ~1.3% (tiny gradients whose
  // bf16 rounding flips an update); a tensor that started at zero (LayerNorm biases) sees the
  // most, relative to its small norm.
  const double all = rel_l2(wb.params.data(), wa.params.data(), layout.total());
  const Worst w = worst_rel_l2(layout, wb.params, wa.params);
  INFO("whole vector rel L2 " << all << "; worst tensor " << w.tensor << " rel L2 " << w.value);
  CHECK(all > 0);
  CHECK(all < 0.03);
  CHECK(w.value < 0.15);
  CHECK(wb.params == wc.params);  // deterministic: bitwise the same on a repeat

  // Half the data-plane bytes: per token in train.jsonl, and in what /metrics serves (the
  // frame headers and the fp32 pad are the only difference from exactly 1/2).
  for (size_t i = 0; i < a.size(); ++i) {
    const double ratio = b[i].at("bytes_per_token").get<double>() /
                         a[i].at("bytes_per_token").get<double>();
    CHECK(ratio > 0.49);
    CHECK(ratio < 0.52);
  }
  const JobStatus sa = final_status(fp32), sb = final_status(bf16);
  const std::string ma = render_prometheus(sa), mb = render_prometheus(sb);
  for (const char* name : {"ptrain_pushed_bytes_total", "ptrain_pulled_bytes_total",
                           "ptrain_bytes_per_token"}) {
    const double ratio = metric(mb, name) / metric(ma, name);
    INFO(name << " bf16/fp32 = " << ratio);
    CHECK(ratio > 0.49);
    CHECK(ratio < 0.52);
  }
  // bytes_per_token: a step pushes and pulls every parameter once per worker (4 bytes each way
  // in fp32) for its B*T tokens.
  const double fp32_per_token = 2.0 * 2 * 4 * static_cast<double>(layout.total()) / (8 * 16);
  CHECK(metric(ma, "ptrain_bytes_per_token") == doctest::Approx(fp32_per_token).epsilon(0.02));
}

TEST_CASE("wire dtype: cluster.wire_dtype takes fp32 or bf16 - anything else is refused naming the key") {
  auto parse = [](const std::string& value) {
    return parse_config_text("data:\n  train: t.tok\ncluster:\n  wire_dtype: " + value + "\n",
                             "cfg.yaml", "/base", {});
  };
  CHECK(parse("bf16").cluster.wire_dtype == WireDtype::kBf16);
  CHECK(parse("fp32").cluster.wire_dtype == WireDtype::kFp32);
  CHECK(Config{}.cluster.wire_dtype == WireDtype::kFp32);
  CHECK_THROWS_WITH_AS(parse("fp16"),
                       "cfg.yaml:4:15: cluster.wire_dtype: expected one of fp32, bf16, got 'fp16'",
                       ConfigError);
}

TEST_CASE("wire dtype: error feedback - a bf16 job with it trains - differs from plain bf16 - repeats bitwise - the same bytes") {
  TempDir dir("wire-ef");
  Config bf16 = small_config(dir);
  bf16.train.steps = 12;
  bf16.cluster.workers = 2;
  bf16.cluster.servers = 2;
  bf16.cluster.wire_dtype = WireDtype::kBf16;
  Config ef = bf16;
  ef.cluster.wire_error_feedback = true;
  ef.run.dir = dir / "run-ef";
  Config again = ef;
  again.run.dir = dir / "run-ef-again";
  run_threads_job(bf16);
  run_threads_job(ef);
  run_threads_job(again);
  const auto a = step_lines(bf16), b = step_lines(ef);
  REQUIRE(b.size() == 12);
  CHECK(b.back().at("loss").get<double>() < b.front().at("loss").get<double>() - 0.3);
  for (size_t i = 0; i < a.size(); ++i) {
    // The pushes carry the same number of values: the same bytes.
    CHECK(b[i].at("bytes_per_token").get<double>() == a[i].at("bytes_per_token").get<double>());
  }
  const ParamLayout layout = layout_for(bf16);
  const auto wa = read_checkpoint(bf16.run.dir + "/checkpoints/latest/checkpoint.h5", layout, false);
  const auto wb = read_checkpoint(ef.run.dir + "/checkpoints/latest/checkpoint.h5", layout, false);
  const auto wc = read_checkpoint(again.run.dir + "/checkpoints/latest/checkpoint.h5", layout, false);
  CHECK(wb.params != wa.params);  // the residuals changed what the servers applied
  CHECK(rel_l2(wb.params.data(), wa.params.data(), layout.total()) < 0.03);
  CHECK(wb.params == wc.params);  // deterministic
}

TEST_CASE("wire dtype: cluster.wire_error_feedback needs bf16 - refused with fp32 naming both keys") {
  auto parse = [](const std::string& cluster) {
    return parse_config_text("data:\n  train: t.tok\ncluster:\n" + cluster, "cfg.yaml", "/base",
                             {});
  };
  CHECK_FALSE(Config{}.cluster.wire_error_feedback);
  CHECK(parse("  wire_dtype: bf16\n  wire_error_feedback: true\n").cluster.wire_error_feedback);
  CHECK_THROWS_WITH_AS(parse("  wire_error_feedback: true\n"),
                       doctest::Contains("cluster.wire_error_feedback: true applies only to "
                                         "cluster.wire_dtype: bf16"),
                       ConfigError);
}
