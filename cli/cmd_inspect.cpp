// `ptrain inspect CKPT [--diff OTHER] [--optimizer] [--json]`: what a checkpoint holds and a
// table of its tensors' statistics; --optimizer adds the AdamW moments, --diff OTHER each tensor's
// relative change ‖A−B‖/‖B‖ against OTHER. The report is tools/inspect.hpp's.
#include "cli/commands.hpp"
#include "tools/inspect.hpp"

#include <memory>

namespace ptrain::cli {

void add_inspect_command(CLI::App& app, Action& action) {
  auto args = std::make_shared<tools::InspectOptions>();
  auto* sub = app.add_subcommand(
      "inspect", "Show a checkpoint: step, config, data state and per-tensor statistics");
  sub->add_option("CKPT", args->ckpt, "Checkpoint .h5 file or its directory")->required();
  sub->add_option("--diff", args->diff, "Another checkpoint of the same layout: adds ‖A−B‖/‖B‖ per tensor");
  sub->add_flag("--optimizer", args->optimizer, "Also the AdamW moments (/optimizer/m, /optimizer/v)");
  sub->add_flag("--json", args->json, "Print one JSON object on stdout");
  sub->callback([&action, args] {
    action = [args] {
      tools::inspect(*args);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
