// HDF5 checkpoints (format in CONTRACTS.md and docs/formats.md) and the run directory's
// checkpoints/ folder: atomic publish (tmp dir, fsync, rename, then `latest`), keep-last-K,
// fallback when `latest` is damaged. Readers refuse a wrong format version, a different layout
// hash, a checksum mismatch or a truncated file, naming which (CheckpointError).
#pragma once

#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ptrain {

inline constexpr int32_t kCheckpointFormatVersion = 1;

// Where the data plan stands, for exact resume.
struct DataState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t position = 0;  // next permutation position of `epoch` to hand out
};

// Everything but the tensors: cheap to read, enough to rebuild the layout.
struct CheckpointMeta {
  int32_t format_version = 0;
  int64_t step = 0;
  int64_t tokens_seen = 0;
  std::string config_yaml;
  std::string layout_hash;
  std::string ptrain_version;
  std::string created_utc;
  std::string tokenizer_json;
  DataState data;
};

struct CheckpointData {
  CheckpointMeta meta;
  std::vector<float> params;  // layout.total() floats
  std::vector<float> m;       // AdamW first moment (may be empty: written as zeros)
  std::vector<float> v;       // AdamW second moment (may be empty: written as zeros)
};

// `path` is a checkpoint .h5 file or a directory holding checkpoint.h5.
std::string checkpoint_file(const std::string& path);

// Writes one checkpoint file (not atomic by itself; publish_checkpoint makes it so). The file's
// format_version, layout_hash, ptrain_version and created_utc come from this build, `layout` and
// the clock, not from data.meta. params: layout.total() floats; m, v: the same or empty (zeros).
void write_checkpoint_file(const std::string& file, const ParamLayout& layout,
                           const CheckpointData& data);
// The same, atomically: FILE.tmp.<pid>, fsync, rename over `file`, fsync the folder. A failure
// leaves neither a partial file nor a changed `file` (used by `ptrain init`).
void write_checkpoint_file_atomic(const std::string& file, const ParamLayout& layout,
                                  const CheckpointData& data);

// Reads and checks the header (format, format_version) and the meta data; no tensor is read.
CheckpointMeta read_checkpoint_meta(const std::string& path);
// Everything a reader can check without the model config: header, and every tensor under /model
// and /optimizer (float32, CRC32C matching, the same names in each group). Throws CheckpointError
// naming the file and what is wrong (IoError when the file is missing or locked).
void verify_checkpoint(const std::string& path);
// Verifies format version, layout hash (against `layout`), every tensor's shape and CRC32C.
CheckpointData read_checkpoint(const std::string& path, const ParamLayout& layout,
                               bool with_optimizer = true);

// RUN_DIR/checkpoints/step-%08d/checkpoint.h5 via a .tmp directory, fsync, rename, `latest` moved,
// then all but the newest `keep` removed. Returns the published directory.
std::string publish_checkpoint(const std::string& run_dir, const ParamLayout& layout,
                               const CheckpointData& data, int64_t keep);

// The newest valid checkpoint directory under RUN_DIR/checkpoints: `latest` if it reads back
// (verify_checkpoint), else the newest step-* that does (logging which and why). Removes stale
// *.tmp directories. nullopt when there is no checkpoint at all; CheckpointError when there are
// step directories but none reads back (starting afresh would silently discard a run).
std::optional<std::string> find_latest_checkpoint(const std::string& run_dir);

}  // namespace ptrain
