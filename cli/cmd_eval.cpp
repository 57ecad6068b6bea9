// `ptrain eval --checkpoint CKPT --data FILE.tok [--device D] [--threads N] [--json]`: mean cross-entropy of a
// checkpoint over every complete window of a token file, and its perplexity, on --device (default:
// the stored device.type); the work is tools/eval.hpp's. --json prints one object
// {"loss", "perplexity", "windows", "tokens", "step"} on stdout; logs go to stderr.
#include "cli/commands.hpp"
#include "tools/eval.hpp"
#include "worker/backend/backend_factory.hpp"

#include <memory>

namespace ptrain::cli {

void add_eval_command(CLI::App& app, Action& action) {
  auto args = std::make_shared<tools::EvalOptions>();
  auto* sub = app.add_subcommand(
      "eval", "Mean loss and perplexity of a checkpoint over every complete window of a token file");
  sub->add_option("--checkpoint", args->checkpoint, "Checkpoint .h5 file or its directory")->required();
  sub->add_option("--data", args->data, ".tok file")->required();
  add_threads_option(sub, args->threads);
  add_device_option(sub, args->device);
  sub->add_flag("--json", args->json, "Print one JSON object on stdout");
  sub->callback([&action, args] {
    action = [args] {
      if (!args->device.empty()) check_device(args->device, "--device");  // before any work
      check_threads_option(args->threads);
      tools::print_eval(tools::evaluate(*args), args->json);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
