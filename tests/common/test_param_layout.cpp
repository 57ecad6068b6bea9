// ParamLayout::shard_ranges: contiguous, covering, every boundary on a row boundary of the tensor
// it cuts (sharded checkpoints store a server's piece of a tensor as a block of whole rows), and
// balanced: each boundary within one row (of the tensor it cuts) of the ideal total·k/n.
#include "common/error.hpp"
#include "common/tensor/param_layout.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <string>
#include <vector>

using namespace ptrain;

namespace {

ModelDims dims(int64_t V, int64_t T, int64_t L, int64_t C) {
  ModelDims d;
  d.V = V;
  d.Vp = V;
  d.T = T;
  d.L = L;
  d.NH = 1;
  d.C = C;
  return d;
}

// The tensor holding flat offset x (x < total), found without ParamLayout's helpers.
const TensorSpec& holder(const ParamLayout& layout, int64_t x) {
  for (const auto& t : layout.tensors()) {
    if (x >= t.offset && x < t.offset + t.count) return t;
  }
  throw std::runtime_error("no tensor holds " + std::to_string(x));
}

int64_t row_of(const TensorSpec& t) {
  int64_t r = 1;
  for (size_t i = 1; i < t.shape.size(); ++i) r *= t.shape[i];
  return r;
}

void check_ranges(const ParamLayout& layout, int64_t n) {
  const auto ranges = layout.shard_ranges(n);
  REQUIRE(static_cast<int64_t>(ranges.size()) == n);
  CHECK(ranges.front().first == 0);
  CHECK(ranges.back().second == layout.total());
  for (int64_t k = 0; k < n; ++k) {
    const auto [b, e] = ranges[static_cast<size_t>(k)];
    CHECK(b <= e);
    if (k > 0) CHECK(b == ranges[static_cast<size_t>(k - 1)].second);
    if (k + 1 == n) continue;
    // Boundary e (between shard k and k+1): on a row boundary of the tensor it cuts.
    INFO("n=", n, " boundary ", k, " at ", e);
    const int64_t ideal = layout.total() * (k + 1) / n;
    if (e == layout.total()) {
      CHECK(std::llabs(e - ideal) <= row_of(layout.tensors().back()));
      continue;
    }
    const TensorSpec& t = holder(layout, e);
    CHECK((e - t.offset) % row_of(t) == 0);
    CHECK(layout.is_row_boundary(e));
    // Balanced: within one row of the ideal (of the tensor cut; at a tensor start, of either
    // neighbour).
    int64_t row = row_of(t);
    if (e == t.offset && e > 0) row = std::max(row, row_of(holder(layout, e - 1)));
    CHECK(std::llabs(e - ideal) <= row);
  }
}

}  // namespace

TEST_CASE("checkpoint layout: shard ranges are row aligned and balanced within one row") {
  const std::vector<ModelDims> cases = {
      dims(16, 5, 2, 8),        // tiny (the checkpoint tests' model)
      dims(257, 64, 2, 64),     // byte tokenizer, small
      dims(11, 3, 1, 4),        // fewer rows than some shard counts
      dims(50257, 1024, 12, 768),  // GPT-2 124M (layout only: nothing is allocated)
  };
  for (const auto& d : cases) {
    const ParamLayout layout(d);
    for (int64_t n = 1; n <= 9; ++n) check_ranges(layout, n);
    check_ranges(layout, 64);
  }
}

TEST_CASE("checkpoint layout: row boundaries and the nearest one") {
  const ParamLayout layout(dims(16, 5, 2, 8));
  const TensorSpec& wte = layout.find("transformer.wte.weight");  // (16, 8)
  const TensorSpec& bias = layout.find("transformer.h.0.ln_1.bias");  // (8)
  CHECK(wte.row_size() == 8);
  CHECK(bias.row_size() == 1);
  CHECK(layout.find("transformer.h.0.mlp.c_proj.weight").row_size() == 8);  // (32, 8)
  CHECK(layout.is_row_boundary(0));
  CHECK(layout.is_row_boundary(layout.total()));
  CHECK(layout.is_row_boundary(16));
  CHECK_FALSE(layout.is_row_boundary(17));
  CHECK(layout.nearest_row_boundary(19) == 16);
  CHECK(layout.nearest_row_boundary(20) == 16);  // a tie goes down
  CHECK(layout.nearest_row_boundary(21) == 24);
  for (int64_t x = bias.offset; x <= bias.offset + bias.count; ++x) {
    CHECK(layout.is_row_boundary(x));  // 1-D tensors cut anywhere
  }
  // One shard is everything; the split of the tiny model into 2 is exact and row aligned.
  CHECK(layout.shard_ranges(1) == std::vector<std::pair<int64_t, int64_t>>{{0, layout.total()}});
  CHECK_THROWS_AS(layout.shard_ranges(0), InternalError);
}
