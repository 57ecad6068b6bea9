// Writing a step-0 checkpoint (init.hpp).
#include "tools/init.hpp"

#include "common/data/tokenizer.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/tensor/gpt_init.hpp"
#include "common/tensor/param_layout.hpp"

#include <spdlog/spdlog.h>

namespace ptrain::tools {

void init_checkpoint(const InitOptions& o) {
  const Config& config = o.config;
  const auto tokenizer = load_tokenizer(config.data.tokenizer);
  const ParamLayout layout(model_dims(config.model, tokenizer->vocab_size()));
  CheckpointData data;
  data.params.resize(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, config.run.seed, data.params);
  data.meta.step = 0;
  data.meta.tokens_seen = 0;
  data.meta.config_yaml = config.to_yaml();
  data.meta.tokenizer_json = tokenizer->to_json();
  data.meta.data = DataState{config.run.seed, 0, 0, {}};
  write_checkpoint_file_atomic(o.out, layout, data);  // m, v empty: written as zeros
  spdlog::info("wrote {}: {} parameters in {} tensors (V {} padded to {}, T {}, L {}, NH {}, C {}), "
               "seed {}",
               o.out, layout.total(), layout.tensors().size(), layout.dims().V, layout.dims().Vp,
               layout.dims().T, layout.dims().L, layout.dims().NH, layout.dims().C, config.run.seed);
}

}  // namespace ptrain::tools
