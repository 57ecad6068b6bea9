// The update rule a parameter server applies to its slice once a step's gradient is aggregated
// and its clip coefficient known: the LR schedule, AdamW, and which elements get weight decay.
// Given to the server as a value (ps-lite style); the request handler calls it, transport code
// never sees it.
#pragma once

#include "common/config/config.hpp"
#include "common/proto/messages.hpp"
#include "common/tensor/param_layout.hpp"
#include "common/optim/adamw.hpp"
#include "common/optim/lr_schedule.hpp"
#include "common/optim/segmented_adamw.hpp"
#include "paramserver/optimizer/outer_sgd.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace ptrain {

class UpdateRule {
 public:
  UpdateRule(AdamWOptions adamw, LrSchedule schedule, std::vector<DecaySegment> segments);

  // Applies step `step` (0-based; AdamW's t = step + 1) to the slice starting at global offset
  // `range_begin`: grads are the aggregated mean gradient, scaled by `clip_coef` first.
  // Returns the learning rate used.
  double apply(int64_t step, int64_t range_begin, float clip_coef, std::span<const float> grads,
               std::span<float> weights, std::span<float> m, std::span<float> v) const;

  const LrSchedule& schedule() const { return schedule_; }
  const AdamWOptions& adamw() const { return adamw_; }

  // cluster.sync local: the servers apply the outer Nesterov SGD to the plain average of the
  // workers' pseudo-gradients instead of AdamW to their gradient (the workers run AdamW with
  // `schedule()` over inner steps; `local_steps` of them per outer step).
  struct Outer {
    OuterSgdOptions sgd;
    int64_t local_steps = 1;
  };
  UpdateRule& with_outer(Outer outer) {
    outer_ = outer;
    return *this;
  }
  const std::optional<Outer>& outer() const { return outer_; }
  // The outer step `step` (0-based) on a slice (`momentum`: the server's buffer). Returns the
  // inner learning rate of the outer step's last inner step (what train.jsonl reports as lr).
  double apply_outer(int64_t step, std::span<const float> delta, std::span<float> weights,
                     std::span<float> momentum) const;

 private:
  AdamWOptions adamw_;
  LrSchedule schedule_;
  std::vector<DecaySegment> segments_;
  std::optional<Outer> outer_;
};

// The rule server `range` of a job applies, from the config: AdamW (optim.beta1, beta2, eps,
// weight_decay), the schedule (optim.lr warmed up over optim.warmup_steps, then a cosine to
// optim.min_lr at train.steps) and the layout's decay flags on `range`; with cluster.sync local,
// the outer SGD (cluster.outer_lr, outer_momentum) and the inner schedule over train.steps ×
// cluster.local_steps inner steps. Every launch and
// `bench train` build their rule here, so none of them reads these keys on its own.
UpdateRule update_rule_for(const Config& config, const ParamLayout& layout,
                           const proto::KeyRange& range);

}  // namespace ptrain
