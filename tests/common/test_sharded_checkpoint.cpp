// Sharded checkpoints in a run (common/io/sharded_checkpoint): round trips with 1, 2, 3 and many
// shards (the index's and the shards' attributes as the contract says), shards written from
// several threads at once, finish refusing a missing or bad shard and leaving `latest` as it was,
// and crash safety: a partial temp folder is never used, also when the writer is killed with
// SIGKILL.
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/hdf5.hpp"
#include "common/io/run_checkpoints.hpp"
#include "common/io/sharded_checkpoint.hpp"
#include "common/util/hash.hpp"
#include "support/checkpoint_test_util.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::testing;

TEST_CASE("checkpoint sharded: 1 2 and 3 shards round trip bitwise equal") {
  ParamLayout layout(tiny_dims());
  for (int64_t n : {1, 2, 3}) {
    INFO("shards: ", n);
    TempDir run;
    const CheckpointData d = sample_data(layout, 7 + n, static_cast<uint32_t>(n));
    const std::string dir = publish_sharded_checkpoint(run.path.string(), layout, d, n, 3);
    const fs::path ck = run.path / "checkpoints";
    CHECK(dir == (ck / step_name(7 + n)).string());
    CHECK(read_link(ck / "latest") == step_name(7 + n));

    // The folder: the index and one file per shard, nothing else.
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    std::vector<std::string> want = {"checkpoint.h5"};
    for (int64_t k = 0; k < n; ++k) want.push_back(shard_file_name(k));
    CHECK(names == want);

    const CheckpointData r = read_checkpoint(dir, layout);
    CHECK(bitwise_equal(r.params, d.params));
    CHECK(bitwise_equal(r.m, d.m));
    CHECK(bitwise_equal(r.v, d.v));
    CHECK(r.meta.step == 7 + n);
    CHECK(r.meta.tokens_seen == d.meta.tokens_seen);
    CHECK(r.meta.config_yaml == d.meta.config_yaml);
    CHECK(r.meta.tokenizer_json == d.meta.tokenizer_json);
    CHECK(r.meta.layout_hash == layout.hash());
    CHECK(r.meta.data.position == d.meta.data.position);
    const CheckpointData p = read_checkpoint((ck / "latest").string(), layout, false);
    CHECK(bitwise_equal(p.params, d.params));
    CHECK(p.m.empty());
    CHECK(read_checkpoint_meta(dir).step == 7 + n);
    CHECK(checkpoint_shard_count(dir) == n);
    CHECK_NOTHROW(verify_checkpoint(dir));
    CHECK(find_latest_checkpoint(run.path.string()) == dir);

    // The index: the contract's attributes, every tensor a virtual dataset over bare shard names
    // with the whole tensor's crc32c; the shards: row blocks with row_begin and crc32c.
    h5::File f = h5::File::open(dir + "/checkpoint.h5");
    CHECK(f.attr_string("format") == "ptrain-checkpoint");
    CHECK(f.attr_type("format_version").dtype == h5::DType::kInt32);
    CHECK(f.attr_int64("shard_count") == n);
    const auto ranges = layout.shard_ranges(n);
    const std::pair<const char*, const std::vector<float>*> groups[] = {
        {"model", &d.params}, {"optimizer/m", &d.m}, {"optimizer/v", &d.v}};
    for (const auto& [g, values] : groups) {
      const std::vector<float>& full = *values;
      for (const auto& t : layout.tensors()) {
        const std::string rel = std::string(g) + "/" + t.name;
        h5::Dataset ds = f.open_dataset(rel);
        CHECK(ds.is_virtual());
        CHECK(ds.shape() == t.shape);
        CHECK(ds.attr_type("crc32c").dtype == h5::DType::kUInt32);
        CHECK(ds.attr_uint64("crc32c") ==
              crc32c(full.data() + t.offset, static_cast<size_t>(t.count) * sizeof(float)));
        for (const auto& src : ds.virtual_sources()) {
          CHECK(src.find('/') == std::string::npos);
          CHECK(src.rfind("shard-", 0) == 0);
        }
      }
    }
    for (int64_t k = 0; k < n; ++k) {
      h5::File s = h5::File::open(dir + "/" + shard_file_name(k));
      CHECK(s.attr_string("format") == "ptrain-checkpoint-shard");
      CHECK(s.attr_int64("format_version") == kCheckpointFormatVersion);
      CHECK(s.attr_int64("shard_index") == k);
      CHECK(s.attr_int64("shard_count") == n);
      CHECK(s.attr_int64("range_begin") == ranges[static_cast<size_t>(k)].first);
      CHECK(s.attr_int64("range_end") == ranges[static_cast<size_t>(k)].second);
      CHECK(s.attr_string("layout_hash") == layout.hash());
      CHECK(s.attr_int64("step") == 7 + n);
      for (const std::string& name : s.open_group("model").children()) {
        h5::Dataset ds = s.open_dataset("model/" + name);
        const TensorSpec& t = layout.find(name);
        const int64_t row_begin = ds.attr_int64("row_begin");
        std::vector<float> piece(static_cast<size_t>(ds.size()));
        ds.read(piece);
        const size_t at = static_cast<size_t>(t.offset + row_begin * t.row_size());
        CHECK(std::memcmp(piece.data(), d.params.data() + at, piece.size() * sizeof(float)) == 0);
        CHECK(ds.attr_uint64("crc32c") == crc32c(piece.data(), piece.size() * sizeof(float)));
        CHECK(at >= static_cast<size_t>(ranges[static_cast<size_t>(k)].first));
      }
    }
    f.close();

    // Read through the virtual datasets by HDF5 itself, from another working directory.
    {
      TempDir elsewhere;
      Chdir cd(elsewhere.path);
      h5::File vf = h5::File::open(dir + "/checkpoint.h5");
      for (const auto& t : layout.tensors()) {
        std::vector<float> got(static_cast<size_t>(t.count));
        vf.open_dataset("model/" + t.name).read(got);
        CHECK_MESSAGE(std::memcmp(got.data(), d.params.data() + t.offset,
                                  got.size() * sizeof(float)) == 0,
                      t.name);
      }
    }
  }
}

