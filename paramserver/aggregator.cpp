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
  if (eager_ && std::binary_search(eager_->workers.begin(), eager_->workers.end(), worker)) {
    count_arrival(begin, end);
  }
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
  eager_.reset();
}

namespace {

// dst[i] = (Σ_w srcs[w][i], an fp32 left fold in the order of srcs) / denom for i in [b, e),
// reading bf16-packed slots by widening each value; denom 0 writes zeros.
void fold_range(const std::vector<const float*>& srcs, proto::FloatEncoding encoding,
                double denom, int64_t b, int64_t e, float* dst) {
  if (denom == 0.0 || srcs.empty()) {
    std::fill(dst + b, dst + e, 0.0f);
    return;
  }
  const size_t k = srcs.size();
  if (encoding == proto::FloatEncoding::kBf16) {
    for (int64_t i = b; i < e; ++i) {
      const auto u = static_cast<size_t>(i);
      float acc = proto::packed_bf16_at(srcs[0], u);
      for (size_t w = 1; w < k; ++w) acc += proto::packed_bf16_at(srcs[w], u);
      dst[i] = static_cast<float>(static_cast<double>(acc) / denom);
    }
    return;
  }
  for (int64_t i = b; i < e; ++i) {
    float acc = srcs[0][i];
    for (size_t w = 1; w < k; ++w) acc += srcs[w][i];
    dst[i] = static_cast<float>(static_cast<double>(acc) / denom);
  }
}

// The fp64 sum of squares of x[b, e), in order, and its first non-finite index (-1: none).
std::pair<double, int64_t> chunk_norm(const float* x, int64_t b, int64_t e) {
  double s = 0.0;
  int64_t first = -1;
  for (int64_t i = b; i < e; ++i) {
    const double d = x[i];
    if (first < 0 && !std::isfinite(x[i])) first = i;
    s += d * d;
  }
  return {s, first};
}

}  // namespace

std::pair<double, int64_t> GradientAggregator::denominator(std::span<const int32_t> ids,
                                                           Divide divide) const {
  int64_t tokens = 0;
  for (int32_t w : ids) {
    auto it = slots_.find(w);
    if (it != slots_.end()) tokens += it->second.tokens;
  }
  const double denom = divide == Divide::kByTokens ? static_cast<double>(tokens)
                                                   : static_cast<double>(ids.size());
  return {denom, tokens};
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
  for (int32_t w : ids) {
    auto it = slots_.find(w);
    PTRAIN_ENFORCE(it != slots_.end() && it->second.covered == size_,
                   "contributor worker {} has not pushed its whole shard ({} of {} values)", w,
                   it == slots_.end() ? 0 : it->second.covered, size_);
    srcs.push_back(it->second.grads.data());
  }
  const auto [denom, tokens] = denominator(ids, divide);
  const int64_t blocks = block_count();
  float* dst = out.data();
#pragma omp parallel for schedule(static) if (blocks > 2)
  for (int64_t c = 0; c < blocks; ++c) {
    fold_range(srcs, encoding_, denom, c * kNormChunk, c * kNormChunk + block_size(c), dst);
  }
  return tokens;
}

void GradientAggregator::expect(std::span<const int32_t> workers, Divide divide) {
  Eager e;
  e.workers.assign(workers.begin(), workers.end());
  std::sort(e.workers.begin(), e.workers.end());
  PTRAIN_ENFORCE(std::adjacent_find(e.workers.begin(), e.workers.end()) == e.workers.end(),
                 "an expected worker is listed twice");
  e.divide = divide;
  const auto blocks = static_cast<size_t>(block_count());
  e.arrived.assign(blocks, 0);
  e.sums.assign(blocks, 0.0);
  e.bad.assign(blocks, -1);
  eager_ = std::move(e);
  reduced_.resize(static_cast<size_t>(size_));
  // Pieces that arrived before the set was known count now.
  for (int32_t w : eager_->workers) {
    auto it = slots_.find(w);
    if (it == slots_.end()) continue;
    for (const auto& [b, e] : it->second.parts) count_arrival(b, e);
  }
}

