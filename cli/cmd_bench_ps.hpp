// `ptrain bench ps`, the hidden `ptrain bench ps-peer` helper and `bench train --compare-launch`
// (bench/bench_ps.hpp), registered on the `bench` subcommand by cmd_bench.cpp.
#pragma once

#include "cli/commands.hpp"

namespace ptrain::cli {

void add_bench_ps_commands(CLI::App* bench, Action& action);

// --compare-launch on `bench train` and its own options (--repeats, --launch-workers).
struct CompareLaunchFlags {
  bool on = false;
  int64_t repeats = 1;
  std::vector<int64_t> workers = {2};
};
// Adds them to `bench train`; `on` is set when --compare-launch was given. The train callback
// then calls run_compare_launch with its own CONFIG, --set, --steps, --warmup, --json.
std::shared_ptr<CompareLaunchFlags> add_compare_launch_flag(CLI::App* train);
int run_compare_launch(const std::string& config, const std::vector<std::string>& sets,
                       int64_t steps, int64_t warmup, bool json, const CompareLaunchFlags& flags);

}  // namespace ptrain::cli
