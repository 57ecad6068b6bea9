// Options and helpers shared by several subcommands (commands.hpp).
#include "cli/commands.hpp"

#include "common/error.hpp"

#include <fmt/format.h>

namespace ptrain::cli {

void add_set_option(CLI::App* sub, std::vector<std::string>& sets) {
  // Several pairs may follow one --set (--set a.b=1 c.d=2) and --set may repeat; CONFIG comes
  // before them, or a pair without '=' is refused by parse_override naming it.
  sub->add_option("--set", sets, "Override config keys: --set section.key=value [section.key=value ...] (repeatable)")
      ->take_all()
      ->allow_extra_args(true);
}

Config load_config_with_sets(const std::string& path, const std::vector<std::string>& sets) {
  std::vector<ConfigOverride> overrides;
  overrides.reserve(sets.size());
  for (const auto& s : sets) overrides.push_back(parse_override(s));
  return load_config(path, overrides);
}

void add_print_config_flag(CLI::App* sub, bool& flag) {
  sub->add_flag("--print-config", flag, "Print the resolved config (every key, paths absolute) and exit");
}

void add_allow_config_change_flag(CLI::App* sub, bool& flag) {
  sub->add_flag("--allow-config-change", flag,
                "Resume even when the checkpoint's config differs in keys that change the training "
                "(model, optimizer, data, batch...); the differences are listed either way");
}

void add_device_option(CLI::App* sub, std::string& device) {
  sub->add_option("--device", device,
                  "Compute device: cpu, cuda or cuda:N (cuda in a build with CUDA); default: device.type");
}

void add_threads_option(CLI::App* sub, std::optional<int>& threads) {
  sub->add_option("--threads", threads,
                  "Compute threads; 0 = all cores (default: the checkpoint's run.threads)");
}

void check_threads_option(const std::optional<int>& threads) {
  if (threads && *threads < 0) {
    throw UsageError(fmt::format("--threads must be >= 0 (0 = all cores), got {}", *threads));
  }
}

}  // namespace ptrain::cli
