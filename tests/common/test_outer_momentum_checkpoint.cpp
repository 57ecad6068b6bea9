// The outer momentum buffer of cluster.sync local in sharded checkpoints: written by each shard
// as /optimizer/outer_momentum/<name> pieces, mapped by the index, read back bitwise for any
// range (also across a different shard cut), checked against its CRC32C, absent (empty) in a
// checkpoint written without it.
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/hdf5.hpp"
#include "common/io/sharded_checkpoint.hpp"
#include "support/checkpoint_test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::testing;

namespace {

// Publishes step `step` from full vectors with `n` shards, each shard given its slice of
// `momentum` (empty: none), as the servers of a run do.
std::string publish_with_momentum(const std::string& run, const ParamLayout& layout,
                                  const CheckpointData& d, const std::vector<float>& momentum,
                                  int64_t n) {
  const std::string tmp = begin_checkpoint(run, d.meta.step);
  const auto ranges = layout.shard_ranges(n);
  for (int64_t k = 0; k < n; ++k) {
    const auto [b, e] = ranges[static_cast<size_t>(k)];
    auto slice = [&](const std::vector<float>& v) {
      return v.empty() ? std::span<const float>()
                       : std::span<const float>(v).subspan(static_cast<size_t>(b),
                                                           static_cast<size_t>(e - b));
    };
    write_checkpoint_shard(tmp, k, n, layout, {b, e}, slice(d.params), slice(d.m), slice(d.v),
                           d.meta.step, slice(momentum));
  }
  return finish_sharded_checkpoint(run, tmp, layout, d.meta, n, 3);
}

}  // namespace

TEST_CASE("checkpoint outer momentum: written per shard - indexed - read back for any range") {
  ParamLayout layout(tiny_dims());
  TempDir run;
  const CheckpointData d = sample_data(layout, 5, 11);
  std::vector<float> momentum(d.params.size());
  for (size_t i = 0; i < momentum.size(); ++i) momentum[i] = 0.001f * static_cast<float>(i) - 1.0f;
  const std::string dir = publish_with_momentum(run.path.string(), layout, d, momentum, 3);

  const CheckpointSlice all = read_checkpoint_range(dir, layout, {0, layout.total()});
  CHECK(bitwise_equal(all.outer_momentum, momentum));
  CHECK(bitwise_equal(all.params, d.params));
  // Another cut than the writers' (a resume with another server count).
  const auto two = layout.shard_ranges(2);
  const CheckpointSlice half = read_checkpoint_range(dir, layout, two[1]);
  CHECK(bitwise_equal(half.outer_momentum,
                      std::vector<float>(momentum.begin() + two[1].first, momentum.end())));
  // Without the optimizer: not read.
  CHECK(read_checkpoint_range(dir, layout, {0, layout.total()}, false).outer_momentum.empty());
  CHECK_NOTHROW(verify_checkpoint(dir));
  // h5py sees it in the index as the other groups.
  h5::File f = h5::File::open(dir + "/checkpoint.h5");
  CHECK(f.exists("optimizer/outer_momentum/" + layout.tensors()[0].name));
  f.close();

  // A flipped value in a shard is caught by its crc32c.
  {
    h5::File s = h5::File::open(dir + "/shard-0.h5", h5::Access::kReadWrite);
    h5::Dataset ds = s.open_dataset("optimizer/outer_momentum/" + layout.tensors()[0].name);
    std::vector<float> v(static_cast<size_t>(layout.tensors()[0].count));
    ds.read(v);
    v[0] += 1.0f;
    ds.write(v);
  }
  CHECK_THROWS_AS(read_checkpoint_range(dir, layout, {0, layout.total()}), CheckpointError);

  // A checkpoint without it (bsp) reads as empty.
  TempDir run2;
  const std::string plain = publish_with_momentum(run2.path.string(), layout, d, {}, 2);
  CHECK(read_checkpoint_range(plain, layout, {0, layout.total()}).outer_momentum.empty());
}
