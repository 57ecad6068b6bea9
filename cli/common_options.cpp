// Options and helpers shared by several subcommands (commands.hpp).
#include "cli/commands.hpp"

namespace ptrain::cli {

void add_set_option(CLI::App* sub, std::vector<std::string>& sets) {
  sub->add_option("--set", sets, "Override a config key: --set section.key=value (repeatable)")
      ->take_all()
      ->allow_extra_args(false);
}

Config load_config_with_sets(const std::string& path, const std::vector<std::string>& sets) {
  std::vector<ConfigOverride> overrides;
  overrides.reserve(sets.size());
  for (const auto& s : sets) overrides.push_back(parse_override(s));
  return load_config(path, overrides);
}

void add_device_option(CLI::App* sub, std::string& device) {
  sub->add_option("--device", device,
                  "Compute device: cpu (cuda, cuda:N: not implemented yet); default: device.type");
}

}  // namespace ptrain::cli
