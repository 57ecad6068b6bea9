// `ptrain init`'s work: a step-0 checkpoint — GPT-2 initialised weights (init_gpt_params with
// run.seed), zero AdamW moments, the resolved config, the tokenizer (data.tokenizer), and the data
// state {run.seed, epoch 0, position 0}. Written atomically: a failed init leaves no file and an
// existing file untouched; a successful one replaces it.
#pragma once

#include "common/config/config.hpp"

#include <string>

namespace ptrain::tools {

struct InitOptions {
  Config config;    // the resolved config (overrides applied)
  std::string out;  // checkpoint file to write (HDF5)
};

// Writes the checkpoint and logs it on stderr. Throws what loading the tokenizer and writing the
// file throw (IoError, DataError, ConfigError for a model that does not fit the tokenizer).
void init_checkpoint(const InitOptions& o);

}  // namespace ptrain::tools
