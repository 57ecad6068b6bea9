// AdamW exactly as torch.optim.AdamW (docs/contracts.md), over a contiguous segment of fp32 weights:
//   p ← p·(1 − lr·wd)                       (only where weight decay applies)
//   m ← β1·m + (1−β1)·g
//   v ← β2·v + (1−β2)·g²
//   p ← p − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps)      t counted from 1
// The scalars are computed in double and rounded to float, and the element math runs in float in
// torch's operation order, as torch's CPU kernels do for fp32 tensors. Element-wise, so the result
// does not depend on how a range is split across threads or servers.
#pragma once

#include <cstdint>
#include <span>

namespace ptrain {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// The per-step scalars, computed once per step.
struct AdamWScalars {
  float decay_factor = 1.0f;    // 1 − lr·wd (as float)
  float beta1 = 0.9f, one_minus_beta1 = 0.1f;
  float beta2 = 0.95f, one_minus_beta2 = 0.05f;
  float bias2_sqrt = 1.0f;      // sqrt(1 − β2^t)
  float neg_step_size = 0.0f;   // −lr / (1 − β1^t)
  float eps = 1e-8f;
};
AdamWScalars adamw_scalars(const AdamWOptions& o, double lr, int64_t t);

// One update of a segment. `g` is the (already averaged) gradient; it is multiplied by
// `grad_scale` first, in float, as clip_grad_norm_ scales .grad in place (1 = no clipping).
// `decay` selects weight decay for the whole segment. Spans have equal sizes.
// OpenMP-parallel over elements (deterministic: element-wise).
void adamw_update(const AdamWScalars& s, bool decay, float grad_scale, std::span<float> p,
                  std::span<float> m, std::span<float> v, std::span<const float> g);

}  // namespace ptrain
