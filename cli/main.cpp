// `ptrain` entry point: parses the command line, runs the chosen subcommand, maps errors to exit
// codes (error.hpp). No training logic lives here.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "common/io/hdf5.hpp"
#include "common/log.hpp"
#include "ptrain/build_config.hpp"

#include <exception>

int main(int argc, char** argv) {
  const ptrain::h5::LibraryGuard hdf5_teardown;  // before static destructors, and safe after errors
  ptrain::init_logging(false);
  CLI::App app{"ptrain: parameter-server pretraining of transformer language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", PTRAIN_VERSION);
  ptrain::cli::Action action;
  ptrain::cli::add_prepare_command(app, action);
  ptrain::cli::add_data_command(app, action);
  ptrain::cli::add_run_command(app, action);
  ptrain::cli::add_init_command(app, action);
  ptrain::cli::add_grad_command(app, action);
  ptrain::cli::add_eval_command(app, action);
  ptrain::cli::add_generate_command(app, action);
  ptrain::cli::add_fill_mask_command(app, action);
  ptrain::cli::add_finetune_command(app, action);
  ptrain::cli::add_inspect_command(app, action);
  ptrain::cli::add_bench_command(app, action);
  ptrain::cli::add_coordinator_command(app, action);
  ptrain::cli::add_server_command(app, action);
  ptrain::cli::add_worker_command(app, action);
  ptrain::cli::add_hf_commands(app, action);
  ptrain::cli::add_tokenize_command(app, action);
  ptrain::cli::add_report_command(app, action);
  ptrain::cli::add_check_ledger_command(app, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : static_cast<int>(ptrain::ExitCode::kUsage);
  }
  try {
    return action ? action() : 0;
  } catch (const ptrain::Error& e) {
    spdlog::error("{}", e.what());
    return static_cast<int>(e.code());
  } catch (const std::exception& e) {
    spdlog::error("internal error: {}", e.what());
    return static_cast<int>(ptrain::ExitCode::kInternal);
  }
}
