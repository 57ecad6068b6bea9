// `ptrain worker --coordinator HOST:PORT [--device cpu] [--secret-file PATH]`: a worker as its own
// process (launch/worker_process.hpp). Only parsing here.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "launch/worker_process.hpp"

#include <memory>

namespace ptrain::cli {

void add_worker_command(CLI::App& app, Action& action) {
  struct Args {
    std::string coordinator;
    std::string device = "cpu";
    std::string secret_file;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("worker", "Run a worker role; learns the job from the coordinator");
  sub->add_option("--coordinator", args->coordinator, "The coordinator's HOST:PORT "
                                                      "(RUN_DIR/coordinator.addr)")->required();
  sub->add_option("--device", args->device, "Compute device: cpu (cuda: not implemented yet)");
  sub->add_option("--secret-file", args->secret_file,
                  "The job secret (mode 0600); default $PTRAIN_SECRET_FILE");
  sub->callback([&action, args] {
    action = [args] {
      if (args->device != "cpu") {
        throw NotImplementedError(
            fmt::format("--device {}: not implemented yet (valid now: cpu)", args->device));
      }
      net::Secret secret = net::read_secret_file(secret_file_path(args->secret_file));
      run_worker_process({args->coordinator}, std::move(secret));
      return 0;
    };
  });
}

}  // namespace ptrain::cli
