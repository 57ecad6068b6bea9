#include "common/optim/segmented_adamw.hpp"

#include "common/error.hpp"

#include <algorithm>

namespace ptrain {

std::vector<DecaySegment> decay_segments(const ParamLayout& layout, const proto::KeyRange& range) {
  std::vector<DecaySegment> out;
  for (const auto& t : layout.tensors()) {
    const int64_t b = std::max(range.begin, t.offset);
    const int64_t e = std::min(range.end, t.offset + t.count);
    if (b >= e) continue;
    if (!out.empty() && out.back().end == b && out.back().decay == t.decay) {
      out.back().end = e;
    } else {
      out.push_back({b, e, t.decay});
    }
  }
  return out;
}

void adamw_update_segments(const std::vector<DecaySegment>& segments, const AdamWScalars& s,
                           int64_t range_begin, float grad_scale, std::span<const float> grads,
                           std::span<float> weights, std::span<float> m, std::span<float> v) {
  const auto n = static_cast<int64_t>(weights.size());
  PTRAIN_ENFORCE(static_cast<int64_t>(grads.size()) == n, "{} gradients for {} weights",
                 grads.size(), n);
  int64_t covered = 0;
  for (const auto& seg : segments) {
    const int64_t b = std::max(seg.begin, range_begin) - range_begin;
    const int64_t e = std::min(seg.end, range_begin + n) - range_begin;
    if (b >= e) continue;
    const auto off = static_cast<size_t>(b);
    const auto len = static_cast<size_t>(e - b);
    adamw_update(s, seg.decay, grad_scale, weights.subspan(off, len), m.subspan(off, len),
                 v.subspan(off, len), grads.subspan(off, len));
    covered += e - b;
  }
  PTRAIN_ENFORCE(covered == n, "decay segments cover {} of {} elements", covered, n);
}

AdamWOptions adamw_options_for(const OptimConfig& optim) {
  return AdamWOptions{optim.beta1, optim.beta2, optim.eps, optim.weight_decay};
}

LrSchedule lr_schedule_for(const OptimConfig& optim, int64_t total_steps) {
  return LrSchedule{optim.lr, optim.min_lr, optim.warmup_steps, total_steps};
}

}  // namespace ptrain
