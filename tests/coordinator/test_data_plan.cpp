// The data plan (docs/contracts.md "Data"): each epoch's permutation is a permutation, deterministic
// for (seed, epoch) and different across epochs and seeds; steps take consecutive positions and
// roll over into the next epoch without dropping or repeating a window; the split among workers
// sums to B, is contiguous in worker-id order, and gives the same windows whatever W is; the
// cursor resumes exactly. (The step's bookkeeping is tested in test_step_machine.cpp.)
#include "common/error.hpp"
#include "coordinator/checkpoint_scheduler.hpp"
#include "coordinator/data_plan.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

using namespace ptrain;

TEST_CASE("coordinator: SplitMix64 matches the reference sequence") {
  // Reference values of SplitMix64 seeded with 1234567 (from the published C implementation).
  SplitMix64 g(1234567);
  CHECK(g.next() == 6457827717110365317ull);
  CHECK(g.next() == 3203168211198807973ull);
  CHECK(g.next() == 9817491932198370423ull);
  SplitMix64 u(7);
  for (int i = 0; i < 1000; ++i) CHECK(u.uniform(3) < 3);
  CHECK(u.uniform(1) == 0);
}

TEST_CASE("coordinator: an epoch's permutation is a deterministic permutation") {
  for (int64_t n : {1, 2, 3, 10, 1000}) {
    const auto p = window_permutation(42, 0, n);
    std::vector<int64_t> sorted = p;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> iota(static_cast<size_t>(n));
    std::iota(iota.begin(), iota.end(), 0);
    CHECK(sorted == iota);
    CHECK(window_permutation(42, 0, n) == p);
  }
  CHECK(window_permutation(42, 0, 0).empty());
  const auto a = window_permutation(42, 0, 1000);
  CHECK(window_permutation(42, 1, 1000) != a);
  CHECK(window_permutation(43, 0, 1000) != a);
  std::vector<int64_t> iota(1000);
  std::iota(iota.begin(), iota.end(), 0);
  CHECK(a != iota);
  // Roughly uniform: each window lands in the first half about half the time over many seeds.
  int first_half = 0;
  for (uint64_t s = 0; s < 2000; ++s) {
    const auto p = window_permutation(s, 0, 10);
    first_half += std::find(p.begin(), p.end(), 3) - p.begin() < 5;
  }
  CHECK(first_half > 900);
  CHECK(first_half < 1100);
}

TEST_CASE("coordinator: the batch split sums to B - contiguous - the first B mod W get one more") {
  for (int64_t B : {0, 1, 5, 16, 17}) {
    for (int64_t W : {1, 2, 3, 7}) {
      const auto s = split_batch(B, W);
      REQUIRE(s.size() == static_cast<size_t>(W));
      int64_t at = 0;
      for (int64_t w = 0; w < W; ++w) {
        CHECK(s[static_cast<size_t>(w)].first == at);
        const int64_t len = s[static_cast<size_t>(w)].second - at;
        CHECK(len == B / W + (w < B % W ? 1 : 0));
        at = s[static_cast<size_t>(w)].second;
      }
      CHECK(at == B);
    }
  }
}

TEST_CASE("coordinator: steps take consecutive positions and roll over epochs") {
  const int64_t n = 10, B = 4;
  DataPlan plan(n, DataState{7, 0, 0, {}});
  const auto e0 = window_permutation(7, 0, n), e1 = window_permutation(7, 1, n);
  std::vector<int64_t> stream(e0);
  stream.insert(stream.end(), e1.begin(), e1.end());
  std::vector<int64_t> got;
  for (int t = 0; t < 5; ++t) {
    const auto w = plan.next_step(B);
    CHECK(w.size() == static_cast<size_t>(B));
    got.insert(got.end(), w.begin(), w.end());
  }
  CHECK(got == stream);  // 20 positions = exactly two epochs: step 2 straddles them
  CHECK(plan.state().epoch == 2);
  CHECK(plan.state().position == 0);
  // Within each epoch every window once.
  std::set<int64_t> first(got.begin(), got.begin() + n);
  CHECK(first.size() == static_cast<size_t>(n));
  // B larger than the epoch.
  DataPlan big(3, DataState{1, 0, 0, {}});
  CHECK(big.next_step(7).size() == 7);
  CHECK(big.state().epoch == 2);
  CHECK(big.state().position == 1);
  CHECK_THROWS_AS(DataPlan(0, DataState{1, 0, 0, {}}), DataError);
  CHECK_THROWS_WITH_AS(DataPlan(10, DataState{1, 0, 11, {}}), doctest::Contains("does not fit"),
                       DataError);
}

