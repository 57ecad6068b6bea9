// `ptrain init CONFIG [--set k=v]... --out FILE.h5`: a step-0 checkpoint — GPT-2 initialised
// weights (init_gpt_params with run.seed), zero AdamW moments, the resolved config, the tokenizer
// (data.tokenizer), and the data state {run.seed, epoch 0, position 0}. Written atomically: a failed
// init leaves no file and an existing FILE.h5 untouched; a successful one replaces it.
#include "cli/commands.hpp"
#include "common/data/tokenizer.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/tensor/gpt_init.hpp"
#include "common/tensor/param_layout.hpp"

#include <spdlog/spdlog.h>

#include <memory>

namespace ptrain::cli {

void add_init_command(CLI::App& app, Action& action) {
  struct Args {
    std::string config;
    std::vector<std::string> sets;
    std::string out;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "init", "Write a step-0 checkpoint: initialised weights, zero optimizer moments, the resolved "
              "config and the tokenizer");
  sub->add_option("CONFIG", args->config, "YAML config file")->required();
  add_set_option(sub, args->sets);
  sub->add_option("--out", args->out, "Checkpoint file to write (HDF5; replaced if it exists)")
      ->required();
  sub->callback([&action, args] {
    action = [args] {
      const Config config = load_config_with_sets(args->config, args->sets);
      const auto tokenizer = load_tokenizer(config.data.tokenizer);
      const ParamLayout layout(model_dims(config.model, tokenizer->vocab_size()));
      CheckpointData data;
      data.params.resize(static_cast<size_t>(layout.total()));
      init_gpt_params(layout, config.run.seed, data.params);
      data.meta.step = 0;
      data.meta.tokens_seen = 0;
      data.meta.config_yaml = config.to_yaml();
      data.meta.tokenizer_json = tokenizer->to_json();
      data.meta.data = DataState{config.run.seed, 0, 0};
      write_checkpoint_file_atomic(args->out, layout, data);  // m, v empty: written as zeros
      spdlog::info("wrote {}: {} parameters in {} tensors (V {} padded to {}, T {}, L {}, NH {}, C {}), "
                   "seed {}",
                   args->out, layout.total(), layout.tensors().size(), layout.dims().V,
                   layout.dims().Vp, layout.dims().T, layout.dims().L, layout.dims().NH,
                   layout.dims().C, config.run.seed);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
