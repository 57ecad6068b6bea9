// PLACEHOLDER until its owner lands the real command.
#include "cli/commands.hpp"
#include "common/error.hpp"

namespace ptrain::cli {
void add_prepare_command(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("prepare", "(not built yet)");
  sub->callback([&action] { action = [] () -> int { throw NotImplementedError("prepare: not implemented yet"); }; });
}
}  // namespace ptrain::cli
