// `ptrain bench aggregate` (bench_aggregate.hpp).
#include "bench/bench_aggregate.hpp"

#include "common/error.hpp"
#include "paramserver/aggregator.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

namespace ptrain {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Timed {
  double pushes_s = 0;  // every piece but the last kept (and, per block, reduced) as it arrived
  double tail_s = 0;    // the last piece kept, then reduce(): what the step waits for
};

}  // namespace

int run_bench_aggregate(const BenchAggregateOptions& o) {
  if (o.floats < 1 || o.workers < 1 || o.bucket_mb <= 0 || o.reps < 1 || o.threads < 0) {
    throw UsageError("bench aggregate: --floats, --workers and --reps must be >= 1, --bucket-mb "
                     "> 0, --threads >= 0");
  }
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const int64_t n = o.floats;
  const auto W = o.workers;
  std::vector<std::vector<float>> grads(static_cast<size_t>(W));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& g : grads) {
    g.resize(static_cast<size_t>(n));
    for (auto& x : g) x = nd(rng);
  }
  // The arrival order: bucket k of every worker (worker-id order), buckets from the end of the
  // shard back, as backward finishes the last layers first.
  const auto bucket = std::max<int64_t>(1, static_cast<int64_t>(o.bucket_mb * 1e6 / 4));
  std::vector<std::tuple<int32_t, int64_t, int64_t>> order;
  for (int64_t end = n; end > 0; end -= bucket) {
    for (int32_t w = 0; w < W; ++w) order.emplace_back(w, std::max<int64_t>(0, end - bucket), end);
  }
  std::vector<int32_t> all(static_cast<size_t>(W));
  for (int32_t w = 0; w < W; ++w) all[static_cast<size_t>(w)] = w;
  const std::vector<int64_t> tokens(static_cast<size_t>(W), 4096);

  GradientAggregator at_end(n), per_block(n);
  auto step = [&](GradientAggregator& a, bool eager) {
    Timed t;
    a.clear();
    if (eager) a.expect(all, GradientAggregator::Divide::kByTokens);
    auto add = [&](size_t i) {
      const auto& [w, b, e] = order[i];
      const auto& g = grads[static_cast<size_t>(w)];
      a.add_range(w, tokens[static_cast<size_t>(w)], b, e,
                  std::span<const float>(g.data() + b, static_cast<size_t>(e - b)));
    };
    auto t0 = Clock::now();
    for (size_t i = 0; i + 1 < order.size(); ++i) add(i);
    t.pushes_s = seconds_since(t0);
    // The tail: the last piece kept (and its blocks reduced), then the reduction finished.
    t0 = Clock::now();
    add(order.size() - 1);
    const auto r = a.reduce(all, GradientAggregator::Divide::kByTokens);
    t.tail_s = seconds_since(t0);
    return std::pair{t, r};
  };
  step(at_end, false);  // warm up: slots and the reduction buffer touched once
  step(per_block, true);
  std::vector<Timed> end_t, block_t;
  for (int r = 0; r < o.reps; ++r) {
    const auto [te, re] = step(at_end, false);
    const auto [tb, rb] = step(per_block, true);
    if (re.norm.sum_squares != rb.norm.sum_squares ||
        std::memcmp(at_end.reduced().data(), per_block.reduced().data(),
                    static_cast<size_t>(n) * sizeof(float)) != 0) {
      throw Error(ExitCode::kInternal,
                  "bench aggregate: the block-by-block reduction differs from the whole-shard one");
    }
    end_t.push_back(te);
    block_t.push_back(tb);
  }
  auto range = [](const std::vector<Timed>& v, double Timed::*f) {
    double lo = 1e300, hi = 0;
    for (const auto& t : v) lo = std::min(lo, t.*f), hi = std::max(hi, t.*f);
    return std::pair{lo, hi};
  };
  const auto [end_tail_lo, end_tail_hi] = range(end_t, &Timed::tail_s);
  const auto [blk_tail_lo, blk_tail_hi] = range(block_t, &Timed::tail_s);
  const auto [end_push_lo, end_push_hi] = range(end_t, &Timed::pushes_s);
  const auto [blk_push_lo, blk_push_hi] = range(block_t, &Timed::pushes_s);
  if (o.json) {
    nlohmann::json rows = nlohmann::json::array();
    for (int r = 0; r < o.reps; ++r) {
      rows.push_back({{"at_end_pushes_s", end_t[static_cast<size_t>(r)].pushes_s},
                      {"at_end_tail_s", end_t[static_cast<size_t>(r)].tail_s},
                      {"per_block_pushes_s", block_t[static_cast<size_t>(r)].pushes_s},
                      {"per_block_tail_s", block_t[static_cast<size_t>(r)].tail_s}});
    }
    nlohmann::json j = {{"bench", "aggregate"}, {"floats", n},          {"workers", W},
                        {"bucket_mb", o.bucket_mb}, {"pieces", order.size()},
                        {"threads", omp_get_max_threads()}, {"reps", rows}, {"bitwise_equal", true}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("bench aggregate: %lld floats (%.1f MB) x %d workers, %zu pieces of up to %.1f MB, "
                "%d threads, %d interleaved reps; results bitwise equal\n",
                static_cast<long long>(n), static_cast<double>(n) * 4 / 1e6, W, order.size(),
                o.bucket_mb, omp_get_max_threads(), o.reps);
    std::printf("  %-34s %21s %25s\n", "", "earlier pieces (s)", "last piece + reduce (s)");
    std::printf("  %-34s %9.4f – %-9.4f %9.4f – %-9.4f\n", "whole shard after the last push",
                end_push_lo, end_push_hi, end_tail_lo, end_tail_hi);
    std::printf("  %-34s %9.4f – %-9.4f %9.4f – %-9.4f\n", "block by block as pushes arrive",
                blk_push_lo, blk_push_hi, blk_tail_lo, blk_tail_hi);
  }
  return 0;
}

}  // namespace ptrain
