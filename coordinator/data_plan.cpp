#include "coordinator/data_plan.hpp"

#include "common/error.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace ptrain {

uint64_t SplitMix64::mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::next() {
  state_ += 0x9E3779B97F4A7C15ull;
  return mix64(state_);
}

uint64_t SplitMix64::uniform(uint64_t bound) {
  PTRAIN_ENFORCE(bound >= 1, "uniform bound {}", bound);
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  for (;;) {
    const uint64_t r = next();
    if (r >= threshold) return r % bound;
  }
}

std::vector<int64_t> window_permutation(uint64_t seed, int64_t epoch, int64_t n) {
  PTRAIN_ENFORCE(n >= 0 && epoch >= 0, "permutation of {} in epoch {}", n, epoch);
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  SplitMix64 g(SplitMix64::mix64(SplitMix64::mix64(seed) + static_cast<uint64_t>(epoch)));
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(g.uniform(static_cast<uint64_t>(i) + 1));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

std::vector<std::pair<int64_t, int64_t>> split_batch(int64_t B, int64_t W) {
  PTRAIN_ENFORCE(B >= 0 && W >= 1, "split of {} windows among {} workers", B, W);
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t base = B / W;
  const int64_t extra = B % W;
  int64_t at = 0;
  for (int64_t w = 0; w < W; ++w) {
    const int64_t len = base + (w < extra ? 1 : 0);
    out.emplace_back(at, at + len);
    at += len;
  }
  return out;
}

DataPlan::DataPlan(int64_t num_windows, DataState start) : n_(num_windows), state_(start) {
  if (n_ < 1) {
    throw DataError("data.train has no complete window (a window is model.seq_len + 1 tokens)");
  }
  if (state_.epoch < 0 || state_.position < 0 || state_.position > n_) {
    throw DataError(fmt::format(
        "the data cursor (epoch {}, position {}) does not fit data.train's {} windows: was the "
        "checkpoint written for another token file or model.seq_len?",
        state_.epoch, state_.position, n_));
  }
  for (const DataWindow& w : state_.returned) {
    if (w.window < 0 || w.window >= n_ || w.epoch < 0 || w.epoch > state_.epoch) {
      throw DataError(fmt::format(
          "the checkpoint's returned window {} (data epoch {}) does not fit data.train's {} "
          "windows at data epoch {}",
          w.window, w.epoch, n_, state_.epoch));
    }
  }
  if (state_.position == n_) {
    ++state_.epoch;
    state_.position = 0;
  }
}

std::vector<int64_t> DataPlan::next_step(int64_t B) {
  std::vector<int64_t> out;
  for (const DataWindow& w : take(B)) out.push_back(w.window);
  return out;
}

void DataPlan::give_back(const std::vector<DataWindow>& windows) {
  for (const DataWindow& w : windows) {
    PTRAIN_ENFORCE(w.window >= 0 && w.window < n_ && w.epoch >= 0 && w.epoch <= state_.epoch,
                   "window {} of epoch {} given back (the plan has {} windows, epoch {})",
                   w.window, w.epoch, n_, state_.epoch);
    state_.returned.push_back(w);
  }
}

std::vector<DataWindow> DataPlan::take(int64_t B) {
  std::vector<DataWindow> out;
  out.reserve(static_cast<size_t>(B));
  const auto from_pool =
      std::min<int64_t>(B, static_cast<int64_t>(state_.returned.size()));
  out.insert(out.end(), state_.returned.begin(), state_.returned.begin() + from_pool);
  state_.returned.erase(state_.returned.begin(), state_.returned.begin() + from_pool);
  for (int64_t i = from_pool; i < B; ++i) {
    if (perm_epoch_ != state_.epoch) {
      perm_ = window_permutation(state_.seed, state_.epoch, n_);
      perm_epoch_ = state_.epoch;
    }
    out.push_back({state_.epoch, perm_[static_cast<size_t>(state_.position)]});
    if (++state_.position == n_) {
      ++state_.epoch;
      state_.position = 0;
    }
  }
  return out;
}

}  // namespace ptrain
