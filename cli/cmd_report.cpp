// `ptrain report RUN_DIR`: writes RUN_DIR/report.html, the status page with the run's data embedded
// (train.jsonl, and status.json when the run wrote one), readable after the run with no server.
#include "cli/commands.hpp"
#include "status/status_page.hpp"

#include <iostream>
#include <memory>

namespace ptrain::cli {

void add_report_command(CLI::App& app, Action& action) {
  auto run_dir = std::make_shared<std::string>();
  auto* sub = app.add_subcommand("report", "Write RUN_DIR/report.html: the run's charts, members, checkpoints and events");
  sub->add_option("RUN_DIR", *run_dir, "A run's folder (run.dir), holding train.jsonl")->required();
  sub->callback([&action, run_dir] {
    action = [run_dir] {
      std::cout << write_run_report(*run_dir) << "\n";
      return 0;
    };
  });
}

}  // namespace ptrain::cli
