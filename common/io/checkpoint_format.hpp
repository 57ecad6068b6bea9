// The HDF5 checkpoint format (docs/formats.md "Checkpoint (HDF5)"): writing, reading and verifying
// one checkpoint, whole or one server's slice of it. Readers refuse a wrong format version, a
// different layout hash, a checksum mismatch or a truncated file, naming which (CheckpointError).
// Nothing here needs a run directory: a checkpoint is a file or the folder that holds it.
// Not here: the run's checkpoints/ folder (publish, `latest`, keep-K, fallback:
// run_checkpoints.hpp) and the order in which servers and coordinator write a sharded checkpoint
// (sharded_checkpoint.hpp).
//
// Two forms, read by the same functions:
// - single file: checkpoint.h5 holds every tensor (ptrain init, tools, publish_checkpoint);
// - sharded: parameter server k writes shard-K.h5 (its slice of the weights and moments, as
//   blocks of whole rows) and the coordinator writes checkpoint.h5 with the attributes,
//   /tokenizer, /data and every tensor as an HDF5 virtual dataset over the shards (bare
//   relative source names), so h5py/h5dump see the same file as the single-file form.
//   ptrain's readers open and verify every shard themselves (a missing source would otherwise
//   read as the fill value) and read the tensors from the shards, not through HDF5's virtual
//   dataset resolution (so neither the cwd nor HDF5_VDS_PREFIX matters to them).
#pragma once

#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace ptrain {

inline constexpr int32_t kCheckpointFormatVersion = 1;

// Where the data plan stands, for exact resume.
// A window of data.train as the data plan hands it out: its index and the data epoch it
// belongs to (the epoch whose permutation it came from).
struct DataWindow {
  int64_t epoch = 0;
  int64_t window = 0;
  bool operator==(const DataWindow&) const = default;
};

struct DataState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t position = 0;  // next permutation position of `epoch` to hand out
  // Windows handed out but returned unapplied (a worker lost or late): the plan hands them out
  // again before any new position. Stored as /data/returned, int64 (n, 2) rows [epoch, window];
  // absent = none (checkpoints written before this existed).
  std::vector<DataWindow> returned;
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
  // cluster.sync local: the slots R of the workers' inner optimizer states saved beside the
  // shards as inner-R.h5 (common/io/inner_state.hpp), increasing; empty = none. Stored as the
  // root dataset /inner_state_slots (int64), absent when empty.
  std::vector<int64_t> inner_state_slots;
};

struct CheckpointData {
  CheckpointMeta meta;
  std::vector<float> params;  // layout.total() floats
  std::vector<float> m;       // AdamW first moment (may be empty: written as zeros)
  std::vector<float> v;       // AdamW second moment (may be empty: written as zeros)
};

// `path` is a checkpoint .h5 file or a directory holding checkpoint.h5.
std::string checkpoint_file(const std::string& path);

// ---- Single file ------------------------------------------------------------------------------

// Writes one checkpoint file (not atomic by itself; publish_checkpoint makes it so). The file's
// format_version, layout_hash, ptrain_version and created_utc come from this build, `layout` and
// the clock, not from data.meta. params: layout.total() floats; m, v: the same or empty (zeros).
void write_checkpoint_file(const std::string& file, const ParamLayout& layout,
                           const CheckpointData& data);
// The same, atomically: FILE.tmp.<pid>, fsync, rename over `file`, fsync the folder. A failure
// leaves neither a partial file nor a changed `file` (used by `ptrain init`).
void write_checkpoint_file_atomic(const std::string& file, const ParamLayout& layout,
                                  const CheckpointData& data);

// ---- Shard files ------------------------------------------------------------------------------

// "shard-K.h5".
std::string shard_file_name(int64_t k);

// Server k of n: writes TMP_DIR/shard-K.h5 atomically (shard-K.h5.tmp.<pid>, fsync, rename, fsync
// the folder) with its slice [range.first, range.second) of the flat vector. `weights`, `m`, `v`
// hold that slice (range size floats each; m and v may be empty: written as zeros). Every range
// boundary must be a row boundary of the layout (ParamLayout::shard_ranges gives such ranges).
// Safe to call from several threads at once (different k) or from several processes. TMP_DIR
// must exist (in a run, begin_checkpoint creates it). Throws IoError / InternalError; a failure
// leaves no shard-K.h5. The index over the shards is written by finish_sharded_checkpoint.
// `outer_momentum` (cluster.sync local: the servers' outer SGD momentum buffer of the slice; empty
// = none) is written as /optimizer/outer_momentum/<name> pieces, like m and v; the index then maps
// it too. Every shard of a checkpoint has it or none does.
void write_checkpoint_shard(const std::string& tmp_dir, int64_t k, int64_t n_shards,
                            const ParamLayout& layout, std::pair<int64_t, int64_t> range,
                            std::span<const float> weights, std::span<const float> m,
                            std::span<const float> v, int64_t step,
                            std::span<const float> outer_momentum = {});

// ---- Reading (either form) --------------------------------------------------------------------

// Reads and checks the header (format, format_version) and the meta data; no tensor is read.
CheckpointMeta read_checkpoint_meta(const std::string& path);
// Everything a reader can check without the model config: header, and every tensor under /model
// and /optimizer (float32, CRC32C matching, the same names in each group), and every worker's
// inner optimizer state the checkpoint lists (inner_state.hpp). Throws CheckpointError
// naming the file and what is wrong (IoError when the file is missing or locked).
void verify_checkpoint(const std::string& path);
// Verifies format version, layout hash (against `layout`), every tensor's shape and CRC32C.
CheckpointData read_checkpoint(const std::string& path, const ParamLayout& layout,
                               bool with_optimizer = true);

// One parameter server's slice [range.first, range.second) of a checkpoint (resume): the meta
// data and the weights and AdamW moments of that slice only, range size floats each.
struct CheckpointSlice {
  CheckpointMeta meta;
  std::vector<float> params, m, v;  // m, v empty when read without the optimizer
  // /optimizer/outer_momentum (cluster.sync local); empty when the checkpoint has none or it was
  // read without the optimizer.
  std::vector<float> outer_momentum;
};
// Reads the slice, checking what it touches: header, format version and layout hash (against
// `layout`); for a sharded checkpoint every shard's header (cheap) and, for each tensor that
// overlaps the range, the index's mappings and the crc32c of every shard piece read (the whole
// tensor's crc32c too when the range covers it). Only the pieces that overlap are read, so a
// server that resumes with the checkpoint's server count reads exactly its own shard file. A
// single-file checkpoint stores one crc32c per tensor, so a tensor cut by the range is read whole
// (memory: one tensor) to check it. Throws CheckpointError / IoError naming the file (and shard).
CheckpointSlice read_checkpoint_range(const std::string& path, const ParamLayout& layout,
                                      std::pair<int64_t, int64_t> range,
                                      bool with_optimizer = true);

// Number of shards of the checkpoint at `path` (0 for a single-file checkpoint). Reads the header
// only.
int64_t checkpoint_shard_count(const std::string& path);

}  // namespace ptrain
