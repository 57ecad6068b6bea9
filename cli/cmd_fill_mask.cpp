// `ptrain fill-mask --checkpoint CKPT --text TEXT [--top-k K] [--device D] [--json]`: the most
// likely fillers of each [MASK] in TEXT from a BERT checkpoint; the work is tools/fill_mask.hpp's.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "tools/fill_mask.hpp"
#include "worker/backend/backend_factory.hpp"

#include <memory>

namespace ptrain::cli {

void add_fill_mask_command(CLI::App& app, Action& action) {
  auto args = std::make_shared<tools::FillMaskOptions>();
  auto* sub = app.add_subcommand(
      "fill-mask", "Top-k fillers of each [MASK] in a text from a BERT (masked-LM) checkpoint");
  sub->add_option("--checkpoint", args->checkpoint, "Checkpoint .h5 file or its directory")->required();
  sub->add_option("--text", args->text, "Text with one or more [MASK]")->required();
  sub->add_option("--top-k", args->top_k, "Fillers listed per [MASK]")->capture_default_str();
  add_device_option(sub, args->device);
  sub->add_flag("--json", args->json, "Print one JSON object on stdout");
  sub->callback([&action, args] {
    action = [args] {
      if (!args->device.empty()) check_device(args->device, "--device");
      if (args->top_k < 1) throw UsageError(fmt::format("--top-k must be >= 1, got {}", args->top_k));
      tools::print_fill_mask(tools::fill_mask(*args), args->json);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
