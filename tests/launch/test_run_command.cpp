// `ptrain run CONFIG [--set k=v]...` through the built binary (PTRAIN_TEST_BINARY): a small job
// trains and exits 0 with train.jsonl, a progress line and a final checkpoint; launch modes not
// built yet are refused; SIGTERM stops at the next step with a checkpoint and exit 0, and the
// next `ptrain run` (checkpoint.resume: auto) continues from it.
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"

#include "common/data/tokenizer.hpp"
#include "common/io/token_file.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <regex>
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
  std::ofstream(cfg) << "run: {dir: " << dir / "run" << ", seed: 5, threads: 2}\n"
                        "data: {train: train.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: " << steps << ", batch_size: 4, micro_batch: 2, "
                        "eval_every: 0, log_every: 1}\n"
                        "cluster: {workers: 2, servers: 2, launch: threads}\n"
                        "checkpoint: {every_steps: 0, resume: auto}\n";
  return cfg;
}

}  // namespace

TEST_CASE("coordinator run command: trains - logs and checkpoints - refuses a key its sync mode does not use") {
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

  const Proc q = start({"run", cfg, "--set", "cluster.staleness=2"}, dir / "err2.txt");
  CHECK(wait_exit(q) == 3);  // refused by the config (ConfigError): bsp has no staleness
  CHECK(slurp(dir / "err2.txt").find("cluster.staleness (2) applies only to cluster.sync: ssp") !=
        std::string::npos);
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

TEST_CASE("coordinator run command: a resume with a changed config is refused naming the keys - unless allowed") {
  TempDir dir("run-change");
  const std::string cfg = write_config(dir, 2);
  CHECK(wait_exit(start({"run", cfg}, dir / "err.txt")) == 0);
  // More steps and another log cadence: safe, listed, resumed.
  CHECK(wait_exit(start({"run", cfg, "--set", "train.steps=3", "train.log_every=2"}, dir / "err2.txt")) == 0);
  CHECK(slurp(dir / "err2.txt").find("resume: train.steps: 2 in the checkpoint, 3 now") != std::string::npos);
  CHECK(fs::read_symlink(dir / "run/checkpoints/latest") == "step-00000003");
  // Another learning rate and batch size: refused, both keys named with both values, nothing run.
  const Proc q = start({"run", cfg, "--set", "train.steps=4", "optim.lr=0.5", "train.batch_size=8"}, dir / "err3.txt");
  CHECK(wait_exit(q) == 3);
  const std::string err = slurp(dir / "err3.txt");
  CHECK_MESSAGE(err.find("optim.lr: ") != std::string::npos, err);
  CHECK(err.find(", 0.5 now") != std::string::npos);
  CHECK(err.find("train.batch_size: 4 in the checkpoint, 8 now") != std::string::npos);
  CHECK(err.find("--allow-config-change") != std::string::npos);
  const size_t refused = err.find("keys that change the training:");
  REQUIRE(refused != std::string::npos);
  CHECK(err.find("train.steps", refused) == std::string::npos);  // a safe key is listed, not refused
  CHECK(fs::read_symlink(dir / "run/checkpoints/latest") == "step-00000003");
  // Allowed: it resumes, warning about each key.
  const Proc r = start({"run", cfg, "--allow-config-change", "--set", "train.steps=4", "optim.lr=0.5"}, dir / "err4.txt");
  CHECK_MESSAGE(wait_exit(r) == 0, slurp(dir / "err4.txt"));
  CHECK(slurp(dir / "err4.txt").find("allowed by --allow-config-change") != std::string::npos);
  CHECK(fs::read_symlink(dir / "run/checkpoints/latest") == "step-00000004");
}

TEST_CASE("coordinator run command: --print-config prints the resolved config and runs nothing") {
  TempDir dir("run-print");
  const std::string cfg = write_config(dir, 2);
  const std::string out = std::string(dir / "out.txt");
  const Proc p = test::start_ptrain({"run", cfg, "--print-config", "--set", "train.steps=7", "optim.lr=0.002"},
                                    dir / "err.txt", out);
  CHECK(wait_exit(p) == 0);
  const std::string yaml = slurp(out);
  CHECK(yaml.find("  steps: 7\n") != std::string::npos);
  CHECK(yaml.find("  lr: 0.002\n") != std::string::npos);
  CHECK(yaml.find("  train: \"" + std::string(dir / "train.tok") + "\"\n") != std::string::npos);  // absolute
  CHECK_FALSE(fs::exists(dir / "run"));
  const Proc q = test::start_ptrain({"init", cfg, "--print-config"}, dir / "err.txt", out);
  CHECK(wait_exit(q) == 0);
  CHECK(slurp(out).find("  steps: 2\n") != std::string::npos);
}

TEST_CASE("coordinator run command: processes - samples at checkpoints - a summary - logs named by id - dated - kept on resume") {
  TempDir dir("run-outputs");
  write_corpus(dir / "train.tok", 20000, 7);
  write_corpus(dir / "val.tok", 2000, 8);
  const std::string cfg = dir / "job.yaml";
  std::ofstream(cfg) << "run: {dir: " << dir / "run" << ", seed: 5, threads: 1}\n"
                        "data: {train: train.tok, val: val.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: 4, batch_size: 4, micro_batch: 2, eval_every: 2, "
                        "log_every: 1, sample_tokens: 8}\n"
                        "cluster: {workers: 2, servers: 2, launch: processes}\n"
                        "checkpoint: {every_steps: 2, resume: auto}\n";
  REQUIRE_MESSAGE(wait_exit(start({"run", cfg}, dir / "err.txt")) == 0, slurp(dir / "err.txt"));
  const std::string err = slurp(dir / "err.txt");
  // A sample from each checkpoint, then the summary.
  CHECK_MESSAGE(err.find("---- sample from step-00000002 ----") != std::string::npos, err);
  CHECK(err.find("---- sample from step-00000004 ----") != std::string::npos);
  const size_t summary = err.find("---- run summary: ");
  REQUIRE(summary != std::string::npos);
  CHECK(summary > err.find("---- sample from step-00000004 ----"));
  CHECK(err.find("val loss    5.549 (ln V, V = 257", summary) != std::string::npos);  // ln 257
  CHECK(err.find("perplexity", summary) != std::string::npos);
  CHECK(err.find("tokens/s", summary) != std::string::npos);
  CHECK(err.find("checkpoint  ", summary) != std::string::npos);
  CHECK(err.find("step-00000004", summary) != std::string::npos);
  CHECK(err.find("report      ", summary) != std::string::npos);
  CHECK(err.find("logs        ", summary) != std::string::npos);
  CHECK(err.find("ptrain generate --checkpoint", summary) != std::string::npos);

  // Log files carry the ids their roles go by, and every line its date.
  const std::regex dated(R"(^\[\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}\] .*)");
  for (const std::string role : {"server", "worker"}) {
    for (int id = 0; id < 2; ++id) {
      const std::string log = dir / ("run/logs/" + role + "-" + std::to_string(id) + ".log");
      REQUIRE_MESSAGE(fs::exists(log), log);
      const std::string text = slurp(log);
      CHECK_MESSAGE(text.find("joined the job as " + role + " " + std::to_string(id) + "\n") != std::string::npos, text);
      const std::string other = role + " " + std::to_string(1 - id) + ":";
      CHECK_MESSAGE(text.find(other) == std::string::npos, text);  // no other id's lines
      for (const std::string& line : read_lines(log)) CHECK_MESSAGE(std::regex_match(line, dated), line);
    }
  }
  CHECK_FALSE(fs::exists(dir / "run/logs/server-pending-0.log"));
  for (const std::string& line : read_lines(dir / "run/logs/coordinator-0.log")) {
    CHECK_MESSAGE(std::regex_match(line, dated), line);
  }

  // A resume keeps the first attempt's logs, numbered; the new ones start fresh.
  const std::string first = slurp(dir / "run/logs/coordinator-0.log");
  REQUIRE_MESSAGE(wait_exit(start({"run", cfg, "--set", "train.steps=6"}, dir / "err2.txt")) == 0,
                  slurp(dir / "err2.txt"));
  CHECK(slurp(dir / "run/logs/coordinator-0.1.log") == first);
  CHECK(fs::exists(dir / "run/logs/server-1.1.log"));
  CHECK(fs::exists(dir / "run/logs/server-1.log"));
  CHECK(slurp(dir / "run/logs/coordinator-0.log").find("resum") != std::string::npos);
  CHECK(slurp(dir / "err2.txt").find("---- sample from step-00000006 ----") != std::string::npos);
  CHECK(slurp(dir / "err2.txt").find("---- sample from step-00000004 ----") == std::string::npos);
}

TEST_CASE("coordinator run command: a relative run.dir is relative to the working directory - not the config folder") {
  TempDir dir("run-reldir");
  fs::create_directories(dir / "configs");
  write_corpus(dir / "configs/train.tok", 2000, 7);
  std::ofstream(dir / "configs/job.yaml") << "run: {dir: runs/rel}\ndata: {train: train.tok}\n";
  const std::string out = dir / "out.txt";
  const Proc p = test::start_command(
      {"/bin/sh", "-c", "cd '" + std::string(dir / "") + "' && exec '" PTRAIN_TEST_BINARY
                        "' run configs/job.yaml --print-config"},
      dir / "err.txt", out);
  CHECK(wait_exit(p) == 0);
  const std::string yaml = slurp(out);
  CHECK_MESSAGE(yaml.find("  dir: \"" + (fs::path(dir / "runs/rel")).lexically_normal().string() + "\"\n") !=
                    std::string::npos,
                yaml);
  // Data paths still follow the config file.
  CHECK(yaml.find("  train: \"" + (fs::path(dir / "configs/train.tok")).lexically_normal().string() + "\"\n") !=
        std::string::npos);
}

TEST_CASE("coordinator run command: data made with another tokenizer than the checkpoint's (or data.tokenizer) is refused naming both") {
  TempDir dir("run-tokenizer");
  // Prepared data and a tokenizer of the byte tokenizer's size but another kind (a BPE of 257
  // tokens: no merges), so the model layout agrees and only the tokenizer hash tells them apart.
  {
    std::ofstream text(dir / "text.txt");
    for (int i = 0; i < 400; ++i) text << "the parameter server sums gradient number " << i << "\n%\n";
  }
  REQUIRE(wait_exit(start({"prepare", "--input", dir / "text.txt", "--doc-separator", "%", "--tokenizer", "bpe",
                           "--vocab-size", "257", "--val-fraction", "0", "--output", dir / "bpe"},
                          dir / "prep.err")) == 0);
  const std::string cfg = write_config(dir, 2);  // train.tok, tokenizer byte
  const std::string byte_hash = tokenizer_hash(*make_byte_tokenizer());
  const std::string bpe_hash = TokenFile::open(dir / "bpe").tokenizer_hash();
  REQUIRE(bpe_hash.size() == 32);
  REQUIRE(bpe_hash != byte_hash.substr(0, 32));
  // The same tokens stamped with the byte tokenizer's hash; `ptrain init` writes a step-0
  // checkpoint (tokenizer byte) on them.
  const std::vector<uint32_t> tokens = [&] {
    const TokenFile f = TokenFile::open(dir / "train.tok");
    std::vector<uint32_t> t;
    for (int64_t i = 0; i < f.size(); ++i) t.push_back(static_cast<uint32_t>(f.at(i)));
    return t;
  }();
  write_token_file(dir / "stamped.tok", 257, tokens, byte_hash);
  const std::string data = "data.train=" + (dir / "stamped.tok"), run_dir = "run.dir=" + (dir / "run");
  REQUIRE(wait_exit(start({"init", cfg, "--set", data, run_dir, "--out", dir / "init.h5"}, dir / "init.err")) == 0);

  // Starting from the byte checkpoint on data prepared with the BPE (and data.tokenizer the BPE's,
  // so the data and the config agree): refused before any role starts, naming the data, its key,
  // the checkpoint and both hashes; --allow-config-change does not lift it.
  for (bool allow : {false, true}) {
    std::vector<std::string> args{"run", cfg, "--set", "checkpoint.resume=" + (dir / "init.h5"), run_dir,
                                  "data.train=" + (dir / "bpe"), "data.tokenizer=" + (dir / "bpe/tokenizer.json")};
    if (allow) args.insert(args.begin() + 2, "--allow-config-change");
    CHECK(wait_exit(start(args, dir / "err.txt")) == 5);
    const std::string err = slurp(dir / "err.txt");
    CAPTURE(err);
    CHECK(err.find((dir / "bpe") + " (data.train) was made with tokenizer " + bpe_hash) != std::string::npos);
    CHECK(err.find("the checkpoint " + (dir / "init.h5")) != std::string::npos);
    CHECK(err.find(byte_hash.substr(0, 32)) != std::string::npos);
  }
  CHECK(!fs::exists(dir / "run/train.jsonl"));

  // A fresh start on that data with data.tokenizer byte: refused naming data.tokenizer.
  CHECK(wait_exit(start({"run", cfg, "--set", run_dir, "data.train=" + (dir / "bpe")}, dir / "err2.txt")) == 5);
  CHECK(slurp(dir / "err2.txt").find("data.tokenizer (byte) uses tokenizer " + byte_hash.substr(0, 32)) !=
        std::string::npos);

  // The checkpoint on data stamped with its own tokenizer starts and trains.
  const Proc ok = start({"run", cfg, "--set", "checkpoint.resume=" + (dir / "init.h5"), run_dir, data}, dir / "err3.txt");
  CHECK_MESSAGE(wait_exit(ok) == 0, slurp(dir / "err3.txt"));
  CHECK(read_lines(dir / "run/train.jsonl").size() == 2);
}
