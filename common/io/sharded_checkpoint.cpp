// The order of a sharded checkpoint across servers and coordinator: begin (the temp folder),
// finish (the index over the shards, then the publish) and the one-process form that does every
// step. Not here: the shard and index files themselves (checkpoint_format.cpp) and the publish
// into the run's checkpoints/ folder (run_checkpoints.cpp).
#include "common/io/sharded_checkpoint.hpp"

#include "common/error.hpp"
#include "common/io/checkpoint_internal.hpp"
#include "common/io/run_checkpoints.hpp"
#include "common/util/fs.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <span>
#include <vector>

namespace ptrain {
namespace fs = std::filesystem;
using checkpoint_internal::check_sizes;
using checkpoint_internal::kMaxShards;
using checkpoint_internal::publish_dir;
using checkpoint_internal::remove_tree;
using checkpoint_internal::step_dir_name;
using checkpoint_internal::write_shard_index;

std::string begin_checkpoint(const std::string& run_dir, int64_t step) {
  const std::string tmp = checkpoint_tmp_dir(run_dir, step);
  make_dirs(fs::path(tmp).parent_path().string());
  remove_tree(tmp);  // a stale one from a killed run
  make_dirs(tmp);
  fsync_path(fs::path(tmp).parent_path().string());
  return tmp;
}

std::string finish_sharded_checkpoint(const std::string& run_dir, const std::string& tmp_dir,
                                      const ParamLayout& layout, const CheckpointMeta& meta,
                                      int64_t n_shards, int64_t keep) {
  PTRAIN_ENFORCE(n_shards >= 1 && n_shards <= kMaxShards, "shard count {} outside 1..{}",
                 n_shards, kMaxShards);
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  const std::string name = step_dir_name(meta.step);
  const fs::path expect = checkpoint_tmp_dir(run_dir, meta.step);
  std::error_code ec;
  if (!fs::is_directory(tmp_dir, ec)) {
    throw IoError(fmt::format("{}: no such checkpoint folder (begin_checkpoint creates it)",
                              tmp_dir));
  }
  PTRAIN_ENFORCE(fs::equivalent(tmp_dir, expect, ec),
                 "finish_sharded_checkpoint: {} is not the temp folder of step {} ({})", tmp_dir,
                 meta.step, expect.string());
  try {
    // 1-3. Every shard read back, the index written and read back.
    write_shard_index(tmp_dir, layout, meta, n_shards);
  } catch (...) {
    std::error_code rec;
    fs::remove_all(tmp_dir, rec);
    throw;
  }
  // 4. Rename, `latest`, keep-K: as publish_checkpoint. (The shards were fsync'd, with the
  //    folder, by their writers; the index by write_file_atomically.)
  publish_dir(dir, name, fs::path(tmp_dir), keep);
  return (dir / name).string();
}

std::string publish_sharded_checkpoint(const std::string& run_dir, const ParamLayout& layout,
                                       const CheckpointData& data, int64_t n_shards,
                                       int64_t keep) {
  check_sizes(layout, data);
  const std::string tmp = begin_checkpoint(run_dir, data.meta.step);
  try {
    const auto ranges = layout.shard_ranges(n_shards);
    for (int64_t k = 0; k < n_shards; ++k) {
      const auto [b, e] = ranges[static_cast<size_t>(k)];
      auto slice = [&](const std::vector<float>& x) {
        return x.empty() ? std::span<const float>()
                         : std::span<const float>(x).subspan(static_cast<size_t>(b),
                                                             static_cast<size_t>(e - b));
      };
      write_checkpoint_shard(tmp, k, n_shards, layout, ranges[static_cast<size_t>(k)],
                             slice(data.params), slice(data.m), slice(data.v), data.meta.step);
    }
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return finish_sharded_checkpoint(run_dir, tmp, layout, data.meta, n_shards, keep);
}

}  // namespace ptrain