void GradientAggregator::count_arrival(int64_t begin, int64_t end) {
  if (begin >= end) return;
  Eager& e = *eager_;
  const auto want = static_cast<int64_t>(e.workers.size());
  std::vector<int64_t> complete;
  for (int64_t c = begin / kNormChunk; c <= (end - 1) / kNormChunk; ++c) {
    const int64_t cb = c * kNormChunk;
    const int64_t ce = cb + block_size(c);
    auto& arrived = e.arrived[static_cast<size_t>(c)];
    arrived += std::min(end, ce) - std::max(begin, cb);
    // Overlapping pieces are refused, so a block's count reaches its full size exactly once.
    if (arrived == want * (ce - cb)) complete.push_back(c);
  }
  if (!complete.empty()) reduce_blocks(complete);
}

void GradientAggregator::reduce_blocks(const std::vector<int64_t>& blocks) {
  Eager& e = *eager_;
  std::vector<const float*> srcs;
  for (int32_t w : e.workers) srcs.push_back(slots_.at(w).grads.data());
  const double denom = denominator(e.workers, e.divide).first;
  float* dst = reduced_.data();
  const auto n = static_cast<int64_t>(blocks.size());
#pragma omp parallel for schedule(static) if (n > 2)
  for (int64_t j = 0; j < n; ++j) {
    const int64_t c = blocks[static_cast<size_t>(j)];
    const int64_t b = c * kNormChunk;
    const int64_t end = b + block_size(c);
    fold_range(srcs, encoding_, denom, b, end, dst);
    const auto [sum, first] = chunk_norm(dst, b, end);
    e.sums[static_cast<size_t>(c)] = sum;
    e.bad[static_cast<size_t>(c)] = first;
  }
  for (int64_t c : blocks) e.values_done += block_size(c);
}

GradientAggregator::Reduction GradientAggregator::reduce(std::span<const int32_t> contributors,
                                                         Divide divide) {
  std::vector<int32_t> ids(contributors.begin(), contributors.end());
  std::sort(ids.begin(), ids.end());
  if (eager_ && eager_->workers == ids && eager_->divide == divide) {
    for (int32_t w : ids) {
      PTRAIN_ENFORCE(has(w), "contributor worker {} has not pushed its whole shard ({} of {} values)",
                     w, covered(w), size_);
    }
    // Each block was reduced by the arrival that completed it.
    PTRAIN_ENFORCE(eager_->values_done == size_, "{} of {} values reduced with every push in",
                   eager_->values_done, size_);
    Reduction r;
    r.tokens = denominator(ids, divide).second;
    for (int64_t c = 0; c < block_count(); ++c) {
      r.norm.sum_squares += eager_->sums[static_cast<size_t>(c)];
      if (r.norm.first_nonfinite < 0) r.norm.first_nonfinite = eager_->bad[static_cast<size_t>(c)];
    }
    return r;
  }
  // Another set (a worker was lost or late): the whole shard over it, and what was reduced for
  // the expected set is void.
  eager_.reset();
  reduced_.resize(static_cast<size_t>(size_));
  Reduction r;
  r.tokens = mean(ids, reduced_, divide);
  r.norm = partial_norm(reduced_);
  return r;
}

NormPartial partial_norm(std::span<const float> g) {
  const auto n = static_cast<int64_t>(g.size());
  const int64_t chunks = (n + kNormChunk - 1) / kNormChunk;
  std::vector<double> sums(static_cast<size_t>(chunks), 0.0);
  std::vector<int64_t> bad(static_cast<size_t>(chunks), -1);
  const float* x = g.data();
#pragma omp parallel for schedule(static) if (chunks > 4)
  for (int64_t c = 0; c < chunks; ++c) {
    const auto [s, first] = chunk_norm(x, c * kNormChunk, std::min(n, (c + 1) * kNormChunk));
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
