// The update rule a parameter server applies to its slice once a step's gradient is aggregated
// and its clip coefficient known: the LR schedule, AdamW, and which elements get weight decay.
// Given to the server as a value (ps-lite style); the request handler calls it, transport code
// never sees it.
#pragma once

#include "common/config/config.hpp"
#include "common/proto/messages.hpp"
#include "common/tensor/param_layout.hpp"
#include "paramserver/optimizer/adamw.hpp"
#include "paramserver/optimizer/lr_schedule.hpp"

#include <cstdint>
#include <span>
#include <vector>

namespace ptrain {

// A run of elements [begin, end) (global offsets) that all have the same weight-decay flag.
struct DecaySegment {
  int64_t begin = 0;
  int64_t end = 0;
  bool decay = false;
};

// The layout's tensors intersected with `range`, merged where neighbours share the flag. A tensor
// that spans two servers contributes a segment to each.
std::vector<DecaySegment> decay_segments(const ParamLayout& layout, const proto::KeyRange& range);

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

 private:
  AdamWOptions adamw_;
  LrSchedule schedule_;
  std::vector<DecaySegment> segments_;
};

// The rule server `range` of a job applies, from the config: AdamW (optim.beta1, beta2, eps,
// weight_decay), the schedule (optim.lr warmed up over optim.warmup_steps, then a cosine to
// optim.min_lr at train.steps) and the layout's decay flags on `range`. Every launch and
// `bench train` build their rule here, so none of them reads these keys on its own.
UpdateRule update_rule_for(const Config& config, const ParamLayout& layout,
                           const proto::KeyRange& range);

}  // namespace ptrain
