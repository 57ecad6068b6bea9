// The GPT-2 initialiser (common/tensor/gpt_init.hpp): a server that initialises only its slice gets
// bitwise the values of a full initialisation, for any slicing and thread count; the values are
// pinned by a checksum, so a change of the generator (which would change every fresh run and
// `ptrain init`) cannot pass unnoticed.
#include "common/tensor/gpt_init.hpp"
#include "common/util/hash.hpp"

#include <doctest/doctest.h>
#include <omp.h>

#include <cstring>
#include <vector>

using namespace ptrain;

namespace {

// Padded vocabulary (V 257 → Vp 264), so wte's zero rows are inside some slices.
ParamLayout padded_layout() { return ParamLayout(ModelDims{257, 264, 16, 2, 2, 32}); }

bool bitwise_equal(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("gpt init: any slice equals that slice of the full initialisation - bitwise") {
  const ParamLayout layout = padded_layout();
  const int64_t total = layout.total();
  std::vector<float> full(static_cast<size_t>(total));
  init_gpt_params(layout, 1234, full);
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (int64_t n : {1, 2, 3, 7}) {
    for (const auto& r : layout.shard_ranges(n)) ranges.push_back(r);
  }
  const int64_t wte_end = layout.wte() + 257 * 32;  // the first padded wte element
  ranges.insert(ranges.end(), {{0, 0}, {1, 2}, {wte_end - 3, wte_end + 5}, {wte_end, wte_end + 1},
                               {total / 3, total / 3 + 100001 % total}, {total - 1, total}});
  for (const auto& [b, e] : ranges) {
    if (e > total) continue;
    CAPTURE(b);
    CAPTURE(e);
    std::vector<float> part(static_cast<size_t>(e - b), -1.0f);
    init_gpt_params_range(layout, 1234, b, part);
    CHECK(bitwise_equal(part.data(), full.data() + b, part.size()));
  }
  // Padded rows are zero, real ones are not.
  CHECK(full[static_cast<size_t>(wte_end)] == 0.0f);
  CHECK(full[static_cast<size_t>(wte_end - 1)] != 0.0f);
  // Outside the vector: refused.
  std::vector<float> two(2);
  CHECK_THROWS(init_gpt_params_range(layout, 1, total - 1, two));
}

TEST_CASE("gpt init: independent of the thread count - and pinned by a checksum") {
  const ParamLayout layout(ModelDims{257, 257, 64, 2, 4, 256});  // tensors over 2^16 floats
  std::vector<float> one(static_cast<size_t>(layout.total())), two(one.size());
  omp_set_num_threads(1);
  init_gpt_params(layout, 7, one);
  omp_set_num_threads(2);
  init_gpt_params(layout, 7, two);
  CHECK(bitwise_equal(one.data(), two.data(), one.size()));
  // CRC32C of the values the initialiser produced when it lived in worker/model/gpt.cpp (the
  // values of every fresh run and `ptrain init` so far): moving it changed no bit.
  const ParamLayout small = padded_layout();
  std::vector<float> p(static_cast<size_t>(small.total()));
  init_gpt_params(small, 1234, p);
  CHECK(crc32c(p.data(), p.size() * sizeof(float)) == 0xa411b3b5u);
  CHECK(crc32c(one.data(), one.size() * sizeof(float)) == 0x7c5449d5u);
}
