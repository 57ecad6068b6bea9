// The checkpoints/ folder of a run directory (docs/formats.md "The checkpoints folder of a run"):
// RUN_DIR/checkpoints/step-%08d/ folders published atomically (a .tmp folder, fsync, rename, then
// the relative symlink `latest` moved), keep-last-K, and finding the checkpoint to resume from
// with a fallback when `latest` is damaged. Not here: what is inside a checkpoint
// (checkpoint_format.hpp) and the steps of a sharded checkpoint (sharded_checkpoint.hpp), which
// publishes its folder the same way.
#pragma once

#include "common/io/checkpoint_format.hpp"
#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <optional>
#include <string>

namespace ptrain {

// RUN_DIR/checkpoints/step-%08d/checkpoint.h5 via a .tmp directory, fsync, rename, `latest` moved,
// then all but the newest `keep` removed. Returns the published directory.
std::string publish_checkpoint(const std::string& run_dir, const ParamLayout& layout,
                               const CheckpointData& data, int64_t keep);

// RUN_DIR/checkpoints/step-%08d.tmp, the folder a checkpoint of `step` is written into before it is
// published (a pure function; creates nothing).
std::string checkpoint_tmp_dir(const std::string& run_dir, int64_t step);

// The newest valid checkpoint directory under RUN_DIR/checkpoints: `latest` if it reads back
// (verify_checkpoint), else the newest step-* that does (logging which and why). Removes stale
// *.tmp directories. nullopt when there is no checkpoint at all; CheckpointError when there are
// step directories but none reads back (starting afresh would silently discard a run).
std::optional<std::string> find_latest_checkpoint(const std::string& run_dir);

}  // namespace ptrain
