// `ptrain run CONFIG [--set k=v]...`: a whole training job on this machine. With
// `cluster.launch: processes` (default) each role is its own `ptrain` process on 127.0.0.1
// (launch/process_job.hpp); with `threads` the roles are threads of this process
// (launch/threads_job.hpp); with `mpi` this process is one rank of an mpirun/srun job
// (launch/mpi_job.hpp). Only parsing and dispatch here.
#include "cli/commands.hpp"
#include "launch/mpi_job.hpp"
#include "launch/process_job.hpp"
#include "launch/threads_job.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <memory>

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
      if (config.cluster.launch == Launch::kProcesses) {
        ProcessJobOptions po;
        po.config_path = args->config;
        po.sets = args->sets;
        po.stop_requested = [] { return g_stop.load(); };
        po.allow_config_change = args->allow_config_change;
        return run_processes_job(config, po);
      }
      ThreadsJobOptions options;
      options.stop_requested = [](int64_t) { return g_stop.load(); };
      options.allow_config_change = args->allow_config_change;
      const RunSummary s = run_threads_job(config, options);
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
      return 0;
    };
  });
}

}  // namespace ptrain::cli
