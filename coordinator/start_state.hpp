// Where a run starts (checkpoint.resume): `auto` = the newest valid checkpoint under RUN_DIR if
// there is one, else fresh; `never` = fresh; anything else = that checkpoint (file or folder).
// Fresh = GPT-2 initialisation from run.seed, zero moments, data cursor {run.seed, 0, 0}.
// From a checkpoint: its weights, moments, step, tokens seen and data cursor — exactly.
#pragma once

#include "common/config/config.hpp"
#include "common/io/checkpoint.hpp"
#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain {

struct StartState {
  int64_t step = 0;         // optimizer steps already applied
  int64_t tokens_seen = 0;
  DataState data;
  std::vector<float> params, m, v;  // layout.total() each
  std::string resumed_from;         // checkpoint path; empty for a fresh start
};

StartState load_start_state(const Config& config, const ParamLayout& layout);

}  // namespace ptrain
