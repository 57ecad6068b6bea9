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
#include <algorithm>
#include <random>

namespace ptrain {
namespace {

namespace fs = std::filesystem;

struct LaunchResult {
  std::string launch;
  int64_t workers = 0;
  int64_t repeat = 0;
  double mean_step_s = 0;
  double wait_s = 0;    // mean wait_s of the timed steps (train.jsonl)
  double pull_s = 0;    // mean pull_s of the timed steps
  double tokens_per_s = 0;
  int64_t steps_timed = 0;
  double wall_s = 0;
};

// Mean seconds per step after `warmup` steps, from RUN_DIR/train.jsonl (elapsed_s per step), and
// the mean wait and pull phases and tokens/s over the same steps.
LaunchResult read_steps(const std::string& run_dir, int64_t warmup, const std::string& launch) {
  std::ifstream in(run_dir + "/train.jsonl");
  struct Point {
    int64_t step;
    double elapsed, wait, pull;
    int64_t tokens;
  };
  std::vector<Point> pts;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("elapsed_s") || !j.contains("step") ||
        !j.contains("wait_s")) {
      continue;
    }
    pts.push_back({j["step"].get<int64_t>(), j["elapsed_s"].get<double>(),
                   j["wait_s"].get<double>(), j["pull_s"].get<double>(),
                   j["tokens"].get<int64_t>()});
  }
  if (pts.size() < 2) {
    throw IoError(fmt::format("bench train --compare-launch: {} logged {} steps in {}", launch,
                              pts.size(), run_dir));
  }
  size_t first = std::min<size_t>(static_cast<size_t>(std::max<int64_t>(warmup, 1)) - 1,
                                  pts.size() - 2);
  LaunchResult r;
  r.launch = launch;
  r.steps_timed = pts.back().step - pts[first].step;
  const double span = pts.back().elapsed - pts[first].elapsed;
  r.mean_step_s = span / static_cast<double>(r.steps_timed);
  r.tokens_per_s = static_cast<double>(pts.back().tokens - pts[first].tokens) / span;
  for (size_t i = first + 1; i < pts.size(); ++i) {  // log_every 1: one line per step
    r.wait_s += pts[i].wait;
    r.pull_s += pts[i].pull;
  }
  r.wait_s /= static_cast<double>(pts.size() - first - 1);
  r.pull_s /= static_cast<double>(pts.size() - first - 1);
  return r;
}

