// `ptrain worker --coordinator HOST:PORT [--device D] [--secret-file PATH] [--threads N]`: a worker as its own
// process (launch/worker_process.hpp). Only parsing here. --device (cpu, cuda, cuda:N) overrides
// the job's device.type for this worker; a device that is no device or not built is refused
// before the worker joins the job.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "worker/backend/backend_factory.hpp"
#include "launch/worker_process.hpp"

#include <memory>

namespace ptrain::cli {

void add_worker_command(CLI::App& app, Action& action) {
  struct Args {
    std::string coordinator;
    std::string device;  // "" = the job's device.type
    std::string secret_file;
    int threads = 0;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("worker", "Run a worker role; learns the job from the coordinator");
  sub->add_option("--coordinator", args->coordinator, "The coordinator's HOST:PORT "
                                                      "(RUN_DIR/coordinator.addr)")->required();
  sub->add_option("--device", args->device,
                  "Compute device: cpu (cuda, cuda:N: not implemented yet); default: the job's "
                  "device.type");
  sub->add_option("--secret-file", args->secret_file,
                  "The job secret (mode 0600); default $PTRAIN_SECRET_FILE");
  sub->add_option("--threads", args->threads,
                  "Compute threads of this worker (default: run.threads; 0 there = all cores)")
      ->check(CLI::NonNegativeNumber);
  sub->callback([&action, args] {
    action = [args] {
      if (!args->device.empty()) check_device(args->device, "--device");
      net::Secret secret = net::read_secret_file(secret_file_path(args->secret_file));
      run_worker_process({args->coordinator, args->device, args->threads}, std::move(secret));
      return 0;
    };
  });
}

}  // namespace ptrain::cli
