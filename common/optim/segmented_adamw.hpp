// AdamW over a slice of the flat parameter vector whose tensors differ in weight decay (no decay on
// biases, LayerNorm and, by the layout's flags, embeddings where so marked): the slice is cut into
// runs of equal flag once (decay_segments), and each step applies adamw_update (adamw.hpp) run by
// run. Shared by the parameter servers (their slice, the job's update rule) and by the workers of
// cluster.sync local (the whole vector, their inner steps), so the two apply the same arithmetic.
#pragma once

#include "common/config/config.hpp"
#include "common/optim/adamw.hpp"
#include "common/optim/lr_schedule.hpp"
#include "common/proto/messages.hpp"
#include "common/tensor/param_layout.hpp"

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

// One AdamW step (scalars `s`) on weights starting at global offset `range_begin`: each element
// gets its segment's decay flag; grads are scaled by `grad_scale` first (the clip coefficient).
// Every element must be covered by `segments` (checked). Spans have equal sizes.
void adamw_update_segments(const std::vector<DecaySegment>& segments, const AdamWScalars& s,
                           int64_t range_begin, float grad_scale, std::span<const float> grads,
                           std::span<float> weights, std::span<float> m, std::span<float> v);

// The job's AdamW settings (optim.beta1, beta2, eps, weight_decay).
AdamWOptions adamw_options_for(const OptimConfig& optim);
// The job's schedule (optim.lr warmed up over optim.warmup_steps, then a cosine to optim.min_lr)
// over `total_steps` updates.
LrSchedule lr_schedule_for(const OptimConfig& optim, int64_t total_steps);

}  // namespace ptrain
