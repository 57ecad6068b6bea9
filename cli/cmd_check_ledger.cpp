// `ptrain check-ledger RUN_DIR [--json]`: checks RUN_DIR/ledger.jsonl against the run's latest
// checkpoint (common/io/ledger.hpp): within each data epoch no window applied twice, every epoch
// before the checkpoint's data cursor complete (windows still in its returned pool excepted), the
// last step line equal to the checkpoint's step. Exit 0 when it holds, 5 (data) when not. Only
// parsing here.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "common/io/ledger.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>

namespace ptrain::cli {

void add_check_ledger_command(CLI::App& app, Action& action) {
  struct Args {
    std::string run_dir;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "check-ledger", "Check a run's data ledger: every window once per data epoch (bsp)");
  sub->add_option("RUN_DIR", args->run_dir, "The run folder (run.dir)")->required();
  sub->add_flag("--json", args->json, "Print the result as one JSON object on stdout");
  sub->callback([&action, args] {
    action = [args] {
      const LedgerCheck c = check_run_ledger(args->run_dir);
      if (args->json) std::printf("%s\n", c.to_json().c_str());
      for (const std::string& p : c.problems) spdlog::error("{}", p);
      std::string epochs;
      for (const auto& [e, n] : c.windows_per_epoch) epochs += fmt::format(" {}:{}", e, n);
      spdlog::info("ledger of {}: {} step line(s) up to step {}, windows per data epoch{} (of "
                   "{}); {} complete epoch(s) checked; {} doubled, {} missing; {}",
                   args->run_dir, c.step_lines, c.last_step, epochs, c.num_windows,
                   c.complete_epochs.size(), c.doubled, c.missing, c.ok() ? "OK" : "FAILED");
      return c.ok() ? 0 : static_cast<int>(ExitCode::kData);
    };
  });
}

}  // namespace ptrain::cli
