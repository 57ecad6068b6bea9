// PLACEHOLDER until its owner lands the real command.
#include "cli/commands.hpp"
#include "common/error.hpp"

namespace ptrain::cli {
void add_run_command(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("run", "(not built yet)");
  sub->callback([&action] { action = [] () -> int { throw NotImplementedError("run: not implemented yet"); }; });
}
}  // namespace ptrain::cli
