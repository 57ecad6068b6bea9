#include "coordinator/step_controller.hpp"

#include "common/error.hpp"

#include <algorithm>
#include <cmath>

namespace ptrain {

double clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0.0) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

StepController::StepController(int64_t num_servers, std::vector<int32_t> workers,
                               double max_norm)
    : num_servers_(num_servers), workers_(std::move(workers)), max_norm_(max_norm) {
  PTRAIN_ENFORCE(num_servers_ >= 1, "{} servers", num_servers_);
  std::sort(workers_.begin(), workers_.end());
  PTRAIN_ENFORCE(!workers_.empty(), "a step needs at least one worker");
}

void StepController::begin(int64_t step) {
  step_ = step;
  received_.assign(static_cast<size_t>(num_servers_),
                   std::vector<bool>(workers_.size(), false));
  done_.assign(workers_.size(), std::nullopt);
  norms_.assign(static_cast<size_t>(num_servers_), std::nullopt);
  applied_.assign(static_cast<size_t>(num_servers_), std::nullopt);
}

int64_t StepController::worker_index(int32_t id) const {
  auto it = std::lower_bound(workers_.begin(), workers_.end(), id);
  if (it == workers_.end() || *it != id) return -1;
  return it - workers_.begin();
}

bool StepController::on_push_received(const proto::PushReceived& m) {
  const int64_t k = worker_index(m.worker_id);
  if (m.step != step_ || k < 0 || m.server_id < 0 || m.server_id >= num_servers_) return false;
  auto&& slot = received_[static_cast<size_t>(m.server_id)][static_cast<size_t>(k)];
  if (slot) return false;
  slot = true;
  return true;
}

bool StepController::on_worker_done(const proto::WorkerStepDone& m) {
  const int64_t k = worker_index(m.worker_id);
  if (m.step != step_ || k < 0 || done_[static_cast<size_t>(k)]) return false;
  done_[static_cast<size_t>(k)] = m;
  return true;
}

bool StepController::gathered() const {
  for (const auto& d : done_) {
    if (!d) return false;
  }
  for (const auto& row : received_) {
    for (bool b : row) {
      if (!b) return false;
    }
  }
  return true;
}

std::vector<int32_t> StepController::contributors() const {
  std::vector<int32_t> out;
  for (size_t k = 0; k < workers_.size(); ++k) {
    bool everywhere = true;
    for (const auto& row : received_) everywhere = everywhere && row[k];
    if (everywhere) out.push_back(workers_[k]);
  }
  return out;
}

bool StepController::on_norm(const proto::NormReport& m) {
  if (m.step != step_ || m.server_id < 0 || m.server_id >= num_servers_) return false;
  auto& slot = norms_[static_cast<size_t>(m.server_id)];
  if (slot) return false;
  slot = m;
  return true;
}

bool StepController::norms_complete() const {
  return std::all_of(norms_.begin(), norms_.end(), [](const auto& n) { return n.has_value(); });
}

double StepController::global_norm() const {
  double sum = 0.0;
  for (const auto& n : norms_) {
    PTRAIN_ENFORCE(n.has_value(), "global norm before every server reported");
    sum += n->sum_squares;
  }
  return std::sqrt(sum);
}

float StepController::clip_coef() const {
  return static_cast<float>(clip_coefficient(global_norm(), max_norm_));
}

std::optional<int64_t> StepController::first_nonfinite() const {
  for (const auto& n : norms_) {
    if (n && (n->first_nonfinite >= 0)) return n->first_nonfinite;
  }
  return std::nullopt;
}

bool StepController::on_applied(const proto::StepApplied& m) {
  if (m.step != step_ || m.server_id < 0 || m.server_id >= num_servers_) return false;
  auto& slot = applied_[static_cast<size_t>(m.server_id)];
  if (slot) return false;
  slot = m;
  return true;
}

bool StepController::applied_complete() const {
  return std::all_of(applied_.begin(), applied_.end(),
                     [](const auto& a) { return a.has_value(); });
}

double StepController::lr() const { return applied_.at(0) ? applied_[0]->lr : 0.0; }

double StepController::loss() const {
  double loss = 0.0;
  const int64_t n = tokens();
  for (const auto& d : done_) {
    if (d) loss += d->loss_sum;
  }
  return n > 0 ? loss / static_cast<double>(n) : 0.0;
}

int64_t StepController::tokens() const {
  int64_t n = 0;
  for (const auto& d : done_) {
    if (d) n += d->tokens;
  }
  return n;
}

double StepController::max_compute_s() const {
  double t = 0.0;
  for (const auto& d : done_) {
    if (d) t = std::max(t, d->compute_s);
  }
  return t;
}

double StepController::max_pull_s() const {
  double t = 0.0;
  for (const auto& d : done_) {
    if (d) t = std::max(t, d->pull_s);
  }
  return t;
}

}  // namespace ptrain
