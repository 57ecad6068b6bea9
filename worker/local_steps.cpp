#include "worker/local_steps.hpp"

#include "common/error.hpp"
#include "common/proto/codec.hpp"
#include "worker/batch_loader.hpp"
#include "worker/train_step.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace ptrain {
namespace {

// min(1, max_norm / (‖g‖ + 1e-6)) as torch.nn.utils.clip_grad_norm_ (1 when max_norm <= 0);
// ‖g‖ summed in fp64. A non-finite norm stops the job naming the inner step (without clipping, a
// non-finite value reaches the servers in Δ, whose norm report names the element).
float clip_coef_of(std::span<const float> g, double max_norm, int64_t inner_step) {
  if (max_norm <= 0.0) return 1.0f;
  const auto n = static_cast<int64_t>(g.size());
  const float* x = g.data();
  double sum = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : sum) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  const double norm = std::sqrt(sum);
  if (!std::isfinite(norm)) {
    throw NumericError(fmt::format(
        "inner step {} (cluster.sync local): the gradient norm is {} (a non-finite gradient)",
        inner_step + 1, norm));
  }
  return static_cast<float>(std::min(1.0, max_norm / (norm + 1e-6)));
}

}  // namespace

std::optional<LocalStepsOptions> local_steps_options(const Config& config) {
  if (config.cluster.sync != SyncMode::kLocal) return std::nullopt;
  LocalStepsOptions o;
  o.local_steps = config.cluster.local_steps;
  o.adamw = adamw_options_for(config.optim);
  o.schedule = lr_schedule_for(config.optim, config.train.steps * config.cluster.local_steps);
  o.grad_clip = config.optim.grad_clip;
  return o;
}

LocalSteps::LocalSteps(const ParamLayout& layout, LocalStepsOptions options)
    : options_(options), segments_(decay_segments(layout, {0, layout.total()})) {
  PTRAIN_ENFORCE(options_.local_steps >= 1, "cluster.local_steps {} < 1", options_.local_steps);
  const auto n = static_cast<size_t>(layout.total());
  start_.resize(n);
  current_.resize(n);
  m_.resize(n);
  v_.resize(n);
  grad_.resize(n);
  delta_.resize(n);
}

void LocalSteps::restore(int64_t inner_steps, std::span<const float> m,
                         std::span<const float> v) {
  PTRAIN_ENFORCE(m.size() == m_.size() && v.size() == v_.size() && inner_steps >= 0,
                 "inner state: {} m and {} v floats for a layout of {}, {} inner steps", m.size(),
                 v.size(), m_.size(), inner_steps);
  std::copy(m.begin(), m.end(), m_.begin());
  std::copy(v.begin(), v.end(), v_.begin());
  inner_steps_ = inner_steps;
}

LossSum LocalSteps::run(TrainStep& train, const BatchLoader& loader,
                        std::span<const int64_t> windows, int64_t outer_step) {
  const int64_t H = options_.local_steps;
  const auto count = static_cast<int64_t>(windows.size());
  if (count == 0 || count % H != 0) {
    throw proto::ProtocolError(fmt::format(
        "outer step {}: {} windows do not split into cluster.local_steps = {} equal inner steps",
        outer_step + 1, count, H));
  }
  const int64_t per_step = count / H;
  const std::span<const float> pulled = train.weights_host();  // overwritten by set_weights
  std::copy(pulled.begin(), pulled.end(), start_.begin());
  std::copy(pulled.begin(), pulled.end(), current_.begin());
  LossSum total;
  for (int64_t h = 0; h < H; ++h) {
    const int64_t inner = outer_step * H + h;
    if (h > 0) train.set_weights(current_);  // h = 0: the pulled weights are in place already
    else train.upload_weights();
    const LossSum s = train.compute(loader, windows.subspan(static_cast<size_t>(h * per_step),
                                                            static_cast<size_t>(per_step)),
                                    inner);
    total.loss_sum += s.loss_sum;
    total.tokens += s.tokens;
    total.correct += s.correct;
    const std::span<const float> G = train.grads_host();
    const auto denom = static_cast<double>(std::max<int64_t>(1, s.tokens));
    const auto n = static_cast<int64_t>(grad_.size());
    float* g = grad_.data();
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(static_cast<double>(G[i]) / denom);
    const float coef = clip_coef_of(grad_, options_.grad_clip, inner);
    const double lr = options_.schedule.at(inner);
    ++inner_steps_;
    adamw_update_segments(segments_, adamw_scalars(options_.adamw, lr, inner_steps_), 0, coef,
                          grad_, current_, m_, v_);
  }
  // The servers apply p − lr·(…Δ…): Δ = start − end, so lr 1 and no momentum lands on `end`.
  const auto n = static_cast<int64_t>(delta_.size());
  const float* s0 = start_.data();
  const float* e = current_.data();
  float* d = delta_.data();
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) d[i] = s0[i] - e[i];
  return total;
}

}  // namespace ptrain
