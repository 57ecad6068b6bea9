#include "paramserver/optimizer/outer_sgd.hpp"

#include "common/error.hpp"

#include <cstdint>

namespace ptrain {

void outer_sgd_update(const OuterSgdOptions& o, std::span<const float> delta,
                      std::span<float> weights, std::span<float> momentum) {
  PTRAIN_ENFORCE(delta.size() == weights.size() && delta.size() == momentum.size(),
                 "outer_sgd_update: sizes differ (delta {}, weights {}, momentum {})",
                 delta.size(), weights.size(), momentum.size());
  const auto n = static_cast<int64_t>(weights.size());
  const auto mu = static_cast<float>(o.momentum);
  const auto neg_lr = static_cast<float>(-o.lr);
  const float* D = delta.data();
  float* P = weights.data();
  float* B = momentum.data();
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float b = B[i] * mu + D[i];  // buf.mul_(μ).add_(Δ)
    const float d = D[i] + mu * b;     // Δ.add(buf, alpha=μ)
    P[i] = P[i] + neg_lr * d;          // p.add_(d, alpha=−lr)
    B[i] = b;
  }
}

}  // namespace ptrain
