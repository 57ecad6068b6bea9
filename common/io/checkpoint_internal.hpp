// Private to the checkpoint files of common/io (checkpoint_format.cpp, run_checkpoints.cpp,
// sharded_checkpoint.cpp): the constants and helpers more than one of them needs, each defined
// once. Not a public API: nothing outside those three files includes it, and nothing here
// validates its arguments beyond what the public entry points already did.
#pragma once

#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/hdf5.hpp"
#include "common/tensor/param_layout.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace ptrain::checkpoint_internal {

// The file of a checkpoint folder that readers open: the whole checkpoint or a sharded index.
inline constexpr const char* kFileName = "checkpoint.h5";
// Largest shard count a writer accepts and a reader believes.
inline constexpr int64_t kMaxShards = 1 << 16;

// ---- defined in checkpoint_format.cpp ----------------------------------------------------------

// "2026-12-03T10:00:00Z" (the created_utc attribute).
std::string utc_now_iso8601();
// CRC32C of the floats' little-endian bytes (every tensor's crc32c attribute).
uint32_t crc_of(std::span<const float> v);
// Runs `f`; HDF5 failures (IoError from the wrappers) while reading become "truncated or damaged".
template <class F>
auto damaged_guard(const std::string& file, F&& f) {
  try {
    return f();
  } catch (const IoError& e) {
    throw CheckpointError(fmt::format("{}: truncated or damaged: {}", file, e.what()));
  }
}

// Opens an existing HDF5 file read-only after checking its checksum block; `who` starts every
// message. No signature or an HDF5 open failure: CheckpointError; unreadable or a lock held by a
// writer: IoError.
h5::File open_readonly(const std::string& path, const std::string& who);
// open_readonly for a file that must exist and be a regular file (IoError naming it otherwise).
h5::File open_checkpoint(const std::string& file);
// Opens tensor `rel` ("model/<name>") of `f`: present, float32, of `expect_shape` (when given),
// with a crc32c attribute (returned in `stored`). CheckpointError naming `file` otherwise.
h5::Dataset open_tensor(const h5::File& f, const std::string& file, const std::string& rel,
                        const std::vector<int64_t>* expect_shape, uint64_t& stored);
// `actual`, the CRC32C of the whole tensor `rel`, must be the stored one (CheckpointError naming
// `file`; `sharded`: computed over the shards' pieces).
void check_crc(const std::string& file, const std::string& rel, uint64_t stored, uint32_t actual,
               bool sharded);
// How every checkpoint file is written: with the checksum block filled in after HDF5 closed the
// file, before the fsync and the rename.
h5::AtomicWriteOptions with_checksum_block();

// Enforces params = layout.total() floats and m, v the same or empty.
void check_sizes(const ParamLayout& layout, const CheckpointData& data);

// The index of a sharded checkpoint whose shards shard-0.h5 … shard-(n_shards-1).h5 are complete
// in `dir` (used as the label of every message): reads every shard back (header against `layout`
// and meta.step, every piece's CRC32C, the whole-tensor CRC32C continued piece by piece; every
// inner-R.h5 of meta.inner_state_slots: header and CRC32Cs, inner_state.hpp), writes
// DIR/checkpoint.h5 atomically (the attributes from `meta` as write_checkpoint_file does,
// shard_count, the virtual datasets with the whole-tensor crc32c, /tokenizer, /data) and checks
// that it reads back (header, meta, every tensor's crc32c and mappings). Throws CheckpointError
// naming the shard, or IoError; on a failure after the write DIR/checkpoint.h5 stays (the caller
// removes the folder).
void write_shard_index(const std::string& dir, const ParamLayout& layout,
                       const CheckpointMeta& meta, int64_t n_shards);

// ---- defined in run_checkpoints.cpp ------------------------------------------------------------

// "step-%08d".
std::string step_dir_name(int64_t step);

// Removes `p` and everything below it (nothing when it does not exist); IoError when it cannot.
void remove_tree(const std::filesystem::path& p);

// Steps 2-4 of a publish: `tmp_dir` (complete, fsync'd) becomes DIR/name, `latest` moves to it,
// old ones beyond `keep` are removed.
void publish_dir(const std::filesystem::path& dir, const std::string& name,
                 const std::filesystem::path& tmp_dir, int64_t keep);

}  // namespace ptrain::checkpoint_internal
