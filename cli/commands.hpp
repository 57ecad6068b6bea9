// The `ptrain` subcommands. Each cmd_*.cpp adds its subcommand to the app and, when chosen, sets
// `action` to the work to run after parsing. Failures are thrown as ptrain::Error (error.hpp);
// main.cpp maps them to exit codes. --json output goes to stdout, everything else to stderr.
#pragma once

#include "common/config/config.hpp"

#include <CLI/CLI.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ptrain::cli {

using Action = std::function<int()>;

void add_prepare_command(CLI::App& app, Action& action);
void add_data_command(CLI::App& app, Action& action);
void add_run_command(CLI::App& app, Action& action);
void add_init_command(CLI::App& app, Action& action);
void add_grad_command(CLI::App& app, Action& action);
void add_eval_command(CLI::App& app, Action& action);
void add_generate_command(CLI::App& app, Action& action);
void add_fill_mask_command(CLI::App& app, Action& action);
void add_finetune_command(CLI::App& app, Action& action);
void add_inspect_command(CLI::App& app, Action& action);
void add_bench_command(CLI::App& app, Action& action);
void add_coordinator_command(CLI::App& app, Action& action);
void add_server_command(CLI::App& app, Action& action);
void add_worker_command(CLI::App& app, Action& action);
void add_hf_commands(CLI::App& app, Action& action);  // export-hf, import-hf
void add_tokenize_command(CLI::App& app, Action& action);
void add_report_command(CLI::App& app, Action& action);
void add_check_ledger_command(CLI::App& app, Action& action);

// The job secret's file for a role: --secret-file, else $PTRAIN_SECRET_FILE (the only place that
// reads it). UsageError when neither is given.
std::string secret_file_path(const std::string& flag_value);

// `--set a.b=value` (repeatable) on a subcommand that takes a config.
void add_set_option(CLI::App* sub, std::vector<std::string>& sets);
// Loads CONFIG with the --set overrides applied (ConfigError / UsageError on bad input).
Config load_config_with_sets(const std::string& path, const std::vector<std::string>& sets);

// `--print-config`: print the resolved config (every key, paths absolute) on stdout and exit.
void add_print_config_flag(CLI::App* sub, bool& flag);
// `--allow-config-change`: resume although the checkpoint's config differs in keys that change the
// training.
void add_allow_config_change_flag(CLI::App* sub, bool& flag);

// `--device D` on a subcommand that runs the model (eval, generate, grad, bench train).
void add_device_option(CLI::App* sub, std::string& device);

// `--threads N` on a tool that runs the model from a checkpoint (eval, generate): compute threads,
// 0 = all cores, absent = the checkpoint's run.threads. check_threads_option: UsageError if < 0.
void add_threads_option(CLI::App* sub, std::optional<int>& threads);
void check_threads_option(const std::optional<int>& threads);

}  // namespace ptrain::cli
