// The coordinator's side of one bsp step as a pure state machine: one message in, the messages to
// send out — like the servers' RequestHandler. No I/O, no threads, no clock: coordinator.cpp feeds
// it from the Transport and the Membership, tests feed it directly.
//
// Phases of step t (0-based; the servers hold weights version t):
//   begin_step(t, epoch, work)  → StepWorkers{t, worker ids} to every server, StepBegin{t,
//   windows} to every worker of `work`                                                 kGathering
//   PushReceived (server s has worker w's push), WorkerStepDone (w's loss and times), and
//   NormReport{t, set = every worker of the step} that each server sends on its own once it holds
//   every push. Once every worker pushed to every server and reported            → kNorms
//   NormReport from every server (for the set the step commits) → global norm (fp64, partials
//   summed in server-id order), clip coefficient; a non-finite gradient or loss fails the step
//   (kNonFinite, nothing is sent, the step is not applied); else StepCommit to every server
//                                                                                    kApplying
//   StepApplied from every server                                                     kApplied
// So a step costs one round trip after the last push (servers' norms → StepCommit); the caller
// may begin step t+1 as soon as committed() (a worker's pull of version t+1 waits on the server
// until the update is applied).
// The contributor set is the workers whose push reached EVERY server; every server applies
// exactly that set. While no worker was dropped it is every worker of the step and the servers'
// own reports serve. A worker dropped (below) makes the set smaller: then, once the others pushed
// everywhere and reported, StepContributors goes to every server and only their answers (reports
// for that set) count; a server's own report for the whole set, sent before, is ignored. The
// step's loss is Σ loss_sum / Σ tokens over the contributors' reports, in worker-id order.
// Clipping as torch.nn.utils.clip_grad_norm_ (clip_coefficient below). A NormReport naming none
// of the step's workers is a server's report for an earlier attempt at the same step (begun again
// after every worker was dropped): ignored.
//
// A member lost (on_member_lost):
//   - a server: always fails the step (kMemberLost): its shard of the weights is gone.
//   - a worker, with WorkerLossPolicy::kStopJob (today's job policy): fails the step, naming the
//     worker and the phase, at any time (also between steps).
//   - a worker, with WorkerLossPolicy::kCompleteStep: while gathering, a worker whose push has not
//     reached every server is dropped from the step (not awaited, not a contributor; its push on
//     the servers it reached is simply not named); one whose push reached every server stays a
//     contributor (its report is no longer awaited; without it the loss covers the reports that
//     came). Once every push is in (kNorms), the step completes unchanged. If no contributor is
//     left the step fails (kNoContributors). Between steps: nothing (the next step's work is the
//     caller's, from the membership).
// Messages that break the protocol (another step, a duplicate, a sender that is not the server or
// worker the message names, a type the phase does not expect) throw proto::ProtocolError naming
// the message, the sender, the step and the phase. Late messages about a worker dropped from the
// step are ignored: it may have pushed or reported before it was declared lost.
#pragma once

#include "common/net/transport.hpp"
#include "common/proto/messages.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace ptrain {

// min(1, max_norm / (norm + 1e-6)), or 1 when max_norm <= 0.
double clip_coefficient(double norm, double max_norm);

// A message the machine wants sent (the shape of the servers' Outgoing; its own type because role
// folders do not share headers).
struct StepOutgoing {
  net::Endpoint to;
  proto::Message message;
};

enum class StepPhase { kIdle, kGathering, kNorms, kApplying, kApplied, kFailed };
// "between steps", "gathering pushes and worker reports", "partial gradient norms",
// "servers applying the update", "applied", "failed".
const char* phase_name(StepPhase p);

enum class WorkerLossPolicy {
  kStopJob,       // a lost worker fails the step (and so the job)
  kCompleteStep,  // the step completes with the gradients that reached every server
};

struct StepMachineOptions {
  std::vector<int32_t> servers;  // the job's servers (one per shard); any order, no repeats
  double max_norm = 0.0;         // optim.grad_clip (0 = off)
  WorkerLossPolicy worker_loss = WorkerLossPolicy::kStopJob;
};

// One worker's share of a step: its windows of data.train, in order.
struct WorkerWork {
  int32_t worker_id = 0;
  std::vector<int64_t> windows;
};

struct StepFailure {
  enum class Kind {
    kMemberLost,      // `member` was lost (a server, or a worker under kStopJob)
    kNoContributors,  // every worker of the step was dropped before reaching every server
    kNonFinite,       // a NaN/Inf in the loss or a gradient (first_nonfinite(), loss())
  };
  Kind kind = Kind::kMemberLost;
  StepPhase phase = StepPhase::kIdle;  // the phase it happened in
  net::Endpoint member;                // kMemberLost: who
  std::string message;                 // names the step, the phase and, if any, the member
};

class StepMachine {
 public:
  explicit StepMachine(StepMachineOptions options);

