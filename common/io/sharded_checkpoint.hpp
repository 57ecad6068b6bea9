// The order of a sharded checkpoint across the parameter servers and the coordinator: the temp
// folder, one shard file per server, then the index and the publish, so that nothing is visible
// to readers before every shard is complete and checked. Not here: the bytes of a shard or of the
// index (checkpoint_format.hpp, which also declares write_checkpoint_shard, the servers' part) and
// the run's checkpoints/ folder (run_checkpoints.hpp: `latest`, keep-K, find_latest_checkpoint).
//
// The order of calls for step N with S servers (one consistent cut: every server's state at
// version N):
//   coordinator: tmp = begin_checkpoint(run_dir, N);                   // creates the temp dir
//   server k   : write_checkpoint_shard(tmp, k, S, layout, range_k, w, m, v, N);   // in parallel
//   coordinator: (after every server reported success)
//                dir = finish_sharded_checkpoint(run_dir, tmp, layout, meta, S, keep);
// A server on another host computes the same `tmp` with checkpoint_tmp_dir(run_dir, N)
// (run_checkpoints.hpp; a shared file system) or is told it by the coordinator. Nothing is visible to readers before
// finish_sharded_checkpoint renames the folder; a crash anywhere before leaves a *.tmp folder that
// find_latest_checkpoint removes, and the previous `latest` untouched.
#pragma once

#include "common/io/checkpoint_format.hpp"
#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <string>

namespace ptrain {

// Coordinator: creates checkpoint_tmp_dir(run_dir, step) empty (removing a stale one left by a
// killed run) and returns it.
std::string begin_checkpoint(const std::string& run_dir, int64_t step);

// Coordinator, once every shard is written: opens every shard and reads it back (header: index,
// count, layout hash, step; every tensor piece's CRC32C), writes TMP_DIR/checkpoint.h5 (the
// attributes from `meta` as write_checkpoint_file does, shard_count, /tokenizer, /data and the
// virtual datasets with the whole-tensor crc32c; temp name, fsync, rename), checks the index's
// mappings read back and publishes the folder as publish_checkpoint does (rename, `latest`,
// keep-K). The shards are durable already: their writers fsync'd them and the folder.
// Returns the published directory. On any problem throws CheckpointError naming the shard (or
// IoError), removes TMP_DIR and leaves `latest` and every published checkpoint as they were.
std::string finish_sharded_checkpoint(const std::string& run_dir, const std::string& tmp_dir,
                                      const ParamLayout& layout, const CheckpointMeta& meta,
                                      int64_t n_shards, int64_t keep);

// Everything above in one process, from full vectors (tests, tools, the threads launcher): the
// ranges are layout.shard_ranges(n_shards); shards are written one after another.
std::string publish_sharded_checkpoint(const std::string& run_dir, const ParamLayout& layout,
                                       const CheckpointData& data, int64_t n_shards, int64_t keep);

}  // namespace ptrain
