// The workers' inner optimizer states of cluster.sync local in sharded checkpoints: inner-R.h5
// beside the shards, listed by the index (/inner_state_slots), read back bitwise, every refusal
// naming the file: another slot, step or layout, a damaged tensor, a listed file missing at
// publish or afterwards.
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/hdf5.hpp"
#include "common/io/inner_state.hpp"
#include "common/io/sharded_checkpoint.hpp"
#include "support/checkpoint_test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::testing;

namespace {

std::vector<float> ramp(const ParamLayout& layout, float scale) {
  std::vector<float> v(static_cast<size_t>(layout.total()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = scale * static_cast<float>(i % 1000) - 0.5f;
  return v;
}

// Publishes step d.meta.step with 2 shards and the inner states of `slots` (m = ramp(slot + 1),
// v = ramp(slot + 2), inner_steps = 10 × (slot + 1)), as the servers and workers of a run do.
std::string publish_with_inner(const std::string& run, const ParamLayout& layout, CheckpointData d,
                               const std::vector<int64_t>& slots, bool write_them = true) {
  const std::string tmp = begin_checkpoint(run, d.meta.step);
  const auto ranges = layout.shard_ranges(2);
  for (int64_t k = 0; k < 2; ++k) {
    const auto [b, e] = ranges[static_cast<size_t>(k)];
    auto slice = [&](const std::vector<float>& v) {
      return std::span<const float>(v).subspan(static_cast<size_t>(b), static_cast<size_t>(e - b));
    };
    write_checkpoint_shard(tmp, k, 2, layout, {b, e}, slice(d.params), slice(d.m), slice(d.v),
                           d.meta.step);
  }
  if (write_them) {
    for (int64_t r : slots) {
      write_inner_state(tmp, layout, d.meta.step, r, 10 * (r + 1),
                        ramp(layout, 0.001f * static_cast<float>(r + 1)),
                        ramp(layout, 0.001f * static_cast<float>(r + 2)));
    }
  }
  d.meta.inner_state_slots = slots;
  return finish_sharded_checkpoint(run, tmp, layout, d.meta, 2, 3);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(nothing thrown)";
}

}  // namespace

TEST_CASE("inner state checkpoint: listed by the index - read back bitwise - verified with the checkpoint") {
  ParamLayout layout(tiny_dims());
  TempDir run;
  const CheckpointData d = sample_data(layout, 7, 3);
  // Slot 1 is absent: its worker was lost while the checkpoint was written.
  const std::string dir = publish_with_inner(run.path.string(), layout, d, {0, 2});
  CHECK(read_checkpoint_meta(dir).inner_state_slots == std::vector<int64_t>{0, 2});
  CHECK_NOTHROW(verify_checkpoint(dir));
  const InnerState s = read_inner_state(dir, layout, 7, 2);
  CHECK(s.inner_steps == 30);
  CHECK(s.slot == 2);
  CHECK(bitwise_equal(s.m, ramp(layout, 0.003f)));
  CHECK(bitwise_equal(s.v, ramp(layout, 0.004f)));
  // The index's own file works as the path too.
  CHECK(read_inner_state(dir + "/checkpoint.h5", layout, 7, 0).inner_steps == 10);
  CHECK(fs::exists(fs::path(dir) / "inner-2.h5"));

  // A checkpoint of another mode lists none.
  TempDir run2;
  CHECK(read_checkpoint_meta(publish_with_inner(run2.path.string(), layout, d, {}))
            .inner_state_slots.empty());
}

TEST_CASE("inner state checkpoint: another slot - step - layout - a damaged tensor - a missing file are refused naming the file") {
  ParamLayout layout(tiny_dims());
  TempDir run;
  const CheckpointData d = sample_data(layout, 4, 5);
  const std::string dir = publish_with_inner(run.path.string(), layout, d, {0, 1});
  const std::string file1 = (fs::path(dir) / "inner-1.h5").string();

  // Asked as another slot: the file of that slot is missing.
  const std::string missing = message_of([&] { read_inner_state(dir, layout, 4, 5); });
  CHECK_MESSAGE(missing.find("inner-5.h5") != std::string::npos, missing);
  // Another step.
  const std::string step = message_of([&] { read_inner_state(dir, layout, 5, 1); });
  CHECK_MESSAGE(step.find(file1) != std::string::npos, step);
  CHECK_MESSAGE(step.find("written at step 4, the checkpoint is of step 5") != std::string::npos,
                step);
  // Another model.
  const ModelDims other = tiny_dims(16);
  const std::string lay = message_of([&] { read_inner_state(dir, ParamLayout(other), 4, 1); });
  CHECK_MESSAGE(lay.find("layout hash") != std::string::npos, lay);
  // A renamed file is another slot's.
  fs::copy_file(file1, fs::path(dir) / "inner-3.h5");
  const std::string slot = message_of([&] { read_inner_state(dir, layout, 4, 3); });
  CHECK_MESSAGE(slot.find("holds slot 1, expected slot 3") != std::string::npos, slot);

  // A damaged tensor: refused by the reader and by verify_checkpoint, naming the file.
  {
    h5::File f = h5::File::open(file1, h5::Access::kReadWrite);
    h5::Dataset ds = f.open_dataset("optimizer/v/" + layout.tensors()[0].name);
    std::vector<float> v(static_cast<size_t>(layout.tensors()[0].count));
    ds.read(v);
    v[3] += 1.0f;
    ds.write(v);
  }
  const std::string damaged = message_of([&] { read_inner_state(dir, layout, 4, 1); });
  CHECK_MESSAGE(damaged.find(file1) != std::string::npos, damaged);
  CHECK_THROWS_AS(read_inner_state(dir, layout, 4, 1), CheckpointError);
  const std::string verify = message_of([&] { verify_checkpoint(dir); });
  CHECK_MESSAGE(verify.find(file1) != std::string::npos, verify);

  // A listed file removed after the publish.
  fs::remove(file1);
  const std::string gone = message_of([&] { verify_checkpoint(dir); });
  CHECK_MESSAGE(gone.find(file1) != std::string::npos, gone);
}

TEST_CASE("inner state checkpoint: a listed file that was never written stops the publish - latest stays") {
  ParamLayout layout(tiny_dims());
  TempDir run;
  const CheckpointData first = sample_data(layout, 2, 1);
  const std::string good = publish_with_inner(run.path.string(), layout, first, {0});
  const CheckpointData second = sample_data(layout, 4, 2);
  const std::string err = message_of(
      [&] { publish_with_inner(run.path.string(), layout, second, {0, 1}, /*write_them=*/false); });
  CHECK_MESSAGE(err.find("inner-0.h5") != std::string::npos, err);
  CHECK(read_checkpoint_meta(run.path.string() + "/checkpoints/latest").step == 2);
  CHECK_FALSE(fs::exists(run.path / "checkpoints" / "step-00000004"));
}
