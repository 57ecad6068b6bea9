// A worker's outer step under cluster.sync local (DiLoCo; docs/local_sgd.md): from the weights it
// pulled (version t), H = cluster.local_steps inner AdamW steps on its own windows, then the
// pseudo-gradient Δ = start weights − weights after the inner steps (fp32), which the worker
// pushes instead of a gradient. The servers average the workers' Δ and apply the outer Nesterov
// SGD (paramserver/optimizer/outer_sgd.hpp).
//
// Inner step h of outer step t (global inner index i = t·H + h):
//   G  = the token-sum gradient of window block h (TrainStep::compute, as in bsp)
//   g  = G / tokens                      (fp64 division rounded once, as the servers' mean)
//   c  = clip coefficient of ‖g‖ (optim.grad_clip; the worker's own global norm, fp64)
//   AdamW (common/optim: the servers' arithmetic) with lr = schedule(i) over train.steps × H
//   inner steps, the layout's decay flags, and the step count n + 1, n being the inner steps this
//   worker's moments already hold.
// The inner AdamW moments (m, v, n) stay on the worker from one outer step to the next, as in
// DiLoCo: each worker's replica keeps its own optimizer. A worker that joins starts them at zero;
// one that dies takes them with it (the job goes on; only that worker's H inner steps of the
// running outer step are lost). A checkpoint saves them (common/io/inner_state.hpp) and a resume
// hands them back, so a resume is exact.
//
// The windows of an outer step come as H equal consecutive blocks, block h for inner step h (the
// coordinator's plan: this worker's share of H × train.batch_size). Not thread-safe.
#pragma once

#include "common/config/config.hpp"
#include "common/optim/segmented_adamw.hpp"
#include "common/tensor/param_layout.hpp"
#include "worker/model/gpt.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace ptrain {

class BatchLoader;
class TrainStep;

struct LocalStepsOptions {
  int64_t local_steps = 1;  // H (cluster.local_steps)
  AdamWOptions adamw;       // optim.beta1, beta2, eps, weight_decay
  LrSchedule schedule;      // optim.lr … over train.steps × H inner steps
  double grad_clip = 0.0;   // optim.grad_clip: the inner steps' global-norm clipping (0 = off)
};

// The options of cluster.sync local from the job's config; nullopt under another mode.
std::optional<LocalStepsOptions> local_steps_options(const Config& config);

class LocalSteps {
 public:
  LocalSteps(const ParamLayout& layout, LocalStepsOptions options);

  // Outer step `outer_step` (0-based) from the weights in train.weights_host() (as pulled):
  // runs the H inner steps over `windows` (H equal blocks, indices into `loader`'s file), leaves
  // Δ in pseudo_gradient() and returns Σ loss and Σ tokens over the inner steps. Throws
  // ProtocolError when the windows do not split into H equal non-empty blocks.
  LossSum run(TrainStep& train, const BatchLoader& loader, std::span<const int64_t> windows,
              int64_t outer_step);

  // The inner AdamW state: the moments and the inner steps they hold (a checkpoint's part).
  std::span<const float> m() const { return m_; }
  std::span<const float> v() const { return v_; }
  int64_t inner_steps() const { return inner_steps_; }
  // Replaces it (a resume); m and v must hold layout.total() floats each.
  void restore(int64_t inner_steps, std::span<const float> m, std::span<const float> v);

  // Δ of the last run() (layout.total() floats).
  std::span<const float> pseudo_gradient() const { return delta_; }
  // The weights after the last run()'s inner steps (layout.total() floats).
  std::span<const float> weights() const { return current_; }
  const LocalStepsOptions& options() const { return options_; }

 private:
  LocalStepsOptions options_;
  std::vector<DecaySegment> segments_;
  std::vector<float> start_, current_, m_, v_, grad_, delta_;
  int64_t inner_steps_ = 0;
};

}  // namespace ptrain
