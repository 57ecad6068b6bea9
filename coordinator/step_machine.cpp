// StepMachine (step_machine.hpp).
#include "coordinator/step_machine.hpp"

#include "common/error.hpp"
#include "common/proto/codec.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

namespace ptrain {

namespace p = proto;
using net::Endpoint;

double clip_coefficient(double norm, double max_norm) {
  if (max_norm <= 0.0) return 1.0;
  return std::min(1.0, max_norm / (norm + 1e-6));
}

const char* phase_name(StepPhase phase) {
  switch (phase) {
    case StepPhase::kIdle: return "between steps";
    case StepPhase::kGathering: return "gathering pushes and worker reports";
    case StepPhase::kNorms: return "partial gradient norms";
    case StepPhase::kApplying: return "servers applying the update";
    case StepPhase::kApplied: return "applied";
    case StepPhase::kFailed: return "failed";
  }
  return "unknown phase";
}

StepMachine::StepMachine(StepMachineOptions options) : options_(std::move(options)) {
  auto& s = options_.servers;
  std::sort(s.begin(), s.end());
  PTRAIN_ENFORCE(!s.empty(), "a step needs at least one server");
  PTRAIN_ENFORCE(std::adjacent_find(s.begin(), s.end()) == s.end(), "a server listed twice");
}

bool StepMachine::is_server(int32_t id) const {
  return std::binary_search(options_.servers.begin(), options_.servers.end(), id);
}

std::string StepMachine::where() const {
  switch (phase_) {
    case StepPhase::kIdle: return "before the first step";
    case StepPhase::kApplied: return fmt::format("after step {} was applied", step_ + 1);
    default: return fmt::format("during step {} ({})", step_ + 1, phase_name(phase_));
  }
}

void StepMachine::refuse(const Endpoint& from, const p::Message& m, const std::string& why) const {
  throw p::ProtocolError(fmt::format("coordinator: unexpected {} from {} {}: {}",
                                     p::type_name(p::type_of(m)), from.str(), where(), why));
}

void StepMachine::fail(StepFailure::Kind kind, Endpoint member, std::string message) {
  failure_ = StepFailure{kind, phase_, member, std::move(message)};
  phase_ = StepPhase::kFailed;
}

std::vector<StepOutgoing> StepMachine::begin_step(int64_t step, int64_t membership_epoch,
                                                  std::vector<WorkerWork> work) {
  PTRAIN_ENFORCE(phase_ == StepPhase::kIdle || phase_ == StepPhase::kApplied,
                 "step {} begun {}", step + 1, where());
  PTRAIN_ENFORCE(!work.empty(), "step {} has no worker", step + 1);
  std::sort(work.begin(), work.end(),
            [](const WorkerWork& a, const WorkerWork& b) { return a.worker_id < b.worker_id; });
  step_ = step;
  epoch_ = membership_epoch;
  workers_.clear();
  reports_.clear();
  contributors_.clear();
  norms_.clear();
  applied_.clear();
  global_norm_ = 0.0;
  std::vector<StepOutgoing> out;
  p::StepWorkers expect{step, membership_epoch, {}};
  for (const auto& w : work) {
    PTRAIN_ENFORCE(workers_.emplace(w.worker_id, WorkerState{}).second,
                   "worker {} given twice the work of step {}", w.worker_id, step + 1);
    expect.workers.push_back(w.worker_id);
  }
  // The servers first: each reduces and reports its partial norm as soon as it holds the push
  // of every worker named here (no StepContributors round unless a worker is lost or late).
  for (int32_t s : options_.servers) out.push_back({net::server_endpoint(s), expect});
  for (auto& w : work) {
    out.push_back({net::worker_endpoint(w.worker_id),
                   p::StepBegin{step, membership_epoch, std::move(w.windows)}});
  }
  phase_ = StepPhase::kGathering;
  return out;
}

std::vector<StepOutgoing> StepMachine::handle(const Endpoint& from, const p::Message& message) {
  PTRAIN_ENFORCE(phase_ != StepPhase::kFailed, "a message after the step failed: {}",
                 failure_ ? failure_->message : "");
  std::vector<StepOutgoing> out;
  if (const auto* m = std::get_if<p::PushReceived>(&message)) {
    on_push(from, *m, out);
  } else if (const auto* d = std::get_if<p::WorkerStepDone>(&message)) {
    on_done(from, *d, out);
  } else if (const auto* n = std::get_if<p::NormReport>(&message)) {
    on_norm(from, *n, out);
  } else if (const auto* a = std::get_if<p::StepApplied>(&message)) {
    on_applied(from, *a);
  } else {
    refuse(from, message, "not a message of a step");
  }
  return out;
}

bool StepMachine::pushed_everywhere(const WorkerState& w) const {
  return w.pushed_to.size() == options_.servers.size();
}

void StepMachine::on_push(const Endpoint& from, const p::PushReceived& m,
                          std::vector<StepOutgoing>& out) {
  if (from != net::server_endpoint(m.server_id) || !is_server(m.server_id)) {
    refuse(from, m, fmt::format("it names server {}", m.server_id));
  }
  if (phase_ == StepPhase::kIdle) refuse(from, m, "no step is running");
  if (m.step != step_) refuse(from, m, fmt::format("it is for step {}", m.step + 1));
  const auto it = workers_.find(m.worker_id);
  if (it == workers_.end()) {
    refuse(from, m, fmt::format("worker {} has no part in this step", m.worker_id));
  }
  WorkerState& w = it->second;
  if (w.dropped) return;  // a push it made before it was lost: not a contributor
  if (phase_ != StepPhase::kGathering) refuse(from, m, "the contributors are already fixed");
  if (!w.pushed_to.insert(m.server_id).second) {
    refuse(from, m, fmt::format("a second push of worker {}", m.worker_id));
  }
  w.push_tokens = m.tokens;
  advance(out);
}

void StepMachine::on_done(const Endpoint& from, const p::WorkerStepDone& m,
                          std::vector<StepOutgoing>& out) {
  if (from != net::worker_endpoint(m.worker_id)) {
    refuse(from, m, fmt::format("it names worker {}", m.worker_id));
  }
  if (phase_ == StepPhase::kIdle) refuse(from, m, "no step is running");
  if (m.step != step_) refuse(from, m, fmt::format("it is for step {}", m.step + 1));
  const auto it = workers_.find(m.worker_id);
  if (it == workers_.end()) refuse(from, m, "this worker has no part in this step");
  const WorkerState& w = it->second;
  if (w.dropped) return;
  // A worker lost after pushing everywhere may still have its report in flight: it counts while
  // the step gathers, and is ignored once the contributors are fixed.
  if (w.lost && phase_ != StepPhase::kGathering) return;
  if (reports_.count(m.worker_id) != 0) refuse(from, m, "a second report");
  if (phase_ != StepPhase::kGathering) refuse(from, m, "the contributors are already fixed");
  reports_.emplace(m.worker_id, m);
  advance(out);
}

void StepMachine::on_norm(const Endpoint& from, const p::NormReport& m,
                          std::vector<StepOutgoing>& out) {
  if (from != net::server_endpoint(m.server_id) || !is_server(m.server_id)) {
    refuse(from, m, fmt::format("it names server {}", m.server_id));
  }
  if (phase_ != StepPhase::kGathering && phase_ != StepPhase::kNorms) {
    refuse(from, m, "no norm is awaited");
  }
  if (m.step != step_) refuse(from, m, fmt::format("it is for step {}", m.step + 1));
  const std::vector<int32_t> all = workers();
  // The set the step can commit with: every worker (the servers' own reports) until the
  // coordinator fixes a smaller one (StepContributors, after a worker was lost or late).
  const bool fixed = phase_ == StepPhase::kNorms && contributors_ != all;
  const std::vector<int32_t>& awaited = fixed ? contributors_ : all;
  if (m.workers != awaited) {
    // A server's own report for the whole set, made before a worker was dropped: replaced by its
    // answer to StepContributors, which follows it on the same connection.
    if (fixed && m.workers == all) return;
    // The report of an earlier attempt at this step (begun again after every worker was
    // dropped; none of its workers is among this attempt's).
    bool earlier = true;
    for (int32_t w : m.workers) earlier = earlier && workers_.count(w) == 0;
    if (earlier) return;
    refuse(from, m, fmt::format("it covers workers [{}], the step awaits [{}]",
                                fmt::join(m.workers, ", "), fmt::join(awaited, ", ")));
  }
  if (!norms_.emplace(m.server_id, m).second) refuse(from, m, "a second norm report");
  advance(out);
}

void StepMachine::on_applied(const Endpoint& from, const p::StepApplied& m) {
  if (from != net::server_endpoint(m.server_id) || !is_server(m.server_id)) {
    refuse(from, m, fmt::format("it names server {}", m.server_id));
  }
  if (phase_ != StepPhase::kApplying) refuse(from, m, "no commit is pending");
  if (m.step != step_) refuse(from, m, fmt::format("it is for step {}", m.step + 1));
  if (!applied_.emplace(m.server_id, m).second) refuse(from, m, "a second report");
  if (applied_.size() == options_.servers.size()) phase_ = StepPhase::kApplied;
}

void StepMachine::advance(std::vector<StepOutgoing>& out) {
  if (phase_ == StepPhase::kGathering) {
    bool any_dropped = false;
    for (const auto& [id, w] : workers_) {
      any_dropped = any_dropped || w.dropped;
      if (w.dropped || w.lost) continue;
      if (!pushed_everywhere(w) || reports_.count(id) == 0) return;
    }
    contributors_ = contributors();
    if (contributors_.empty()) {
      fail(StepFailure::Kind::kNoContributors, {},
           fmt::format("step {}: every worker of the step was lost before its gradient reached "
                       "every server",
                       step_ + 1));
      return;
    }
    if (any_dropped) {
      // Some server may have reduced the whole set already: the reports so far are void, every
      // server reduces the contributors instead.
      norms_.clear();
      for (int32_t s : options_.servers) {
        out.push_back(
            {net::server_endpoint(s), p::StepContributors{step_, epoch_, contributors_}});
      }
    }
    phase_ = StepPhase::kNorms;
  }
  if (phase_ == StepPhase::kNorms) {
    if (norms_.size() < options_.servers.size()) return;
    double sum = 0.0;
    for (const auto& [id, n] : norms_) sum += n.sum_squares;  // server-id order
    global_norm_ = std::sqrt(sum);
    const std::optional<int64_t> bad = first_nonfinite();
    const double l = loss();
    if (bad || !std::isfinite(l)) {
      fail(StepFailure::Kind::kNonFinite, {},
           bad ? fmt::format("step {}: gradient element {} is not finite", step_ + 1, *bad)
               : fmt::format("step {}: the loss is {}", step_ + 1, l));
      return;
    }
    const float coef = clip_coef();
    for (int32_t s : options_.servers) {
      out.push_back({net::server_endpoint(s), p::StepCommit{step_, contributors_, global_norm_,
                                                            coef}});
    }
    phase_ = StepPhase::kApplying;
  }
}

std::vector<StepOutgoing> StepMachine::on_member_lost(const Endpoint& who,
                                                      const std::string& reason) {
  std::vector<StepOutgoing> out;
  if (phase_ == StepPhase::kFailed) return out;
  PTRAIN_ENFORCE(who.role == net::Role::kServer || who.role == net::Role::kWorker,
                 "{} reported lost", who.str());
  if (who.role == net::Role::kServer) {
    fail(StepFailure::Kind::kMemberLost, who,
         fmt::format("{} {}; a lost server stops the job (its shard of the weights is gone)",
                     reason, where()));
    return out;
  }
  if (options_.worker_loss == WorkerLossPolicy::kStopJob) {
    fail(StepFailure::Kind::kMemberLost, who,
         fmt::format("{} {}; a lost worker stops the job", reason, where()));
    return out;
  }
  // kCompleteStep: only the gathering phase can still change the step.
  const auto it = workers_.find(who.id);
  if (phase_ != StepPhase::kGathering || it == workers_.end()) return out;
  WorkerState& w = it->second;
  if (w.dropped || w.lost) return out;
  if (pushed_everywhere(w)) {
    w.lost = true;
  } else {
    w.dropped = true;
    reports_.erase(who.id);
  }
  advance(out);
  return out;
}

std::vector<int32_t> StepMachine::workers() const {
  std::vector<int32_t> out;
  for (const auto& [id, w] : workers_) out.push_back(id);
  return out;
}

std::vector<int32_t> StepMachine::dropped() const {
  std::vector<int32_t> out;
  for (const auto& [id, w] : workers_) {
    if (w.dropped) out.push_back(id);
  }
  return out;
}

std::vector<int32_t> StepMachine::contributors() const {
  if (phase_ != StepPhase::kGathering && !contributors_.empty()) return contributors_;
  std::vector<int32_t> out;
  for (const auto& [id, w] : workers_) {
    if (!w.dropped && pushed_everywhere(w)) out.push_back(id);
  }
  return out;
}

double StepMachine::global_norm() const { return global_norm_; }

float StepMachine::clip_coef() const {
  return static_cast<float>(clip_coefficient(global_norm_, options_.max_norm));
}

std::optional<int64_t> StepMachine::first_nonfinite() const {
  for (const auto& [id, n] : norms_) {
    if (n.first_nonfinite >= 0) return n.first_nonfinite;
  }
  return std::nullopt;
}

double StepMachine::loss() const {
  double loss = 0.0;
  int64_t n = 0;
  for (int32_t id : contributors()) {
    const auto r = reports_.find(id);
    if (r == reports_.end()) continue;
    loss += r->second.loss_sum;
    n += r->second.tokens;
  }
  return n > 0 ? loss / static_cast<double>(n) : 0.0;
}

std::optional<double> StepMachine::accuracy() const {
  int64_t correct = 0, n = 0;
  for (int32_t id : contributors()) {
    const auto r = reports_.find(id);
    if (r == reports_.end() || r->second.correct < 0) continue;
    correct += r->second.correct;
    n += r->second.tokens;
  }
  if (n == 0) return std::nullopt;
  return static_cast<double>(correct) / static_cast<double>(n);
}

int64_t StepMachine::tokens() const {
  int64_t n = 0;
  for (int32_t id : contributors()) {
    const auto r = reports_.find(id);
    n += r != reports_.end() ? r->second.tokens : workers_.at(id).push_tokens;
  }
  return n;
}

double StepMachine::lr() const { return applied_.empty() ? 0.0 : applied_.begin()->second.lr; }

double StepMachine::max_compute_s() const {
  double t = 0.0;
  for (const auto& [id, d] : reports_) t = std::max(t, d.compute_s);
  return t;
}

double StepMachine::max_pull_s() const {
  double t = 0.0;
  for (const auto& [id, d] : reports_) t = std::max(t, d.pull_s);
  return t;
}

}  // namespace ptrain
