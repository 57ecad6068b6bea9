// `ptrain server --coordinator HOST:PORT [--listen HOST:PORT] [--secret-file PATH] [--threads N]`: a parameter
// server as its own process (launch/server_process.hpp). Only parsing and signal handling here:
// a first SIGINT or SIGTERM, and SIGUSR1, do not stop a server: the coordinator's Shutdown does.
#include "cli/commands.hpp"
#include "launch/server_process.hpp"

#include <unistd.h>

#include <csignal>
#include <memory>

namespace ptrain::cli {
namespace {

// A stop signal only asks: the servers hold the weights' shards, so they must stay up to write
// the checkpoint that the coordinator (signalled too: SLURM signals every task of a job at once)
// orders before its Shutdown, which ends this process. SIGINT/SIGTERM reset themselves, so a
// second one ends the process the default way; SIGUSR1 (SLURM's time-limit warning) is only noted.
extern "C" void on_server_stop_signal(int) {
  static const char kMsg[] =
      "ptrain server: stop signal: serving until the coordinator's checkpoint and shutdown\n";
  (void)!::write(STDERR_FILENO, kMsg, sizeof kMsg - 1);
}

void install_server_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_server_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, nullptr);
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

}  // namespace

void add_server_command(CLI::App& app, Action& action) {
  struct Args {
    std::string coordinator;
    std::string listen = "0.0.0.0:0";
    std::string secret_file;
    int threads = 0;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("server", "Run a parameter-server role; learns the job from the "
                                           "coordinator");
  sub->add_option("--coordinator", args->coordinator, "The coordinator's HOST:PORT "
                                                      "(RUN_DIR/coordinator.addr)")->required();
  sub->add_option("--listen", args->listen, "HOST:PORT for workers' data connections (port 0 = a "
                                            "free port)");
  sub->add_option("--secret-file", args->secret_file,
                  "The job secret (mode 0600); default $PTRAIN_SECRET_FILE");
  sub->add_option("--threads", args->threads,
                  "Compute threads of this server (default: run.threads; 0 there = all cores)")
      ->check(CLI::NonNegativeNumber);
  sub->callback([&action, args] {
    action = [args] {
      net::Secret secret = net::read_secret_file(secret_file_path(args->secret_file));
      install_server_signal_handlers();
      run_server_process({args->coordinator, args->listen, args->threads}, std::move(secret));
      return 0;
    };
  });
}

}  // namespace ptrain::cli
