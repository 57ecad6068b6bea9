#include "common/optim/adamw.hpp"

#include "common/error.hpp"

#include <cmath>

namespace ptrain {

AdamWScalars adamw_scalars(const AdamWOptions& o, double lr, int64_t t) {
  PTRAIN_ENFORCE(t >= 1, "AdamW step count starts at 1, got {}", t);
  AdamWScalars s;
  const double bias1 = 1.0 - std::pow(o.beta1, static_cast<double>(t));
  const double bias2 = 1.0 - std::pow(o.beta2, static_cast<double>(t));
  s.decay_factor = static_cast<float>(1.0 - lr * o.weight_decay);
  s.beta1 = static_cast<float>(o.beta1);
  s.one_minus_beta1 = static_cast<float>(1.0 - o.beta1);
  s.beta2 = static_cast<float>(o.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
  s.bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  s.neg_step_size = static_cast<float>(-(lr / bias1));
  s.eps = static_cast<float>(o.eps);
  return s;
}

void adamw_update(const AdamWScalars& s, bool decay, float grad_scale, std::span<float> p,
                  std::span<float> m, std::span<float> v, std::span<const float> g) {
  PTRAIN_ENFORCE(p.size() == m.size() && p.size() == v.size() && p.size() == g.size(),
                 "adamw_update: sizes differ (p {}, m {}, v {}, g {})", p.size(), m.size(),
                 v.size(), g.size());
  const auto n = static_cast<int64_t>(p.size());
  float* P = p.data();
  float* M = m.data();
  float* V = v.data();
  const float* G = g.data();
  const float decay_factor = decay ? s.decay_factor : 1.0f;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = G[i] * grad_scale;
    float pi = P[i] * decay_factor;
    const float mi = M[i] * s.beta1 + s.one_minus_beta1 * gi;
    const float vi = V[i] * s.beta2 + s.one_minus_beta2 * gi * gi;
    const float denom = std::sqrt(vi) / s.bias2_sqrt + s.eps;
    pi = pi + s.neg_step_size * mi / denom;
    P[i] = pi;
    M[i] = mi;
    V[i] = vi;
  }
}

}  // namespace ptrain
