// Pushes by range (gradient buckets, cut at shard boundaries by the worker): the aggregator keeps
// each piece where it belongs and counts a worker once its pieces cover the shard; the result is
// bitwise that of whole pushes whatever the pieces and their arrival order (fp32 and bf16, odd
// offsets); an overlapping piece (a bucket sent twice) is refused; a worker with a missing piece
// is never announced and never a contributor; the pieces of one step must name one token count.
#include "common/proto/bf16.hpp"
#include "paramserver/aggregator.hpp"
#include "paramserver/request_handler.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <limits>
#include <random>

using namespace ptrain;
using net::coordinator_endpoint;
using net::worker_endpoint;
using R = GradientAggregator::RangeResult;

namespace {

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// The encoded form of values [b, e) of g.
std::vector<float> encode(const std::vector<float>& g, int64_t b, int64_t e,
                          proto::FloatEncoding enc) {
  std::vector<float> v(g.begin() + b, g.begin() + e);
  if (enc == proto::FloatEncoding::kFp32) return v;
  std::vector<float> packed(proto::bf16_packed_size(v.size()));
  proto::pack_bf16(v, packed);
  return packed;
}

}  // namespace

TEST_CASE("aggregator: pieces in any order - bitwise the whole pushes - fp32 and bf16 at odd offsets") {
  const int64_t n = 1001;
  const std::vector<std::vector<float>> g = {randn(n, 1), randn(n, 2), randn(n, 3)};
  const std::vector<int64_t> tokens = {30, 50, 20};
  for (const auto enc : {proto::FloatEncoding::kFp32, proto::FloatEncoding::kBf16}) {
    CAPTURE(proto::encoding_name(enc));
    GradientAggregator whole(n, enc), pieces(n, enc);
    for (int32_t w = 0; w < 3; ++w) {
      CHECK(whole.add(w, tokens[w], encode(g[w], 0, n, enc)));
    }
    // Worker w's cuts differ (odd offsets included); the pieces of all workers interleave, each
    // worker's in backward order (the last piece first), as buckets arrive.
    const std::vector<std::vector<int64_t>> cuts = {
        {0, 333, 334, 1001}, {0, 1, 500, 777, 1001}, {0, 1001}};
    std::vector<std::tuple<int32_t, int64_t, int64_t>> order;
    for (int32_t w = 0; w < 3; ++w) {
      for (size_t i = cuts[w].size() - 1; i > 0; --i) order.emplace_back(w, cuts[w][i - 1], cuts[w][i]);
    }
    std::mt19937 rng(7);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<int> left = {3, 4, 1};
    for (const auto& [w, b, e] : order) {
      CHECK_FALSE(pieces.has(w));
      const R r = pieces.add_range(w, tokens[w], b, e, encode(g[w], b, e, enc));
      --left[w];
      CHECK(r == (left[w] == 0 ? R::kComplete : R::kPartial));
    }
    CHECK(pieces.count() == 3);
    std::vector<float> a(n), b(n);
    CHECK(whole.mean(std::vector<int32_t>{0, 1, 2}, a) == 100);
    CHECK(pieces.mean(std::vector<int32_t>{0, 1, 2}, b) == 100);
    CHECK(a == b);  // bitwise
  }
}

TEST_CASE("aggregator: an overlapping piece is refused - another token count too - clear() starts over") {
  GradientAggregator a(10);
  const auto g = randn(10, 4);
  CHECK(a.add_range(0, 8, 5, 10, {g.begin() + 5, g.end()}) == R::kPartial);
  CHECK(a.add_range(0, 8, 4, 6, {g.begin() + 4, g.begin() + 6}) == R::kOverlap);
  CHECK(a.add_range(0, 8, 5, 10, {g.begin() + 5, g.end()}) == R::kOverlap);  // the same bucket twice
  CHECK(a.add_range(0, 8, 9, 10, {g.begin() + 9, g.end()}) == R::kOverlap);
  CHECK(a.add_range(0, 9, 0, 5, {g.begin(), g.begin() + 5}) == R::kTokens);
  CHECK(a.covered(0) == 5);
  CHECK_FALSE(a.has(0));
  CHECK_FALSE(a.add(0, 8, g));  // a whole push after a piece: refused too
  CHECK(a.free_slots().empty());  // a partly filled slot is not offered to the transport
  CHECK(a.add_range(0, 8, 0, 5, {g.begin(), g.begin() + 5}) == R::kComplete);
  a.clear();
  CHECK(a.covered(0) == 0);
  CHECK(a.free_slots().empty());  // it pushes in pieces: no slot to receive into in place
  CHECK(a.add(0, 8, g));
  a.clear();
  CHECK(a.free_slots().size() == 1);  // one whole push: its next one may land in place
}

