// `ptrain bench train CONFIG --compare-launch` (bench_ps.hpp): the step-time overhead of
// cluster.launch processes against threads for the same 2-worker/2-server job.
#include "common/config/config.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "bench/bench_ps.hpp"
#include "launch/process_job.hpp"
#include "launch/threads_job.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

namespace ptrain {
namespace {

namespace fs = std::filesystem;

struct LaunchResult {
  std::string launch;
  double mean_step_s = 0;
  int64_t steps_timed = 0;
  double wall_s = 0;
};

// Mean seconds per step after `warmup` steps, from RUN_DIR/train.jsonl (elapsed_s per step).
LaunchResult read_steps(const std::string& run_dir, int64_t warmup, const std::string& launch) {
  std::ifstream in(run_dir + "/train.jsonl");
  std::vector<std::pair<int64_t, double>> pts;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("elapsed_s") || !j.contains("step")) continue;
    pts.emplace_back(j["step"].get<int64_t>(), j["elapsed_s"].get<double>());
  }
  if (pts.size() < 2) {
    throw IoError(fmt::format("bench train --compare-launch: {} logged {} steps in {}", launch,
                              pts.size(), run_dir));
  }
  size_t first = std::min<size_t>(static_cast<size_t>(std::max<int64_t>(warmup, 1)) - 1,
                                  pts.size() - 2);
  LaunchResult r;
  r.launch = launch;
  r.steps_timed = pts.back().first - pts[first].first;
  r.mean_step_s = (pts.back().second - pts[first].second) / static_cast<double>(r.steps_timed);
  return r;
}

}  // namespace

int run_bench_compare_launch(const CompareLaunchOptions& o) {
  if (o.steps < 1 || o.warmup < 1) {
    throw UsageError("bench train --compare-launch: --steps and --warmup must be >= 1");
  }
  std::vector<ConfigOverride> base;
  for (const auto& s : o.sets) base.push_back(parse_override(s));
  const Config probe = load_config(o.config, base);
  // The token file must carry the tokenizer's vocabulary (the jobs check it); tokens are drawn
  // below both it and model.vocab_size.
  const int64_t vocab = load_tokenizer(probe.data.tokenizer)->vocab_size();
  const fs::path dir = fs::temp_directory_path() /
                       fmt::format("ptrain-bench-launch-{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  // Random tokens: enough windows for every step of both runs without a data-epoch wrap.
  const int64_t total_steps = o.warmup + o.steps;
  const int64_t tokens = (probe.model.seq_len + 1) * probe.train.batch_size * (total_steps + 2) + 1;
  std::vector<uint32_t> toks(static_cast<size_t>(tokens));
  std::mt19937_64 rng(probe.run.seed);
  const auto real_vocab = static_cast<uint64_t>(
      probe.model.vocab_size > 0 ? std::min<int64_t>(vocab, probe.model.vocab_size) : vocab);
  for (auto& t : toks) t = static_cast<uint32_t>(rng() % real_vocab);
  const std::string train = (dir / "train.tok").string();
  write_token_file(train, vocab, toks);

  std::vector<LaunchResult> results;
  try {
    for (const std::string launch : {"threads", "processes"}) {
      const std::string run_dir = (dir / launch).string();
      std::vector<std::string> sets = o.sets;
      for (const std::string& s : std::vector<std::string>
           {"cluster.workers=2", "cluster.servers=2", "cluster.launch=" + launch,
            "train.steps=" + std::to_string(total_steps), "train.log_every=1",
            "train.eval_every=0", "data.train=" + train, "data.val=", "run.dir=" + run_dir,
            "checkpoint.every_steps=0", "checkpoint.resume=never"}) {
        sets.push_back(s);
      }
      std::vector<ConfigOverride> ov;
      for (const auto& s : sets) ov.push_back(parse_override(s));
      const Config cfg = load_config(o.config, ov);
      spdlog::info("bench train --compare-launch: {} steps with cluster.launch {}", total_steps,
                   launch);
      const auto t0 = std::chrono::steady_clock::now();
      if (launch == "threads") {
        run_threads_job(cfg);
      } else {
        ProcessJobOptions po;
        po.config_path = o.config;
        po.sets = sets;
        const int rc = run_processes_job(cfg, po);
        if (rc != 0) {
          throw IoError(fmt::format("bench train --compare-launch: the processes job exited {} "
                                    "(logs in {}/logs)", rc, run_dir));
        }
      }
      LaunchResult r = read_steps(run_dir, o.warmup, launch);
      r.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      results.push_back(r);
    }
  } catch (...) {
    spdlog::error("bench train --compare-launch: run folders kept in {}", dir.string());
    throw;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  const double ratio = results[1].mean_step_s / results[0].mean_step_s;
  if (o.json) {
    nlohmann::json j = {{"bench", "train-compare-launch"},
                        {"config", probe.source},
                        {"workers", 2},
                        {"servers", 2},
                        {"batch_size", probe.train.batch_size},
                        {"warmup_steps", o.warmup},
                        {"steps", o.steps}};
    for (const auto& r : results) {
      j[r.launch] = {{"mean_step_s", r.mean_step_s}, {"steps_timed", r.steps_timed},
                     {"wall_s", r.wall_s}};
    }
    j["ratio"] = ratio;
    j["overhead_percent"] = (ratio - 1) * 100;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("bench train --compare-launch %s: 2 workers, 2 servers, batch %lld, %lld timed "
                "steps after %lld\n",
                probe.source.c_str(), static_cast<long long>(probe.train.batch_size),
                static_cast<long long>(o.steps), static_cast<long long>(o.warmup));
    for (const auto& r : results) {
      std::printf("  %-10s %.4f s/step (%lld steps; whole run %.1f s)\n", r.launch.c_str(),
                  r.mean_step_s, static_cast<long long>(r.steps_timed), r.wall_s);
    }
    std::printf("  processes/threads %.3f (overhead %+.1f%%)\n", ratio, (ratio - 1) * 100);
  }
  return 0;
}

}  // namespace ptrain
