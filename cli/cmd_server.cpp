// `ptrain server --coordinator HOST:PORT [--listen HOST:PORT] [--secret-file PATH] [--threads N]`: a parameter
// server as its own process (launch/server_process.hpp). Only parsing here.
#include "cli/commands.hpp"
#include "launch/server_process.hpp"

#include <memory>

namespace ptrain::cli {

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
      run_server_process({args->coordinator, args->listen, args->threads}, std::move(secret));
      return 0;
    };
  });
}

}  // namespace ptrain::cli
