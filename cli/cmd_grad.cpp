// `ptrain grad --checkpoint CKPT --data FILE.tok --batch-size B --out OUT.h5 [--device D]`: one
// gradient, for comparisons with other implementations (PyTorch): the loss and gradient of the
// first B windows of FILE.tok on --device (default: the stored device.type), written to OUT.h5 as
// tools/grad.hpp says.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "tools/grad.hpp"
#include "worker/backend/backend_factory.hpp"

#include <memory>

namespace ptrain::cli {

void add_grad_command(CLI::App& app, Action& action) {
  auto args = std::make_shared<tools::GradOptions>();
  auto* sub = app.add_subcommand(
      "grad", "Loss and gradient of a checkpoint on the first B windows of a token file");
  sub->add_option("--checkpoint", args->checkpoint, "Checkpoint .h5 file or its directory")->required();
  sub->add_option("--data", args->data, ".tok file; its first B windows (file order) are used")
      ->required();
  sub->add_option("--batch-size", args->batch_size, "Sequences B")->required();
  sub->add_option("--out", args->out, "HDF5 file to write (/inputs, /loss, /grad/<name>)")->required();
  add_device_option(sub, args->device);
  sub->callback([&action, args] {
    action = [args] {
      if (!args->device.empty()) check_device(args->device, "--device");  // before any work
      if (args->batch_size < 1) {
        throw UsageError(fmt::format("--batch-size must be >= 1, got {}", args->batch_size));
      }
      tools::write_grad(*args);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
