#include "paramserver/update_rule.hpp"

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

UpdateRule::UpdateRule(AdamWOptions adamw, LrSchedule schedule, std::vector<DecaySegment> segments)
    : adamw_(adamw), schedule_(schedule), segments_(std::move(segments)) {}

double UpdateRule::apply(int64_t step, int64_t range_begin, float clip_coef,
                         std::span<const float> grads, std::span<float> weights,
                         std::span<float> m, std::span<float> v) const {
  const auto n = static_cast<int64_t>(weights.size());
  PTRAIN_ENFORCE(static_cast<int64_t>(grads.size()) == n, "{} gradients for {} weights",
                 grads.size(), n);
  const double lr = schedule_.at(step);
  const AdamWScalars s = adamw_scalars(adamw_, lr, step + 1);
  int64_t covered = 0;
  for (const auto& seg : segments_) {
    const int64_t b = std::max(seg.begin, range_begin) - range_begin;
    const int64_t e = std::min(seg.end, range_begin + n) - range_begin;
    if (b >= e) continue;
    const auto off = static_cast<size_t>(b);
    const auto len = static_cast<size_t>(e - b);
    adamw_update(s, seg.decay, clip_coef, weights.subspan(off, len), m.subspan(off, len),
                 v.subspan(off, len), grads.subspan(off, len));
    covered += e - b;
  }
  PTRAIN_ENFORCE(covered == n, "decay segments cover {} of {} elements", covered, n);
  return lr;
}

UpdateRule update_rule_for(const Config& config, const ParamLayout& layout,
                           const proto::KeyRange& range) {
  const AdamWOptions adamw{config.optim.beta1, config.optim.beta2, config.optim.eps,
                           config.optim.weight_decay};
  const LrSchedule schedule{config.optim.lr, config.optim.min_lr, config.optim.warmup_steps,
                            config.train.steps};
  return UpdateRule(adamw, schedule, decay_segments(layout, range));
}

}  // namespace ptrain