  // Starts step `step`: StepBegin to every worker of `work` (ascending id). Allowed when no step
  // is running (kIdle, kApplied). `work` must be non-empty and name each worker once.
  std::vector<StepOutgoing> begin_step(int64_t step, int64_t membership_epoch,
                                       std::vector<WorkerWork> work);

  // One message from `from`: what to send next (often nothing). Throws proto::ProtocolError for
  // a message that breaks the protocol (see the file comment); InternalError after a failure.
  std::vector<StepOutgoing> handle(const net::Endpoint& from, const proto::Message& message);

  // `who` is gone (`reason` names it and why). Applies the policy above; what it returns is sent
  // (kCompleteStep may complete the gathering: StepContributors). A failure is kept in failure().
  std::vector<StepOutgoing> on_member_lost(const net::Endpoint& who, const std::string& reason);

  StepPhase phase() const { return phase_; }
  bool applied() const { return phase_ == StepPhase::kApplied; }
  // StepCommit sent: the step will be applied unless a server is lost (kApplying, kApplied).
  bool committed() const {
    return phase_ == StepPhase::kApplying || phase_ == StepPhase::kApplied;
  }
  const std::optional<StepFailure>& failure() const { return failure_; }
  int64_t step() const { return step_; }
  int64_t membership_epoch() const { return epoch_; }

  // Workers of the step (ascending), and those dropped from it (lost before their push reached
  // every server; their windows were not trained on).
  std::vector<int32_t> workers() const;
  std::vector<int32_t> dropped() const;
  // Ascending ids of the workers whose push reached every server (and were not dropped): from
  // kNorms on, the set every server applies.
  std::vector<int32_t> contributors() const;

  // From kApplying on: sqrt of the servers' partials summed in server-id order, and the clip
  // coefficient. The first non-finite gradient element reported (flat index; lowest server id).
  double global_norm() const;
  float clip_coef() const;
  std::optional<int64_t> first_nonfinite() const;

  // Loss of the step: Σ loss_sum / Σ tokens over the contributors' reports, in worker-id order.
  double loss() const;
  // Masked-LM accuracy of the step (BERT): Σ correct / Σ tokens over the contributors' reports
  // that carry one (WorkerStepDone::correct ≥ 0), token-weighted like loss(); nullopt when none
  // does (GPT) or they have no tokens.
  std::optional<double> accuracy() const;
  // Target tokens of the contributors (their reports; their pushes for one lost after pushing).
  int64_t tokens() const;
  double lr() const;  // as reported by the lowest server id (0 before any StepApplied)
  double max_compute_s() const;  // slowest reporting worker's phase times (seconds)
  double max_pull_s() const;
  // The reports of this step so far, by worker id / server id.
  const std::map<int32_t, proto::WorkerStepDone>& reports() const { return reports_; }
  const std::map<int32_t, proto::StepApplied>& applied_reports() const { return applied_; }

 private:
  struct WorkerState {
    std::set<int32_t> pushed_to;   // server ids holding its push
    int64_t push_tokens = 0;
    bool lost = false;             // lost after its push reached every server (kCompleteStep)
    bool dropped = false;          // lost before: not a contributor
  };

  void on_push(const net::Endpoint& from, const proto::PushReceived& m,
               std::vector<StepOutgoing>& out);
  void on_done(const net::Endpoint& from, const proto::WorkerStepDone& m,
               std::vector<StepOutgoing>& out);
  void on_norm(const net::Endpoint& from, const proto::NormReport& m,
               std::vector<StepOutgoing>& out);
  void on_applied(const net::Endpoint& from, const proto::StepApplied& m);
  // Advances kGathering → kNorms → kApplying when their condition holds.
  void advance(std::vector<StepOutgoing>& out);
  bool pushed_everywhere(const WorkerState& w) const;
  void fail(StepFailure::Kind kind, net::Endpoint member, std::string message);
  // Throws ProtocolError: "coordinator: unexpected {type} from {from} during step N ({phase}): why"
  [[noreturn]] void refuse(const net::Endpoint& from, const proto::Message& m,
                           const std::string& why) const;
  std::string where() const;  // "step 4 (gathering pushes and worker reports)"
  bool is_server(int32_t id) const;

  StepMachineOptions options_;
  StepPhase phase_ = StepPhase::kIdle;
  std::optional<StepFailure> failure_;
  int64_t step_ = -1;
  int64_t epoch_ = 0;
  std::map<int32_t, WorkerState> workers_;
  std::map<int32_t, proto::WorkerStepDone> reports_;
  std::vector<int32_t> contributors_;  // fixed once every push is in (kNorms)
  std::map<int32_t, proto::NormReport> norms_;
  std::map<int32_t, proto::StepApplied> applied_;
  double global_norm_ = 0.0;
};

}  // namespace ptrain