TEST_CASE("aggregator: blocks reduced as the pushes arrive - bitwise mean() and partial_norm() - set known before - midway - never - replaced") {
  const int64_t n = 3 * kNormChunk + 1001;  // four blocks, the last one short
  std::vector<std::vector<float>> g = {randn(n, 11), randn(n, 12), randn(n, 13)};
  g[1][static_cast<size_t>(2 * kNormChunk + 5)] = std::numeric_limits<float>::infinity();
  const std::vector<int64_t> tokens = {30, 50, 20};
  // Each worker's buckets, cut anywhere (odd offsets, across block edges), sent last first.
  const std::vector<std::vector<int64_t>> cuts = {
      {0, kNormChunk - 3, kNormChunk + 7, 2 * kNormChunk, n},
      {0, 1, 2 * kNormChunk + 333, n},
      {0, 3 * kNormChunk, n}};
  using D = GradientAggregator::Divide;
  for (const auto enc : {proto::FloatEncoding::kFp32, proto::FloatEncoding::kBf16}) {
    for (const D divide : {D::kByTokens, D::kByContributors}) {
      for (const int expect_after : {0, 4, 8, -1}) {  // pieces before expect(); -1: never
        CAPTURE(proto::encoding_name(enc));
        CAPTURE(static_cast<int>(divide));
        CAPTURE(expect_after);
        GradientAggregator whole(n, enc), eager(n, enc);
        for (int32_t w = 0; w < 3; ++w) CHECK(whole.add(w, tokens[w], encode(g[w], 0, n, enc)));
        std::vector<std::tuple<int32_t, int64_t, int64_t>> order;
        for (int32_t w = 0; w < 3; ++w) {
          for (size_t i = cuts[w].size() - 1; i > 0; --i) {
            order.emplace_back(w, cuts[w][i - 1], cuts[w][i]);
          }
        }
        std::mt19937 rng(static_cast<uint32_t>(17 + expect_after));
        std::shuffle(order.begin(), order.end(), rng);
        const std::vector<int32_t> all = {2, 0, 1};  // any order: the fold is by worker id
        int sent = 0;
        int64_t reduced_before_last = 0;
        for (const auto& [w, b, e] : order) {
          if (sent == expect_after) eager.expect(all, divide);
          if (sent + 1 == static_cast<int>(order.size())) reduced_before_last = eager.reduced_values();
          eager.add_range(w, tokens[w], b, e, encode(g[w], b, e, enc));
          ++sent;
        }
        std::vector<float> want(n);
        CHECK(whole.mean(all, want, divide) == 100);
        const NormPartial want_norm = partial_norm(want);
        if (expect_after >= 0) {
          // Every block the last piece does not touch was reduced before it arrived.
          const auto [lw, lb, le] = order.back();
          int64_t touched = 0;
          for (int64_t c = lb / kNormChunk; c <= (le - 1) / kNormChunk; ++c) {
            touched += std::min(n, (c + 1) * kNormChunk) - c * kNormChunk;
          }
          CHECK(n - touched > 0);
          CHECK(reduced_before_last == n - touched);
          CHECK(eager.reduced_values() == n);
        } else {
          CHECK(eager.reduced_values() == 0);
        }
        const auto r = eager.reduce(all, divide);
        CHECK(r.tokens == 100);
        const std::vector<float> got(eager.reduced().begin(), eager.reduced().end());
        CHECK(got == want);  // bitwise
        CHECK(r.norm.sum_squares == want_norm.sum_squares);  // bitwise, inf included
        CHECK(r.norm.first_nonfinite == 2 * kNormChunk + 5);
        CHECK(want_norm.first_nonfinite == 2 * kNormChunk + 5);
        // The coordinator fixes a smaller set (a worker's pushes did not reach every server):
        // the whole shard over it, what was reduced for the expected set dropped.
        const std::vector<int32_t> two = {0, 2};
        std::vector<float> want2(n);
        whole.mean(two, want2, divide);
        const auto r2 = eager.reduce(two, divide);
        CHECK(r2.tokens == 50);
        CHECK(std::vector<float>(eager.reduced().begin(), eager.reduced().end()) == want2);
        CHECK(r2.norm.sum_squares == partial_norm(want2).sum_squares);
        CHECK(r2.norm.first_nonfinite == -1);
        CHECK(eager.reduced_values() == 0);
      }
    }
  }
}

