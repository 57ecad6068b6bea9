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
  PTRAIN_ENFORCE(tokens >= 0, "negative token count {}", tokens);
  Slot& s = slots_[worker];
  if (s.filled) return false;
  if (s.grads.size() != grads.size()) s.grads.resize(grads.size());
  if (grads.data() != s.grads.data() && !grads.empty()) {
    std::memcpy(s.grads.data(), grads.data(), grads.size() * sizeof(float));
  }
  s.tokens = tokens;
  s.filled = true;
  return true;
}

size_t GradientAggregator::count() const {
  size_t n = 0;
  for (const auto& [w, s] : slots_) n += s.filled ? 1 : 0;
  return n;
}

std::vector<std::pair<int32_t, std::span<float>>> GradientAggregator::free_slots() {
  std::vector<std::pair<int32_t, std::span<float>>> out;
  for (auto& [w, s] : slots_) {
    if (!s.filled) out.emplace_back(w, std::span<float>(s.grads));
  }
  return out;
}

void GradientAggregator::clear() {
  for (auto& [w, s] : slots_) s.filled = false;
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
    PTRAIN_ENFORCE(it != slots_.end() && it->second.filled, "contributor worker {} has not pushed",
                   w);
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
