// A job's inputs are checked before any role starts (launch/preflight.hpp), fast and by name:
// absurd sizes (bounds on counts, a memory estimate against run.max_memory), token files whose
// vocabulary exceeds the model's, a resume checkpoint written for another model, a checkpoint
// folder that cannot be written; and `ptrain run` fails so, in well under a second, with no role
// started.
#include "common/config/config.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/token_file.hpp"
#include "coordinator/start_state.hpp"
#include "launch/preflight.hpp"
#include "support/job_test_util.hpp"
#include "support/log_capture.hpp"
#include "support/ptrain_process.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

TEST_CASE("preflight: counts have upper bounds naming the key") {
  for (const auto& [set, key] : std::vector<std::pair<std::string, std::string>>{
           {"model.n_layer=100000", "model.n_layer"},
           {"model.n_embd=1000000", "model.n_embd"},
           {"model.seq_len=100000000", "model.seq_len"},
           {"train.batch_size=1000000000", "train.batch_size"},
           {"cluster.workers=100000", "cluster.workers"}}) {
    CAPTURE(set);
    const std::string want = key + " must be";
    CHECK_THROWS_WITH_AS(parse_config_text("data: {train: t.tok}\n", "x.yaml", "/tmp",
                                           {parse_override(set)}),
                         doctest::Contains(want.c_str()), ConfigError);
  }
}

TEST_CASE("preflight: the memory estimate names run.max_memory and the keys behind it") {
  TempDir dir("preflight-mem");
  Config c = small_config(dir);
  const MemoryEstimate small = estimate_memory(c, 257);
  c.train.micro_batch = 4096;
  c.train.batch_size = 4096;
  c.model.seq_len = 4096;
  const MemoryEstimate big = estimate_memory(c, 257);
  CHECK(big.total_bytes > 100 * small.total_bytes);
  c.run.max_memory = 1 << 30;
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(preflight_job(c), doctest::Contains("run.max_memory"), ConfigError);
  try {
    preflight_job(c);
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    CHECK(what.find("each worker") != std::string::npos);
    CHECK(what.find("train.micro_batch") != std::string::npos);
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 1s);
  // The same job within its limit passes.
  Config ok = small_config(dir);
  ok.run.max_memory = int64_t{1} << 40;
  preflight_job(ok);
  CHECK(available_memory() > 0);
}

namespace {

// A checkpoint at `path` written by a run of `written_by` (its layout and stored config), at `step`.
void write_resume_checkpoint(const std::string& path, const Config& written_by, int64_t step) {
  const ParamLayout layout = layout_for(written_by);
  CheckpointData d;
  d.params.assign(static_cast<size_t>(layout.total()), 0.5f);
  d.meta.step = step;
  d.meta.config_yaml = written_by.to_yaml();
  d.meta.tokenizer_json = make_byte_tokenizer()->to_json();  // the data.tokenizer of small_config
  write_checkpoint_file(path, layout, d);
}

}  // namespace

TEST_CASE("preflight: token files - resume checkpoint - writable folders") {
  TempDir dir("preflight-inputs");
  const Config good = small_config(dir);
  SUBCASE("a token file whose vocabulary exceeds the model's") {
    Config c = good;
    c.data.val = dir / "val.tok";
    std::vector<uint32_t> toks(200, 5);
    toks[100] = 299;
    write_token_file(c.data.val, 300, toks);
    CHECK_THROWS_WITH_AS(preflight_job(c), doctest::Contains("val.tok (data.val) was written with a vocabulary of 300"),
                         DataError);
  }
  SUBCASE("a resume checkpoint written for another model") {
    Config other = good;
    other.model.n_embd = 16;
    const std::string ckpt = dir / "other.h5";
    write_resume_checkpoint(ckpt, other, 0);
    Config c = good;
    c.checkpoint.resume = ckpt;
    CHECK_THROWS_WITH_AS(preflight_job(c), doctest::Contains("different model config"),
                         CheckpointError);
  }
  SUBCASE("a compatible resume checkpoint: checked silently - the coordinator reports it once") {
    Config before = good;
    before.train.steps = good.train.steps + 7;  // a difference a resume allows, and reports
    const std::string ckpt = dir / "same.h5";
    write_resume_checkpoint(ckpt, before, 2);
    Config c = good;
    c.checkpoint.resume = ckpt;
    test::LogCapture log;
    preflight_job(c);
    CHECK(log.count("train.steps") == 0);
    const StartState st = load_start_state(c, layout_for(good));
    CHECK(st.step == 2);
    CAPTURE(log.all());
    CHECK(log.count("resume: train.steps") == 1);
  }
  SUBCASE("a checkpoint folder that cannot be made") {
    Config c = good;
    fs::create_directories(c.run.dir);
    std::ofstream(c.run.dir + "/checkpoints") << "a file, not a folder\n";
    CHECK_THROWS_WITH_AS(preflight_job(c), doctest::Contains("checkpoints"), IoError);
  }
}

TEST_CASE("preflight: ptrain run refuses a bad token file before any role starts") {
  TempDir dir("preflight-run");
  std::vector<uint32_t> toks(5000, 7);
  toks[1000] = 280;  // only valid for the file's own claimed vocabulary
  write_token_file(dir / "train.tok", 300, toks);
  const std::string cfg = dir / "job.yaml";
  std::ofstream(cfg) << "run: {dir: " << dir / "run" << ", seed: 5, threads: 1}\n"
                        "data: {train: train.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: 30, batch_size: 4, micro_batch: 2, eval_every: 0, "
                        "log_every: 1}\n"
                        "cluster: {workers: 1, servers: 1, launch: processes}\n"
                        "checkpoint: {every_steps: 0, resume: never}\n";
  const auto t0 = std::chrono::steady_clock::now();
  const test::PtrainProcess p = test::start_ptrain({"run", cfg}, dir / "err.txt");
  const int rc = test::wait_ptrain(p);
  const std::string err = test::slurp(dir / "err.txt");
  CAPTURE(err);
  CHECK(rc == 5);  // DataError
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  CHECK(err.find("train.tok (data.train) was written with a vocabulary of 300") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "run/logs/coordinator-0.log"));  // no role was started
}
