// Options and helpers shared by several subcommands (commands.hpp).
#include "cli/commands.hpp"

#include "worker/backend/backend_factory.hpp"

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

std::unique_ptr<Backend> tool_backend(const std::string& device_flag, const Config& config) {
  if (!device_flag.empty()) return make_backend(device_flag, config.run.threads, "--device");
  return make_backend(device_type_name(config.device.type), config.run.threads, "device.type");
}

}  // namespace ptrain::cli
