// `ptrain run CONFIG [--set k=v]...`: a whole training job on this machine. With
// `cluster.launch: processes` (default) each role is its own `ptrain` process on 127.0.0.1
// (launch/process_job.hpp); with `threads` the roles are threads of this process
// (launch/threads_job.hpp); with `mpi` this process is one rank of an mpirun/srun job
// (launch/mpi_job.hpp). Only parsing and dispatch here.
#include "cli/commands.hpp"
#include "launch/mpi_job.hpp"
#include "launch/process_job.hpp"
#include "launch/run_summary.hpp"
#include "launch/threads_job.hpp"
#include "tools/generate.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ptrain::cli {
namespace {

// SIGINT/SIGTERM ask the job to stop at the next step boundary with a checkpoint; the handler
// resets itself, so a second signal ends the process the default way.
std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) { g_stop.store(true); }

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// Under MPI every signal only asks: a rank keeps serving the checkpoint that rank 0 then orders
// (SLURM sends SIGTERM, or the template's SIGUSR1, to every task at once).
void install_mpi_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) sigaction(sig, &sa, nullptr);
}

// train.sample_tokens: a sample from each checkpoint the run writes, printed on stderr between
// the progress lines (as nanoGPT prints samples while it trains). Watches RUN_DIR/checkpoints/latest
// from a thread of its own; the sampling (a small decode on one thread) never holds up the job,
// and a failed sample is a warning. finish() samples the final checkpoint before the summary.
class CheckpointSampler {
 public:
  // `threads`: the sampler's compute threads. OpenBLAS's thread count is process-wide, so in a
  // threads launch it must be the workers' own (one thread would slow their products down).
  CheckpointSampler(const std::string& run_dir, int64_t tokens, int threads)
      : latest_(std::filesystem::path(run_dir) / "checkpoints" / "latest"), tokens_(tokens),
        threads_(threads) {
    seen_ = target();  // a resumed run's starting checkpoint was sampled by its own run
    thread_ = std::thread([this] {
      std::unique_lock lock(mu_);
      while (!stop_) {
        lock.unlock();
        check();
        lock.lock();
        cv_.wait_for(lock, std::chrono::milliseconds(500), [this] { return stop_; });
      }
    });
  }
  ~CheckpointSampler() { finish(); }

  void finish() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    check();
  }

 private:
  std::filesystem::path target() const {
    std::error_code ec;
    std::filesystem::path t = std::filesystem::read_symlink(latest_, ec);
    return ec ? std::filesystem::path() : t;
  }

  // Samples every checkpoint written since the last look, oldest first: `latest` may have moved
  // more than once in between (a fast run). Folders up to `latest` are complete; their zero-padded
  // step names sort in step order.
  void check() {
    const std::filesystem::path t = target();
    if (t.empty() || t == seen_) return;
    std::vector<std::string> fresh;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(latest_.parent_path(), ec)) {
      const std::string name = e.path().filename().string();
      // Not a "step-N.tmp" being (or left half) written.
      if (name.starts_with("step-") && name.find('.') == std::string::npos &&
          e.is_directory(ec) && name > seen_.string() && name <= t.filename().string()) {
        fresh.push_back(name);
      }
    }
    std::sort(fresh.begin(), fresh.end());
    seen_ = t;
    for (const std::string& name : fresh) sample(name);
  }

  void sample(const std::string& name) {
    tools::GenerateOptions g;
    g.checkpoint = (latest_.parent_path() / name).string();
    g.prompt = "";  // from <|endoftext|>: the start of a document
    g.max_tokens = tokens_;
    g.temperature = 0.8;
    g.top_k = 40;
    g.seed = 1;  // the same draw at every checkpoint: the samples differ by what the model learned
    g.threads = threads_;
    g.echo = false;
    g.quiet = true;
    std::string text;
    g.out = [&text](std::string_view piece) { text += piece; };
    try {
      tools::generate(g);
    } catch (const std::exception& e) {
      spdlog::warn("no sample from {}: {}", g.checkpoint, e.what());
      return;
    }
    const std::string block = fmt::format("---- sample from {} ----\n{}\n----\n", name, text);
    std::fwrite(block.data(), 1, block.size(), stderr);
    std::fflush(stderr);
  }

  std::filesystem::path latest_;
  int64_t tokens_;
  int threads_;
  std::filesystem::path seen_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// The end of a run that trained: the summary (launch/run_summary.hpp) on stderr.
