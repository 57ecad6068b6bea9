// make_shard_loader: what a server loads for LoadShard. Fresh: its slice of the GPT-2
// initialisation from the seed (bitwise the slice of `ptrain init`'s vector) and zero moments.
// Resume: its slice of a single-file or sharded checkpoint, whatever server count wrote it, with
// the step checked against the LoadShard's version and every failure naming the file.
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/sharded_checkpoint.hpp"
#include "common/tensor/gpt_init.hpp"
#include "support/job_test_util.hpp"
#include "paramserver/param_server.hpp"

#include <doctest/doctest.h>

#include <random>

using namespace ptrain;
using namespace ptrain::testing;

namespace {

ParamLayout layout3() { return ParamLayout(ModelDims{257, 260, 16, 2, 2, 32}); }

CheckpointData random_state(const ParamLayout& layout, int64_t step) {
  std::mt19937 gen(static_cast<uint32_t>(step));
  std::normal_distribution<float> nd;
  CheckpointData d;
  const auto n = static_cast<size_t>(layout.total());
  d.params.resize(n);
  d.m.resize(n);
  d.v.resize(n);
  for (size_t i = 0; i < n; ++i) {
    d.params[i] = nd(gen);
    d.m[i] = nd(gen) * 1e-3f;
    d.v[i] = std::abs(nd(gen)) * 1e-6f;
  }
  d.meta.step = step;
  d.meta.tokenizer_json = "{}";
  d.meta.data = DataState{9, 0, step, {}};
  return d;
}

// The servers' loads concatenated in range order.
CheckpointData load_all(const ParamLayout& layout, int64_t servers, const proto::LoadShard& like) {
  CheckpointData out;
  for (const auto& [b, e] : layout.shard_ranges(servers)) {
    const proto::KeyRange r{b, e};
    proto::LoadShard m = like;
    m.range = r;
    const ShardState s = make_shard_loader(layout, r)(m);
    REQUIRE(static_cast<int64_t>(s.weights.size()) == r.size());
    REQUIRE(static_cast<int64_t>(s.m.size()) == r.size());
    REQUIRE(static_cast<int64_t>(s.v.size()) == r.size());
    out.params.insert(out.params.end(), s.weights.begin(), s.weights.end());
    out.m.insert(out.m.end(), s.m.begin(), s.m.end());
    out.v.insert(out.v.end(), s.v.begin(), s.v.end());
  }
  return out;
}

}  // namespace

TEST_CASE("shard loader: fresh slices of 1 2 and 3 servers are ptrain init's vector - zero moments") {
  const ParamLayout layout = layout3();
  std::vector<float> want(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, 4321, want);
  for (int64_t S : {1, 2, 3}) {
    const CheckpointData got = load_all(layout, S, proto::LoadShard{0, 0, {}, 4321, ""});
    CHECK(got.params == want);
    CHECK(got.m == std::vector<float>(want.size(), 0.0f));
    CHECK(got.v == std::vector<float>(want.size(), 0.0f));
  }
}

TEST_CASE("shard loader: resume slices from single-file and sharded checkpoints - any server count") {
  const ParamLayout layout = layout3();
  TempDir dir("shard-loader");
  const CheckpointData want = random_state(layout, 6);
  const std::string single = dir / "single.h5";
  write_checkpoint_file(single, layout, want);
  const std::string sharded =
      checkpoint_file(publish_sharded_checkpoint(dir / "run", layout, want, 2, 2));
  for (const std::string& src : {single, sharded}) {
    for (int64_t S : {1, 2, 3}) {
      CAPTURE(src);
      CAPTURE(S);
      const CheckpointData got = load_all(layout, S, proto::LoadShard{6, 0, {}, 1, src});
      CHECK(got.params == want.params);
      CHECK(got.m == want.m);
      CHECK(got.v == want.v);
    }
  }
  // The LoadShard's version must be the checkpoint's step.
  const proto::KeyRange r{0, layout.total()};
  auto loader = make_shard_loader(layout, r);
  CHECK_THROWS_WITH_AS(loader(proto::LoadShard{5, 0, r, 1, single}),
                       doctest::Contains("is of step 6, the job resumes at step 5"),
                       CheckpointError);
  // A missing file is named.
  CHECK_THROWS_WITH_AS(loader(proto::LoadShard{6, 0, r, 1, dir / "nope.h5"}),
                       doctest::Contains("nope.h5"), IoError);
}
