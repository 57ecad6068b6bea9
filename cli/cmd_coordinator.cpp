// `ptrain coordinator CONFIG [--set k=v]... [--listen HOST:PORT] [--secret-file PATH]`: the
// coordinator role as its own process (launch/coordinator_process.hpp). Only parsing here.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "launch/coordinator_process.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <memory>

namespace ptrain::cli {
namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_coordinator_stop(int) { g_stop.store(true); }

}  // namespace

std::string secret_file_path(const std::string& flag_value) {
  if (!flag_value.empty()) return flag_value;
  if (const char* env = std::getenv("PTRAIN_SECRET_FILE"); env != nullptr && *env != '\0') {
    return env;
  }
  throw UsageError("no job secret: pass --secret-file PATH or set PTRAIN_SECRET_FILE (`ptrain run` "
                   "writes RUN_DIR/secret)");
}

void add_coordinator_command(CLI::App& app, Action& action) {
  struct Args {
    std::string config;
    std::vector<std::string> sets;
    std::string listen = "0.0.0.0:0";
    std::string secret_file;
    bool print_config = false;
    bool allow_config_change = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "coordinator", "Run the coordinator role: accepts servers and workers over TCP, runs the job");
  sub->add_option("CONFIG", args->config, "YAML config file")->required();
  add_set_option(sub, args->sets);
  add_print_config_flag(sub, args->print_config);
  add_allow_config_change_flag(sub, args->allow_config_change);
  sub->add_option("--listen", args->listen, "HOST:PORT to listen on (port 0 = a free port; "
                                            "written to RUN_DIR/coordinator.addr)");
  sub->add_option("--secret-file", args->secret_file,
                  "The job secret (mode 0600); default $PTRAIN_SECRET_FILE");
  sub->callback([&action, args] {
    action = [args] {
      const Config config = load_config_with_sets(args->config, args->sets);
      if (args->print_config) {
        std::cout << config.to_yaml() << std::flush;
        return 0;
      }
      net::Secret secret = net::read_secret_file(secret_file_path(args->secret_file));
      struct sigaction sa {};
      sa.sa_handler = on_coordinator_stop;
      sigemptyset(&sa.sa_mask);
      sa.sa_flags = SA_RESETHAND;
      // SIGUSR1 too: SLURM's warning before a time limit (`--signal=USR1@LEAD`, or the
      // elastic-core template passing on its `B:USR1`) asks for the same checkpoint and stop.
      for (int sig : {SIGINT, SIGTERM, SIGUSR1}) sigaction(sig, &sa, nullptr);
      CoordinatorProcessOptions o;
      o.config = config;
      o.listen = args->listen;
      o.stop_requested = [] { return g_stop.load(); };
      o.allow_config_change = args->allow_config_change;
      log_run_summary(run_coordinator_process(o, std::move(secret)));
      return 0;
    };
  });
}

}  // namespace ptrain::cli