TEST_CASE("coordinator: the cursor resumes exactly") {
  DataPlan a(37, DataState{99, 0, 0, {}});
  for (int t = 0; t < 6; ++t) a.next_step(8);
  DataPlan b(37, a.state());
  for (int t = 0; t < 10; ++t) CHECK(a.next_step(8) == b.next_step(8));
}

TEST_CASE("coordinator: the same windows whatever the number of workers") {
  DataPlan plan(1000, DataState{5, 0, 0, {}});
  for (int t = 0; t < 3; ++t) {
    const auto windows = plan.next_step(13);
    for (int64_t W : {1, 2, 3, 4}) {
      std::vector<int64_t> joined;
      for (const auto& [b, e] : split_batch(13, W)) {
        joined.insert(joined.end(), windows.begin() + b, windows.begin() + e);
      }
      CHECK(joined == windows);
    }
  }
}

TEST_CASE("data plan: windows given back are handed out first - keep their epoch - are checkpointed") {
  // 5 windows, batches of 3: a step straddles epochs; a lost worker's windows come back.
  DataPlan plan(5, DataState{11, 0, 0, {}});
  const std::vector<DataWindow> s1 = plan.take(3);
  const std::vector<DataWindow> s2 = plan.take(3);  // 2 of epoch 0, 1 of epoch 1
  CHECK(s2[0].epoch == 0);
  CHECK(s2[2].epoch == 1);
  plan.give_back({s2[1], s2[2]});  // their worker was lost
  CHECK(plan.state().returned.size() == 2);
  const std::vector<DataWindow> s3 = plan.take(3);
  CHECK(s3[0] == s2[1]);
  CHECK(s3[1] == s2[2]);
  CHECK(s3[2].epoch == 1);
  CHECK(plan.state().returned.empty());
  // Within each epoch every window once: epoch 0 is complete after s1, s2[0], s3[0].
  std::set<int64_t> e0;
  for (const auto& w : {s1[0], s1[1], s1[2], s2[0], s3[0]}) {
    CHECK(w.epoch == 0);
    CHECK(e0.insert(w.window).second);
  }
  CHECK(e0.size() == 5);
  // A pool bigger than a step: the rest waits; the cursor (with its pool) resumes exactly.
  plan.give_back(s3);
  const std::vector<DataWindow> s4 = plan.take(2);
  DataPlan resumed(5, plan.state());
  CHECK(resumed.take(4) == plan.take(4));
  CHECK(s4[0] == s3[0]);
}

TEST_CASE("data plan: a returned window that does not fit the data is refused") {
  DataState st{1, 0, 2};
  st.returned = {{0, 7}};
  CHECK_THROWS_WITH_AS(DataPlan(5, st), doctest::Contains("returned window 7"), DataError);
}

TEST_CASE("checkpoint scheduler: every N steps - every M minutes - the final step") {
  CheckpointScheduler s(0, 100, 10.0);
  CHECK_FALSE(s.due(5, 9.9));
  CHECK(s.due(5, 10.0));
  CHECK(s.due(100, 0.0));
  CheckpointScheduler off(4, 100, 0.0);
  CHECK(off.due(8, 0.0));
  CHECK_FALSE(off.due(9, 1e9));
}
