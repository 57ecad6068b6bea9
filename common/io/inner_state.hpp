// A worker's inner optimizer state under cluster.sync local (docs/local_sgd.md): the AdamW moments
// of its inner steps and how many inner steps they hold (AdamW's bias correction counts them).
// The state lives on the worker across outer steps; a checkpoint saves it beside the servers'
// shards as inner-R.h5, one file per worker, R being the worker's *slot*: its position among the
// step's workers in id order when the checkpoint was taken, which is also the position that
// decides its share of every step's windows. A resume gives slot R's state to the worker at the
// same position, so the pairing of moments and windows is that of the uninterrupted run.
//
// The file (docs/formats.md "Inner optimizer state"): root attributes format
// "ptrain-inner-state", format_version, layout_hash, step, slot, inner_steps, ptrain_version,
// created_utc; float32 datasets /optimizer/m/<name> and /optimizer/v/<name> (whole tensors in the
// model's shapes, each with a crc32c attribute), and the checksum block every checkpoint file
// has. Written atomically (temp name, fsync, rename); the checkpoint's checkpoint.h5 lists the
// slots it holds (CheckpointMeta::inner_state_slots), so a missing file is an error, never a
// silent fresh start.
#pragma once

#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ptrain {

struct InnerState {
  int64_t step = 0;         // the checkpoint's step (outer steps applied)
  int64_t slot = 0;
  int64_t inner_steps = 0;  // AdamW steps the moments hold
  std::vector<float> m, v;  // layout.total() floats each
};

// "inner-R.h5".
std::string inner_state_file_name(int64_t slot);

// Writes DIR/inner-R.h5 atomically. m and v: layout.total() floats each; DIR must exist (the
// checkpoint's temp folder). IoError when it cannot be written; no partial file is left.
void write_inner_state(const std::string& dir, const ParamLayout& layout, int64_t step,
                       int64_t slot, int64_t inner_steps, std::span<const float> m,
                       std::span<const float> v);

// Reads DIR/inner-R.h5 (DIR: a checkpoint folder, or its checkpoint.h5) and checks it against
// `layout` and `step`: header, slot, every tensor's shape and CRC32C. CheckpointError naming the
// file and what is wrong, a missing file included (IoError when it cannot be read).
InnerState read_inner_state(const std::string& dir, const ParamLayout& layout, int64_t step,
                            int64_t slot);

// The same checks without a layout (ptrain ckpt verify, the index writer): the header against
// `layout_hash` and `step`, /optimizer/m and /optimizer/v holding the same tensors, each one's
// CRC32C.
void verify_inner_state(const std::string& dir, const std::string& layout_hash, int64_t step,
                        int64_t slot);

}  // namespace ptrain
