// The learning-rate schedule (docs/contracts.md): linear warmup lr·(t+1)/W for t < W, then a cosine
// from lr down to min_lr, reaching min_lr at t = total_steps. t is the 0-based step index (the
// update that produces weights version t+1).
#pragma once

#include <cstdint>

namespace ptrain {

struct LrSchedule {
  double lr = 6e-4;
  double min_lr = 6e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  // Learning rate of step t (0-based). Steps at or past total_steps get min_lr.
  double at(int64_t t) const;
};

}  // namespace ptrain
