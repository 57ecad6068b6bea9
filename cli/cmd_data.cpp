// `ptrain data stats DIR [--seq-len T] [--steps S --batch-size B] [--json]`: a prepared folder's
// documents, tokens, shards and windows (tools/data_stats.hpp). Only parsing here.
#include "cli/commands.hpp"
#include "tools/data_stats.hpp"

#include <cstdio>
#include <memory>

namespace ptrain::cli {

void add_data_command(CLI::App& app, Action& action) {
  struct Args {
    tools::DataStatsOptions o;
    int64_t steps = 0;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* data = app.add_subcommand("data", "Look at prepared data");
  data->require_subcommand(1);
  auto* stats = data->add_subcommand("stats", "Documents, tokens, shards and windows of a prepared folder");
  stats->add_option("DIR", args->o.dir, "A `ptrain prepare` output folder or its manifest.json")->required();
  stats->add_option("--seq-len", args->o.seq_len, "Window length T: count windows per shard");
  auto* steps = stats->add_option("--steps", args->steps, "With --batch-size: the epochs these steps cover");
  stats->add_option("--batch-size", args->o.batch_size, "Windows per step");
  stats->add_flag("--json", args->json, "Print one JSON object");
  stats->callback([&action, args, steps] {
    const bool has_steps = steps->count() > 0;
    action = [args, has_steps] {
      tools::DataStatsOptions o = args->o;
      if (has_steps) o.steps = args->steps;
      const std::string j = tools::data_stats_json(o);
      std::fputs(args->json ? j.c_str() : tools::data_stats_text(j).c_str(), stdout);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
