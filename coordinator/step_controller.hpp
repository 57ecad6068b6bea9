// The coordinator's bookkeeping for one bsp step, without I/O: which pushes reached which
// servers, the contributor set (workers whose pushes reached EVERY server), the servers' partial
// norms combined in server-id order in fp64, the clip coefficient, and the step's loss.
//
// Clipping as torch.nn.utils.clip_grad_norm_: norm = sqrt(Σ_servers partial Σg²),
// coef = min(1, max_norm / (norm + 1e-6)); coef = 1 when max_norm is 0 (clipping off).
#pragma once

#include "common/proto/messages.hpp"

#include <cstdint>
#include <optional>
#include <vector>

namespace ptrain {

// min(1, max_norm / (norm + 1e-6)), or 1 when max_norm <= 0.
double clip_coefficient(double norm, double max_norm);

class StepController {
 public:
  StepController(int64_t num_servers, std::vector<int32_t> workers, double max_norm);

  void begin(int64_t step);
  int64_t step() const { return step_; }

  // Each returns false for a message of another step or a duplicate (the caller decides).
  bool on_push_received(const proto::PushReceived& m);
  bool on_worker_done(const proto::WorkerStepDone& m);
  // Every member's push reached every server and every member reported its loss.
  bool gathered() const;
  // Ascending ids of the workers whose pushes reached every server.
  std::vector<int32_t> contributors() const;

  bool on_norm(const proto::NormReport& m);
  bool norms_complete() const;
  double global_norm() const;  // sqrt of the partials summed in server-id order
  float clip_coef() const;
  // The first non-finite gradient element reported (flat index; lowest server id), if any.
  std::optional<int64_t> first_nonfinite() const;

  bool on_applied(const proto::StepApplied& m);
  bool applied_complete() const;
  double lr() const;  // as reported by server 0

  // Loss of the step: Σ loss_sum / Σ tokens over workers in worker-id order.
  double loss() const;
  int64_t tokens() const;
  // Slowest worker's phase times (seconds) of this step.
  double max_compute_s() const;
  double max_pull_s() const;

 private:
  int64_t num_servers_;
  std::vector<int32_t> workers_;  // ascending
  double max_norm_;
  int64_t step_ = -1;
  // received_[s][k]: server s has worker workers_[k]'s push
  std::vector<std::vector<bool>> received_;
  std::vector<std::optional<proto::WorkerStepDone>> done_;
  std::vector<std::optional<proto::NormReport>> norms_;
  std::vector<std::optional<proto::StepApplied>> applied_;

  int64_t worker_index(int32_t id) const;  // -1 if not a member
};

}  // namespace ptrain