TEST_CASE("aggregator: an expected worker that never pushes leaves every block unreduced - clear() forgets the set") {
  const int64_t n = 2 * kNormChunk;
  const auto g0 = randn(n, 21);
  GradientAggregator a(n);
  a.expect(std::vector<int32_t>{0, 1}, GradientAggregator::Divide::kByTokens);
  CHECK(a.add(0, 8, g0));
  CHECK(a.reduced_values() == 0);  // worker 1's pushes are missing everywhere
  const auto r = a.reduce(std::vector<int32_t>{0}, GradientAggregator::Divide::kByTokens);
  CHECK(r.tokens == 8);
  CHECK(a.reduced()[0] == static_cast<float>(static_cast<double>(g0[0]) / 8.0));
  a.clear();
  CHECK(a.add(0, 8, g0));
  CHECK(a.add(1, 8, g0));
  CHECK(a.reduced_values() == 0);  // clear() forgot the set: nothing is reduced until expect()
  a.expect(std::vector<int32_t>{0, 1}, GradientAggregator::Divide::kByTokens);
  CHECK(a.reduced_values() == n);  // pushes that arrived first count when the set is known
}

namespace {

ServerOptions shard(proto::KeyRange r) {
  ServerOptions so{1, r, {}, {}};
  const auto n = static_cast<size_t>(r.size());
  so.load_shard = [n](const proto::LoadShard&) {
    return ShardState{std::vector<float>(n, 1.0f), std::vector<float>(n, 0.0f),
                      std::vector<float>(n, 0.0f)};
  };
  return so;
}

UpdateRule rule(proto::KeyRange r) {
  return UpdateRule(AdamWOptions{0.9, 0.95, 1e-8, 0.0}, LrSchedule{1e-2, 1e-3, 0, 10},
                    {{r.begin, r.end, true}});
}

proto::GradPush piece(int32_t worker, proto::KeyRange r, const std::vector<float>& g,
                      int64_t offset) {
  return proto::GradPush{0, 0, worker, 16, r,
                         std::vector<float>(g.begin() + (r.begin - offset),
                                            g.begin() + (r.end - offset))};
}

}  // namespace

TEST_CASE("paramserver: range pushes - PushReceived once the shard is covered - duplicates refused - a missing bucket never counts") {
  const proto::KeyRange r{100, 120};  // the shard of server 1
  RequestHandler h(shard(r), rule(r));
  REQUIRE(h.handle(coordinator_endpoint(), proto::LoadShard{0, 0, r, 0, ""}).size() == 1);
  const auto g0 = randn(20, 5), g1 = randn(20, 6);

  // Worker 0: three buckets, backward order; announced after the last one only.
  CHECK(h.handle(worker_endpoint(0), piece(0, {113, 120}, g0, 100)).empty());
  CHECK(h.handle(worker_endpoint(0), piece(0, {105, 113}, g0, 100)).empty());
  // The same bucket again: refused to the worker, naming the range.
  auto dup = h.handle(worker_endpoint(0), piece(0, {105, 113}, g0, 100));
  REQUIRE(dup.size() == 1);
  CHECK(dup[0].to == worker_endpoint(0));
  REQUIRE(std::holds_alternative<proto::Failure>(dup[0].message));
  CHECK(std::get<proto::Failure>(dup[0].message).message.find("second push of [105, 113)") !=
        std::string::npos);
  auto last = h.handle(worker_endpoint(0), piece(0, {100, 105}, g0, 100));
  REQUIRE(last.size() == 1);
  REQUIRE(std::holds_alternative<proto::PushReceived>(last[0].message));
  CHECK(std::get<proto::PushReceived>(last[0].message).worker_id == 0);

  // Worker 1 sends two of its three buckets (it died, say): never announced, and a contributor
  // set that names it breaks the protocol.
  CHECK(h.handle(worker_endpoint(1), piece(1, {110, 120}, g1, 100)).empty());
  CHECK(h.handle(worker_endpoint(1), piece(1, {100, 104}, g1, 100)).empty());
  CHECK_THROWS_WITH_AS(h.handle(coordinator_endpoint(), proto::StepContributors{0, 0, {0, 1}}),
                       doctest::Contains("worker 1 as a contributor"), proto::ProtocolError);
  // Outside the shard: refused.
  auto out = h.handle(worker_endpoint(1), piece(1, {118, 121}, std::vector<float>(21, 0.f), 100));
  REQUIRE(out.size() == 1);
  CHECK(std::get<proto::Failure>(out[0].message).message.find("outside the shard") !=
        std::string::npos);

  // The step completes with worker 0 alone; its mean is its own gradient / 16, bitwise.
  auto norm = h.handle(coordinator_endpoint(), proto::StepContributors{0, 0, {0}});
  REQUIRE(norm.size() == 1);
  std::vector<float> mean(20);
  for (size_t i = 0; i < 20; ++i) mean[i] = static_cast<float>(double(g0[i]) / 16.0);
  CHECK(std::get<proto::NormReport>(norm[0].message).sum_squares == partial_norm(mean).sum_squares);
  h.handle(coordinator_endpoint(), proto::StepCommit{0, {0}, 1.0, 1.0f});
  // The next step starts empty: worker 1's old pieces are gone.
  CHECK(h.handle(worker_endpoint(1), proto::GradPush{1, 0, 1, 16, {100, 120}, g1}).size() == 1);
}