// "min–max" of `xs`.
std::string range_of(const std::vector<double>& xs, const char* format) {
  const auto [lo, hi] = std::minmax_element(xs.begin(), xs.end());
  return fmt::format(fmt::runtime(format), *lo) + "–" + fmt::format(fmt::runtime(format), *hi);
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

  if (o.repeats < 1 || o.workers.empty()) {
    throw UsageError("bench train --compare-launch: --repeats must be >= 1 and --launch-workers "
                     "must name at least one worker count");
  }
  for (int64_t w : o.workers) {
    if (w < 1 || w > probe.train.batch_size) {
      throw UsageError(fmt::format("bench train --compare-launch: --launch-workers {} is outside "
                                   "[1, train.batch_size {}]", w, probe.train.batch_size));
    }
  }
  std::vector<LaunchResult> results;
  try {
    for (int64_t rep = 0; rep < o.repeats; ++rep) {
      for (const int64_t workers : o.workers) {
        for (const std::string launch : {"threads", "processes"}) {
          const std::string run_dir =
              (dir / fmt::format("{}-w{}-{}", launch, workers, rep)).string();
          std::vector<std::string> sets = o.sets;
          for (const std::string& s : std::vector<std::string>
               {"cluster.workers=" + std::to_string(workers), "cluster.servers=2",
                "cluster.launch=" + launch, "train.steps=" + std::to_string(total_steps),
                "train.log_every=1", "train.eval_every=0", "data.train=" + train, "data.val=",
                "run.dir=" + run_dir, "checkpoint.every_steps=0", "checkpoint.resume=never"}) {
            sets.push_back(s);
          }
          std::vector<ConfigOverride> ov;
          for (const auto& s : sets) ov.push_back(parse_override(s));
          const Config cfg = load_config(o.config, ov);
          spdlog::info("bench train --compare-launch: {} steps, {} worker(s), cluster.launch {} "
                       "(round {} of {})",
                       total_steps, workers, launch, rep + 1, o.repeats);
          const auto t0 = std::chrono::steady_clock::now();
          if (launch == "threads") {
            run_threads_job(cfg);
          } else {
            ProcessJobOptions po;
            po.config_path = o.config;
            po.sets = sets;
            const int rc = run_processes_job(cfg, po);
            if (rc != 0) {
              throw IoError(fmt::format("bench train --compare-launch: the processes job exited "
                                        "{} (logs in {}/logs)", rc, run_dir));
            }
          }
          LaunchResult r = read_steps(run_dir, o.warmup, launch);
          r.workers = workers;
          r.repeat = rep;
          r.wall_s =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          results.push_back(r);
          fs::remove_all(run_dir);
        }
      }
    }
  } catch (...) {
    spdlog::error("bench train --compare-launch: run folders kept in {}", dir.string());
    throw;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  // Per worker count: processes ÷ threads of each round (the pair ran back to back), and per
  // launch: tokens/s per worker against the first worker count's in the same round.
  const auto find = [&](int64_t rep, int64_t workers, const std::string& launch) {
    for (const auto& r : results) {
      if (r.repeat == rep && r.workers == workers && r.launch == launch) return r;
    }
    throw InternalError("bench train --compare-launch: a run is missing");
  };
  const int64_t base_workers = o.workers.front();
  nlohmann::json j = {{"bench", "train-compare-launch"},
                      {"config", probe.source},
                      {"servers", 2},
                      {"batch_size", probe.train.batch_size},
                      {"warmup_steps", o.warmup},
                      {"steps", o.steps},
                      {"repeats", o.repeats}};
  if (!o.json) {
    std::printf("bench train --compare-launch %s: 2 servers, batch %lld, %lld timed steps after "
                "%lld, %lld interleaved round(s)\n",
                probe.source.c_str(), static_cast<long long>(probe.train.batch_size),
                static_cast<long long>(o.steps), static_cast<long long>(o.warmup),
                static_cast<long long>(o.repeats));
    std::printf("  %5s %7s %-10s %9s %9s %9s %10s %10s\n", "round", "workers", "launch", "s/step",
                "wait_s", "pull_s", "tokens/s", "per worker");
    for (const auto& r : results) {
      std::printf("  %5lld %7lld %-10s %9.4f %9.4f %9.4f %10.0f %10.0f\n",
                  static_cast<long long>(r.repeat + 1), static_cast<long long>(r.workers),
                  r.launch.c_str(), r.mean_step_s, r.wait_s, r.pull_s, r.tokens_per_s,
                  r.tokens_per_s / static_cast<double>(r.workers));
    }
  }
  for (const auto& r : results) {
    j["runs"].push_back({{"round", r.repeat + 1}, {"workers", r.workers}, {"launch", r.launch},
                         {"mean_step_s", r.mean_step_s}, {"wait_s", r.wait_s},
                         {"pull_s", r.pull_s}, {"tokens_per_s", r.tokens_per_s},
                         {"steps_timed", r.steps_timed}, {"wall_s", r.wall_s}});
  }
  for (const int64_t workers : o.workers) {
    std::vector<double> ratios, scaling_t, scaling_p;
    for (int64_t rep = 0; rep < o.repeats; ++rep) {
      const LaunchResult t = find(rep, workers, "threads"), p = find(rep, workers, "processes");
      ratios.push_back(p.mean_step_s / t.mean_step_s);
      const auto per_worker = [&](const LaunchResult& r) {
        return r.tokens_per_s / static_cast<double>(r.workers);
      };
      scaling_t.push_back(per_worker(t) / per_worker(find(rep, base_workers, "threads")));
      scaling_p.push_back(per_worker(p) / per_worker(find(rep, base_workers, "processes")));
    }
    nlohmann::json w = {{"workers", workers}, {"processes_over_threads", ratios}};
    if (workers != base_workers) {
      w["per_worker_tokens_vs_base_threads"] = scaling_t;
      w["per_worker_tokens_vs_base_processes"] = scaling_p;
    }
    j["summary"].push_back(w);
    if (!o.json) {
      std::printf("  %lld worker(s): processes/threads %s", static_cast<long long>(workers),
                  range_of(ratios, "{:.3f}").c_str());
      if (workers != base_workers) {
        std::printf("; tokens/s per worker vs %lld worker(s): threads %s, processes %s",
                    static_cast<long long>(base_workers), range_of(scaling_t, "{:.3f}").c_str(),
                    range_of(scaling_p, "{:.3f}").c_str());
      }
      std::printf("\n");
    }
  }
  if (o.json) std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace ptrain
