// `ptrain init CONFIG [--set k=v]... --out FILE.h5`: a step-0 checkpoint of CONFIG's model
// (initialised weights, zero AdamW moments, the resolved config, the tokenizer, the data state),
// written atomically as tools/init.hpp says.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "tools/init.hpp"

#include <iostream>
#include <memory>

namespace ptrain::cli {

void add_init_command(CLI::App& app, Action& action) {
  struct Args {
    std::string config;
    std::vector<std::string> sets;
    std::string out;
    bool print_config = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "init", "Write a step-0 checkpoint: initialised weights, zero optimizer moments, the resolved "
              "config and the tokenizer");
  sub->add_option("CONFIG", args->config, "YAML config file")->required();
  add_set_option(sub, args->sets);
  add_print_config_flag(sub, args->print_config);
  sub->add_option("--out", args->out, "Checkpoint file to write (HDF5; replaced if it exists)");
  sub->callback([&action, args] {
    action = [args] {
      const Config config = load_config_with_sets(args->config, args->sets);
      if (args->print_config) {
        std::cout << config.to_yaml() << std::flush;
        return 0;
      }
      if (args->out.empty()) throw UsageError("init: --out FILE.h5 is required");
      tools::init_checkpoint({config, args->out});
      return 0;
    };
  });
}

}  // namespace ptrain::cli