TEST_CASE("checkpoint sharded: empty moments more shards than rows and a re-publish") {
  ParamLayout layout(tiny_dims(4));
  TempDir run;
  CheckpointData d = sample_data(layout, 3, 5);
  d.m.clear();
  d.v.clear();
  // Many shards: some hold a few elements of a 1-D tensor, some pieces are a single row.
  const std::string dir = publish_sharded_checkpoint(run.path.string(), layout, d, 37, 2);
  const CheckpointData r = read_checkpoint(dir, layout);
  CHECK(bitwise_equal(r.params, d.params));
  CHECK(r.m == std::vector<float>(static_cast<size_t>(layout.total()), 0.0f));
  CHECK(r.v == std::vector<float>(static_cast<size_t>(layout.total()), 0.0f));
  CHECK_NOTHROW(verify_checkpoint(dir));
  // The same step again, now with 2 shards: the folder is swapped; no stale shard remains.
  const CheckpointData d2 = sample_data(layout, 3, 6);
  publish_sharded_checkpoint(run.path.string(), layout, d2, 2, 2);
  CHECK(bitwise_equal(read_checkpoint(dir, layout).params, d2.params));
  CHECK_FALSE(fs::exists(fs::path(dir) / "shard-2.h5"));
  // A single-file checkpoint published over it reads as before (both forms side by side).
  publish_checkpoint(run.path.string(), layout, sample_data(layout, 4, 7), 2);
  CHECK(checkpoint_shard_count(run / "checkpoints/latest") == 0);
  CHECK(checkpoint_shard_count(dir) == 2);
}