void print_summary(const Config& config, const std::string& config_path) {
  const std::string s = run_summary(config, config_path);
  std::fwrite(s.data(), 1, s.size(), stderr);
  std::fflush(stderr);
}

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

}  // namespace

void add_run_command(CLI::App& app, Action& action) {
  struct Args {
    std::string config;
    std::vector<std::string> sets;
    bool print_config = false;
    bool allow_config_change = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "run", "Train: coordinator, parameter servers and workers on this machine, as processes "
             "(cluster.launch: processes, the default) or threads of this one "
             "(cluster.launch: threads); writes RUN_DIR/train.jsonl and checkpoints");
  sub->add_option("CONFIG", args->config, "YAML config file")->required();
  add_set_option(sub, args->sets);
  add_print_config_flag(sub, args->print_config);
  add_allow_config_change_flag(sub, args->allow_config_change);
  sub->callback([&action, args] {
    action = [args] {
      const Config config = load_config_with_sets(args->config, args->sets);
      if (args->print_config) {
        std::cout << config.to_yaml() << std::flush;
        return 0;
      }
      if (config.cluster.launch == Launch::kMpi) {
        install_mpi_stop_handlers();
        MpiJobOptions mo;
        mo.stop_requested = [] { return g_stop.load(); };
        mo.slurm_job_id = env_or_empty("SLURM_JOB_ID");
        mo.slurm_task_id = env_or_empty("SLURM_PROCID");
        mo.allow_config_change = args->allow_config_change;
        return run_mpi_job(config, mo);
      }
      install_stop_handlers();
      std::unique_ptr<CheckpointSampler> sampler;
      if (config.train.sample_tokens > 0) {
        const int threads = config.cluster.launch == Launch::kThreads
                                ? threads_per_role(config.run.threads, config.cluster.workers)
                                : 1;  // the launcher's own process: one thread is plenty
        sampler = std::make_unique<CheckpointSampler>(config.run.dir, config.train.sample_tokens,
                                                      threads);
      }
      if (config.cluster.launch == Launch::kProcesses) {
        ProcessJobOptions po;
        po.config_path = args->config;
        po.sets = args->sets;
        po.stop_requested = [] { return g_stop.load(); };
        po.allow_config_change = args->allow_config_change;
        const int rc = run_processes_job(config, po);
        if (sampler) sampler->finish();
        if (rc == 0) print_summary(config, args->config);
        return rc;
      }
      ThreadsJobOptions options;
      options.stop_requested = [](int64_t) { return g_stop.load(); };
      options.allow_config_change = args->allow_config_change;
      const RunSummary s = run_threads_job(config, options);
      if (sampler) sampler->finish();
      if (s.final_step > s.start_step) {
        spdlog::info("done: step {} | loss {:.4f}{} | {:.0f} tok/s | {:.3f} s/step | {}", s.final_step,
                     s.final_loss,
                     s.final_val_loss ? fmt::format(" | val_loss {:.4f}", *s.final_val_loss) : "",
                     s.tokens_per_s, s.mean_step_s,
                     s.last_checkpoint.empty() ? "no checkpoint" : s.last_checkpoint);
      }
      if (s.interrupted) {
        spdlog::info("interrupted at step {}; the checkpoint {} resumes it", s.final_step,
                     s.last_checkpoint);
      }
      if (s.final_step > s.start_step) print_summary(config, args->config);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
