#include "common/optim/lr_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace ptrain {

double LrSchedule::at(int64_t t) const {
  if (t < warmup_steps) {
    return lr * static_cast<double>(t + 1) / static_cast<double>(warmup_steps);
  }
  if (t >= total_steps) return min_lr;
  const double progress =
      static_cast<double>(t - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  const double coeff = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return min_lr + coeff * (lr - min_lr);
}

}  // namespace ptrain
