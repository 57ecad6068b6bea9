// Where a run starts (checkpoint.resume): `auto` = the newest valid checkpoint under RUN_DIR if
// there is one, else fresh; `never` = fresh; anything else = that checkpoint (file or folder).
// Fresh = step 0, data cursor {run.seed, 0, 0}; the servers initialise their slices from run.seed.
// From a checkpoint: its step, tokens seen and data cursor, exactly. The coordinator reads only the
// checkpoint's meta data (read_checkpoint_meta) and checks its layout hash; the weights and AdamW
// moments are read by the servers, each its own slice (LoadShard names the file).
#pragma once

#include "common/config/config.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <string>

namespace ptrain {

struct StartState {
  int64_t step = 0;         // optimizer steps already applied
  int64_t tokens_seen = 0;
  DataState data;
  std::string resumed_from;  // the checkpoint .h5 file (symlinks resolved); empty = fresh
};

StartState load_start_state(const Config& config, const ParamLayout& layout);

}  // namespace ptrain