TEST_CASE("checkpoint sharded: shards written from several threads at once") {
  ParamLayout layout(tiny_dims(16));
  for (int round = 0; round < 3; ++round) {
    TempDir run;
    const int64_t n = 4;
    const CheckpointData d = sample_data(layout, 100 + round, static_cast<uint32_t>(round));
    const std::string tmp = begin_checkpoint(run.path.string(), d.meta.step);
    CHECK(tmp == checkpoint_tmp_dir(run.path.string(), d.meta.step));
    const auto ranges = layout.shard_ranges(n);
    std::vector<std::thread> threads;
    std::vector<std::string> errors(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      threads.emplace_back([&, k] {
        try {
          const auto [b, e] = ranges[static_cast<size_t>(k)];
          // Each "server" owns copies of its slice, as a ShardStore does.
          const std::vector<float> w(d.params.begin() + b, d.params.begin() + e);
          const std::vector<float> m(d.m.begin() + b, d.m.begin() + e);
          const std::vector<float> v(d.v.begin() + b, d.v.begin() + e);
          write_checkpoint_shard(tmp, k, n, layout, ranges[static_cast<size_t>(k)], w, m, v,
                                 d.meta.step);
        } catch (const std::exception& ex) {
          errors[static_cast<size_t>(k)] = ex.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& e : errors) CHECK_MESSAGE(e.empty(), e);
    const std::string dir =
        finish_sharded_checkpoint(run.path.string(), tmp, layout, d.meta, n, 2);
    CHECK_FALSE(fs::exists(tmp));
    const CheckpointData r = read_checkpoint(dir, layout);
    CHECK(bitwise_equal(r.params, d.params));
    CHECK(bitwise_equal(r.m, d.m));
    CHECK(bitwise_equal(r.v, d.v));
  }
}

TEST_CASE("checkpoint sharded: finish refuses a missing or bad shard and keeps latest") {
  ParamLayout layout(tiny_dims());
  const int64_t n = 3;
  TempDir run;
  const fs::path ck = run.path / "checkpoints";
  const CheckpointData first = sample_data(layout, 5, 1);
  publish_sharded_checkpoint(run.path.string(), layout, first, n, 5);
  const CheckpointData next = sample_data(layout, 6, 2);

  auto check_untouched = [&] {
    CHECK(read_link(ck / "latest") == step_name(5));
    CHECK_FALSE(fs::exists(ck / step_name(6)));
    CHECK_FALSE(fs::exists(checkpoint_tmp_dir(run.path.string(), 6)));
    CHECK(bitwise_equal(read_checkpoint((ck / "latest").string(), layout).params, first.params));
  };

  SUBCASE("missing shard") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, layout, next, n, /*skip=*/1);
    const std::string msg = error_of(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); });
    CHECK_MESSAGE(contains(msg, "shard-1.h5"), msg);
    CHECK_MESSAGE(contains(msg, "missing"), msg);
    check_untouched();
  }
  SUBCASE("corrupted shard") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, layout, next, n);
    poke_value(tmp + "/shard-0.h5", "optimizer/m/" + tensor_in_shard(layout, n, 0));
    CHECK(throws_as<CheckpointError>(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); }));
    check_untouched();
  }
  SUBCASE("shard of another step") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, layout, next, n);
    CheckpointData stale = next;
    stale.meta.step = 4;
    const auto ranges = layout.shard_ranges(n);
    const auto [b, e] = ranges[2];
    write_checkpoint_shard(tmp, 2, n, layout, ranges[2],
                           std::span<const float>(next.params).subspan(b, e - b), {}, {}, 4);
    const std::string msg = error_of(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); });
    CHECK_MESSAGE(contains(msg, "shard-2.h5"), msg);
    CHECK_MESSAGE(contains(msg, "is of step 4"), msg);
    check_untouched();
  }
  SUBCASE("shards of another model") {
    ParamLayout other(tiny_dims(12));
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, other, sample_data(other, 6, 3), n);
    const std::string msg = error_of(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); });
    CHECK_MESSAGE(contains(msg, "shard-0.h5"), msg);
    CHECK_MESSAGE(contains(msg, "layout hash"), msg);
    check_untouched();
  }
  SUBCASE("wrong shard count") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    write_shards(tmp, layout, next, 2);
    const std::string msg = error_of(
        [&] { finish_sharded_checkpoint(run.path.string(), tmp, layout, next.meta, n, 5); });
    CHECK_MESSAGE(contains(msg, "shard-0.h5"), msg);
    check_untouched();
  }
  SUBCASE("a shard range that cuts a row is refused by the writer") {
    const std::string tmp = begin_checkpoint(run.path.string(), 6);
    const std::vector<float> w(5, 1.0f);
    CHECK(throws_as<InternalError>(
        [&] { write_checkpoint_shard(tmp, 0, 2, layout, {0, 5}, w, {}, {}, 6); }));
    CHECK_FALSE(fs::exists(tmp + "/shard-0.h5"));
  }
  SUBCASE("no temp folder") {
    CHECK(throws_as<IoError>([&] {
      write_checkpoint_shard(run / "nowhere", 0, 1, layout, {0, layout.total()}, next.params, {},
                             {}, 6);
    }));
  }
}

