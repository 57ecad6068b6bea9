#include "paramserver/update_rule.hpp"

#include "common/error.hpp"

#include <algorithm>

namespace ptrain {

UpdateRule::UpdateRule(AdamWOptions adamw, LrSchedule schedule, std::vector<DecaySegment> segments)
    : adamw_(adamw), schedule_(schedule), segments_(std::move(segments)) {}

double UpdateRule::apply(int64_t step, int64_t range_begin, float clip_coef,
                         std::span<const float> grads, std::span<float> weights,
                         std::span<float> m, std::span<float> v) const {
  const double lr = schedule_.at(step);
  adamw_update_segments(segments_, adamw_scalars(adamw_, lr, step + 1), range_begin, clip_coef,
                        grads, weights, m, v);
  return lr;
}

double UpdateRule::apply_outer(int64_t step, std::span<const float> delta,
                               std::span<float> weights, std::span<float> momentum) const {
  PTRAIN_ENFORCE(outer_.has_value(), "an outer step under a rule without the outer optimizer");
  outer_sgd_update(outer_->sgd, delta, weights, momentum);
  return schedule_.at((step + 1) * outer_->local_steps - 1);
}

UpdateRule update_rule_for(const Config& config, const ParamLayout& layout,
                           const proto::KeyRange& range) {
  const bool local = config.cluster.sync == SyncMode::kLocal;
  const int64_t inner_steps = local ? config.train.steps * config.cluster.local_steps
                                    : config.train.steps;
  UpdateRule rule(adamw_options_for(config.optim), lr_schedule_for(config.optim, inner_steps),
                  decay_segments(layout, range));
  if (local) {
    rule.with_outer({{config.cluster.outer_lr, config.cluster.outer_momentum},
                     config.cluster.local_steps});
  }
  return rule;
}

}  // namespace ptrain
