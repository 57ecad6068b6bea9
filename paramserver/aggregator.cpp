#include "paramserver/aggregator.hpp"

#include "common/error.hpp"
#include "common/proto/bf16.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace ptrain {

bool GradientAggregator::add(int32_t worker, int64_t tokens, std::span<const float> grads) {
  PTRAIN_ENFORCE(static_cast<int64_t>(grads.size()) == slot_size_,
                 "push of {} elements to an aggregator of {} ({} values in {})", grads.size(),
                 slot_size_, size_, proto::encoding_name(encoding_));
  auto it = slots_.find(worker);
  if (it != slots_.end() && it->second.covered > 0) return false;
  return add_range(worker, tokens, 0, size_, grads) == RangeResult::kComplete;
}

GradientAggregator::RangeResult GradientAggregator::add_range(int32_t worker, int64_t tokens,
                                                              int64_t begin, int64_t end,
                                                              std::span<const float> grads) {
  PTRAIN_ENFORCE(0 <= begin && begin <= end && end <= size_,
                 "push of [{}, {}) to an aggregator of {} values", begin, end, size_);
  PTRAIN_ENFORCE(static_cast<int64_t>(grads.size()) == proto::encoded_size(encoding_, end - begin),
                 "push of [{}, {}) with {} elements in {}", begin, end, grads.size(),
                 proto::encoding_name(encoding_));
  PTRAIN_ENFORCE(tokens >= 0, "negative token count {}", tokens);
  Slot& s = slots_[worker];
  if (s.covered > 0 && s.tokens != tokens) return RangeResult::kTokens;
  // Overlap with the piece starting at or before `begin`, or with the next one.
  auto next = s.parts.lower_bound(begin);
  if (next != s.parts.end() && next->first < end) return RangeResult::kOverlap;
  if (next != s.parts.begin() && std::prev(next)->second > begin) return RangeResult::kOverlap;
  if (begin == end && s.covered > 0) return RangeResult::kOverlap;  // an empty repeat
  if (s.grads.size() != static_cast<size_t>(slot_size_)) s.grads.resize(static_cast<size_t>(slot_size_));
  if (encoding_ == proto::FloatEncoding::kBf16) {
    // Value i is the 2 bytes at [2i, 2i + 2) of the packed form: a byte copy places any range.
    auto* dst = reinterpret_cast<std::byte*>(s.grads.data()) + 2 * begin;
    const auto* src = reinterpret_cast<const std::byte*>(grads.data());
    if (dst != src && end > begin) std::memmove(dst, src, static_cast<size_t>(2 * (end - begin)));
  } else if (grads.data() != s.grads.data() + begin && end > begin) {
    std::memcpy(s.grads.data() + begin, grads.data(), static_cast<size_t>(end - begin) * sizeof(float));
  }
  if (end > begin) s.parts.emplace(begin, end);
  s.tokens = tokens;
  s.covered += end - begin;
  return s.covered == size_ ? RangeResult::kComplete : RangeResult::kPartial;
}

size_t GradientAggregator::count() const {
  size_t n = 0;
  for (const auto& [w, s] : slots_) n += s.covered == size_ ? 1 : 0;
  return n;
}

std::vector<std::pair<int32_t, std::span<float>>> GradientAggregator::free_slots() {
  std::vector<std::pair<int32_t, std::span<float>>> out;
  for (auto& [w, s] : slots_) {
    if (s.covered == 0 && s.whole_last) out.emplace_back(w, std::span<float>(s.grads));
  }
  return out;
}

void GradientAggregator::clear() {
  for (auto& [w, s] : slots_) {
    if (s.covered > 0) s.whole_last = s.covered == size_ && s.parts.size() == 1;
    s.covered = 0;
    s.parts.clear();
  }
}

int64_t GradientAggregator::mean(std::span<const int32_t> contributors, std::span<float> out,
                                 Divide divide) const {
  PTRAIN_ENFORCE(static_cast<int64_t>(out.size()) == size_, "mean into {} floats, need {}",
                 out.size(), size_);
  std::vector<int32_t> ids(contributors.begin(), contributors.end());
  std::sort(ids.begin(), ids.end());
  PTRAIN_ENFORCE(std::adjacent_find(ids.begin(), ids.end()) == ids.end(),
                 "a contributor is listed twice");
  std::vector<const float*> srcs;
  int64_t tokens = 0;
  for (int32_t w : ids) {
    auto it = slots_.find(w);
    PTRAIN_ENFORCE(it != slots_.end() && it->second.covered == size_,
                   "contributor worker {} has not pushed its whole shard ({} of {} values)", w,
                   it == slots_.end() ? 0 : it->second.covered, size_);
    srcs.push_back(it->second.grads.data());
    tokens += it->second.tokens;
  }
  float* dst = out.data();
  const int64_t n = size_;
  if ((divide == Divide::kByTokens && tokens == 0) || srcs.empty()) {
    std::fill(out.begin(), out.end(), 0.0f);
    return tokens;
  }
  const auto denom = static_cast<double>(divide == Divide::kByTokens
                                             ? tokens
                                             : static_cast<int64_t>(srcs.size()));
  const size_t k = srcs.size();
  if (encoding_ == proto::FloatEncoding::kBf16) {
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; ++i) {
      const auto u = static_cast<size_t>(i);
      float acc = proto::packed_bf16_at(srcs[0], u);
      for (size_t w = 1; w < k; ++w) acc += proto::packed_bf16_at(srcs[w], u);
      dst[i] = static_cast<float>(static_cast<double>(acc) / denom);
    }
    return tokens;
  }
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    float acc = srcs[0][i];
    for (size_t w = 1; w < k; ++w) acc += srcs[w][i];
    dst[i] = static_cast<float>(static_cast<double>(acc) / denom);
  }
  return tokens;
}

NormPartial partial_norm(std::span<const float> g) {
  const auto n = static_cast<int64_t>(g.size());
  const int64_t chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> sums(static_cast<size_t>(chunks), 0.0);
  std::vector<int64_t> bad(static_cast<size_t>(chunks), -1);
  const float* x = g.data();
#pragma omp parallel for schedule(static) if (chunks > 4)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = c * kNormChunk;
    const int64_t e = std::min(n, b + kNormChunk);
    double s = 0.0;
    int64_t first = -1;
    for (int64_t i = b; i < e; ++i) {
      const double d = x[i];
      if (first < 0 && !std::isfinite(x[i])) first = i;
      s += d * d;
    }
    sums[static_cast<size_t>(c)] = s;
    bad[static_cast<size_t>(c)] = first;
  }
  NormPartial r;
  for (int64_t c = 0; c < chunks; ++c) {
    r.sum_squares += sums[static_cast<size_t>(c)];
    if (r.first_nonfinite < 0) r.first_nonfinite = bad[static_cast<size_t>(c)];
  }
  return r;
}

}  // namespace ptrain