TEST_CASE("checkpoint sharded: a partial temp folder is never picked up") {
  ParamLayout layout(tiny_dims());
  TempDir run;
  const fs::path ck = run.path / "checkpoints";
  const CheckpointData first = sample_data(layout, 1, 1);
  publish_sharded_checkpoint(run.path.string(), layout, first, 2, 3);
  // Step 2: two of three shards written, then the job died (no index, no rename).
  const CheckpointData second = sample_data(layout, 2, 2);
  const std::string tmp = begin_checkpoint(run.path.string(), 2);
  write_shards(tmp, layout, second, 3, /*skip=*/2);
  // Step 3: every shard and even an index, but never renamed.
  const std::string tmp3 = begin_checkpoint(run.path.string(), 3);
  write_shards(tmp3, layout, sample_data(layout, 3, 3), 1);
  fs::copy_file(ck / step_name(1) / "checkpoint.h5", tmp3 + "/checkpoint.h5");
  // A server killed mid-write leaves its own temp file in the folder.
  std::ofstream(tmp + "/shard-2.h5.tmp.12345") << "\x89HDF\r\n\x1a\n";

  CHECK(find_latest_checkpoint(run.path.string()) == (ck / step_name(1)).string());
  CHECK_FALSE(fs::exists(tmp));
  CHECK_FALSE(fs::exists(tmp3));
  CHECK(read_link(ck / "latest") == step_name(1));
  CHECK(bitwise_equal(read_checkpoint((ck / "latest").string(), layout).params, first.params));

  // begin_checkpoint clears a stale temp folder of the same step.
  const std::string again = begin_checkpoint(run.path.string(), 2);
  std::ofstream(again + "/junk") << "x";
  CHECK(begin_checkpoint(run.path.string(), 2) == again);
  CHECK(fs::is_empty(again));
}

TEST_CASE("checkpoint sharded: kill -9 of the writer leaves the previous checkpoint usable") {
  // A child process publishes sharded checkpoints of a larger model in a loop (steps 2, 3, ...)
  // and is killed with SIGKILL at some point; whatever `latest` then names must read back
  // bitwise equal to the data of its step, and no temp folder may survive find_latest.
  ModelDims dims = tiny_dims(96);
  dims.Vp = 512;
  dims.T = 64;
  const ParamLayout layout(dims);
  for (int delay_ms : {5, 40, 150}) {
    TempDir run;
    const fs::path ck = run.path / "checkpoints";
    publish_sharded_checkpoint(run.path.string(), layout, sample_data(layout, 1, 1), 3, 2);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      try {
        for (int64_t step = 2;; ++step) {
          publish_sharded_checkpoint(run.path.string(), layout,
                                     sample_data(layout, step, static_cast<uint32_t>(step)), 3,
                                     2);
        }
      } catch (...) {
      }
      ::_exit(3);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status));
    const auto latest = find_latest_checkpoint(run.path.string());
    REQUIRE(latest.has_value());
    const CheckpointMeta meta = read_checkpoint_meta(*latest);
    INFO("killed after ", delay_ms, " ms; latest is step ", meta.step);
    const CheckpointData r = read_checkpoint(*latest, layout);
    CHECK(bitwise_equal(r.params,
                        sample_data(layout, meta.step, static_cast<uint32_t>(meta.step)).params));
    for (const auto& e : fs::directory_iterator(ck)) {
      const std::string name = e.path().filename().string();
      CHECK_MESSAGE(name.find(".tmp") == std::string::npos, name);
    }
  }
}
