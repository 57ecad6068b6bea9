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
#include <vector>

namespace ptrain {

struct StartState {
  int64_t step = 0;         // optimizer steps already applied
  int64_t tokens_seen = 0;
  DataState data;
  std::string resumed_from;  // the checkpoint .h5 file (symlinks resolved); empty = fresh
  // cluster.sync local: the slots of the workers' inner optimizer states the checkpoint holds.
  std::vector<int64_t> inner_state_slots;
};

// On resume, the checkpoint's stored config is compared with `config`, key by key: keys that only
// change when, how often or where the run reports (train.steps, the eval, log and checkpoint
// cadence, checkpoint.*, run.dir, run.threads, train.micro_batch, cluster.*, status.*) are
// listed and allowed; any other difference (model, optimizer, data, batch size, seed...) is
// refused with ConfigError listing every differing key with both values, unless
// `allow_config_change` (then they are listed as warnings). Before that, data.train and data.val
// must record the checkpoint's tokenizer (its hash; data without one is accepted): DataError
// naming the data, its key, the checkpoint and both hashes otherwise, whatever
// `allow_config_change` says.
StartState load_start_state(const Config& config, const ParamLayout& layout, bool allow_config_change = false);

// The checks of load_start_state (the checkpoint readable, written for this layout, its config
// compatible), silently: for the launcher before any role starts, so that the coordinator's own
// load is the one that reports what the resume changes, once.
void check_start_state(const Config& config, const ParamLayout& layout, bool allow_config_change = false);

// Whether changing `key` between a checkpoint and its resume changes nothing of the training
// itself (see load_start_state).
bool resume_safe_key(const std::string& key);

}  // namespace ptrain
