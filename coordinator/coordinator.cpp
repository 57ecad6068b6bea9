#include "coordinator/coordinator.hpp"

#include "common/data/val_loss.hpp"
#include "common/error.hpp"
#include "common/io/ledger.hpp"
#include "common/io/sharded_checkpoint.hpp"
#include "common/io/token_file.hpp"
#include "common/proto/codec.hpp"
#include "coordinator/checkpoint_scheduler.hpp"
#include "coordinator/data_plan.hpp"
#include "coordinator/run_log.hpp"
#include "coordinator/start_state.hpp"
#include "status/status_page.hpp"
#include "status/status_service.hpp"
#include "coordinator/step_machine.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <utility>

namespace ptrain {

std::string describe_element(const ParamLayout& layout, int64_t i) {
  for (const auto& t : layout.tensors()) {
    if (i >= t.offset && i < t.offset + t.count) {
      int64_t rem = i - t.offset;
      std::vector<int64_t> idx(t.shape.size());
      for (size_t d = t.shape.size(); d-- > 0;) {
        idx[d] = rem % t.shape[d];
        rem /= t.shape[d];
      }
      std::string s = t.name + "[";
      for (size_t d = 0; d < idx.size(); ++d) s += fmt::format("{}{}", d ? ", " : "", idx[d]);
      return s + "]";
    }
  }
  return fmt::format("flat element {} (outside the layout)", i);
}

namespace {

using Clock = std::chrono::steady_clock;

// How often a wait for a message looks at the membership (a loss must not wait for the timeout).
constexpr std::chrono::milliseconds kMembershipPoll{50};

// The coordinator's run, as a small object wiring the pieces together for one job.
class CoordinatorRun {
 public:
  CoordinatorRun(const CoordinatorOptions& o, const ParamLayout& layout, net::Transport& t,
                 net::Membership& membership)
      : o_(o),
        cfg_(o.config),
        layout_(layout),
        transport_(t),
        membership_(membership),
        num_servers_(static_cast<int64_t>(o.server_ranges.size())),
        steps_(cfg_.train.steps),
        scheduler_(cfg_.checkpoint.every_steps, cfg_.train.steps,
                   cfg_.checkpoint.every_minutes),
        machine_(step_machine_options()),
        leased_(is_async_sync(cfg_.cluster.sync)) {}

  RunSummary run();

 private:
  StepMachineOptions step_machine_options() const;
  net::Envelope next(const std::string& waiting_for);
  std::optional<net::Envelope> poll(Clock::time_point wake);
  bool stale(const net::Envelope& env, int64_t t);
  void apply_membership_events(std::vector<net::MembershipEvent> events);
  void apply_all_membership_events();
  void record_event(const std::string& kind, const net::Endpoint& who, const std::string& text);
  void set_waiting(const std::string& text);
  void send(std::vector<StepOutgoing> out);
  [[noreturn]] void throw_step_failure(const StepMachine& machine);
  void start_servers(const StartState& st);
  // cluster.sync local, resuming: the checkpoint's inner optimizer states to the workers, slot r
  // to the worker at position r (the order that splits the windows).
  void load_inner_states(const StartState& st);
  bool wait_for_workers(int64_t t);
  bool run_step(int64_t t);
  // Step t's work for the workers taking part now (their windows kept in `windows`).
  std::vector<WorkerWork> plan_step(std::map<int32_t, std::vector<DataWindow>>& windows);
  // Step t is committed: begins step t+1 now when nothing has to happen at the boundary between
  // them (no evaluation, checkpoint or stop due, enough workers).
  void maybe_begin_next(int64_t t);
  bool next_can_begin_early(int64_t t);
  // Step t is committed (its contributors are final): the windows of its other workers go back to
  // the pool now, before the next step takes any, and leave step_windows_.
  void give_back_windows_of_dropped(int64_t t);
  // A message of the step begun early (next_): handled by its machine.
  bool route_to_next(const net::Envelope& env);
  void drop_late_workers(int64_t t);
  void check_finite(const StepMachine& machine);
  void log_step(int64_t step);
  uint64_t data_plane_bytes() const;
  void evaluate(int64_t step);
  void checkpoint(int64_t step);
  void broadcast_shutdown(const std::string& reason);
  // cluster.sync ssp and async (leased_): grants a lease to every worker without one that the
  // staleness bound lets compute (and while train.steps needs more pushes).
  void grant_leases();
  void on_push_ready(const net::Endpoint& from, const proto::PushReady& r);
  // `worker` is lost or gone: its lease, unless begun as a step, goes back to the pool.
  void forget_lease(int32_t worker);
  // Waits until a worker's lease is computed (the next step's push); false when a stop was
  // requested meanwhile.
  bool wait_for_ready_lease(int64_t t);
  // Before the workers are told to stop: the leases they are computing are let finish (bounded
  // by the peer timeout), so none is stopped halfway through a send.
  void drain_leases();
  int64_t slowest_clock() const;
  void init_status();
  void update_status(int64_t step, double step_s);
  // The last step's phases: the workers' pull, compute and push averaged over the workers that
  // reported it, and the coordinator's wait (last_wait_s_).
  StepSeconds step_phases() const;
  void status_event(const std::string& text);
  void write_report(bool finished);
  std::vector<MemberStatus> status_members(int64_t step) const;

  const CoordinatorOptions& o_;
  const Config& cfg_;
  const ParamLayout& layout_;
  net::Transport& transport_;
  net::Membership& membership_;
  int64_t num_servers_;
  int64_t steps_;
  CheckpointScheduler scheduler_;
  // The step logic and the one place where a lost member's consequence is decided.
  StepMachine machine_;
  // Membership changes drained while a message may still be queued (see next()).
  std::vector<net::MembershipEvent> pending_events_;
  // Members a send failed to reach, reported lost by poll() once the queue is read (see send()).
  std::map<net::Endpoint, std::string> unreachable_;
  // Why each worker lost or gone left the job (its membership event's reason), for the errors of
  // the waits that needed it.
  std::map<int32_t, std::string> gone_why_;
  std::optional<DataPlan> plan_;
  std::optional<RunLog> log_;
  std::optional<LedgerWriter> ledger_;
  // Workers taking part (welcomed; not lost or gone), and each one's windows of the running step.
  std::set<int32_t> active_;
  // Workers dropped from a step for missing its deadline that have not reported it yet: still
  // busy with it, so they get no new step until their (ignored) report arrives.
  std::set<int32_t> busy_;
  std::vector<int32_t> ready_workers() const;
  std::map<int32_t, std::vector<DataWindow>> step_windows_;
  // Step t+1 begun as soon as step t was committed (its StepBegin and StepWorkers are out); it
  // becomes machine_ once step t is applied. Its messages go to its own machine meanwhile.
  struct BegunStep {
    StepMachine machine;
    std::map<int32_t, std::vector<DataWindow>> windows;
    std::map<int32_t, Clock::time_point> done_at;
    Clock::time_point start;
  };
  std::optional<BegunStep> next_;
  // When the running step's successor was begun (the end of its workers' wait), if it was.
  std::optional<Clock::time_point> next_begun_at_;
  // A checkpoint or stop that came due (by time, or asked) while the next step was already
  // begun: taken at the next boundary, and no step is begun early until then.
  bool deferred_checkpoint_ = false;
  Clock::time_point last_checkpoint_at_;
  int64_t last_checkpoint_step_ = -1;
  int64_t val_windows_ = 0;  // windows of data.val per evaluation (0: no data.val)
  uint64_t next_request_ = 1;

  RunSummary summary_;
  Clock::time_point t_start_;
  Clock::time_point t_last_log_;
  int64_t tokens_at_last_log_ = 0;
  int64_t tokens_at_start_ = 0;
  int64_t last_step_tokens_ = 0;
  // Since the previous train.jsonl line: the steps' losses and times, and the data-plane bytes.
  double interval_loss_sum_ = 0.0;
  double interval_accuracy_sum_ = 0.0;  // masked-LM accuracy (BERT), over the steps that have one
  int64_t interval_accuracy_steps_ = 0;
  double interval_step_s_sum_ = 0.0;
  StepSeconds interval_phase_sum_;
  int64_t interval_steps_ = 0;
  uint64_t bytes_at_last_status_ = 0;  // data_plane_bytes() at the previous step's status
  uint64_t bytes_at_last_log_ = 0;  // and tokens: the span of bytes_per_token (evaluations included)
  int64_t tokens_at_last_line_ = 0;
  double elapsed_before_ = 0.0;  // training time of earlier attempts (train.jsonl, on resume)

  // For the status endpoint: the last message from each member, the workers' and servers' last
  // reports (by id), and when each report of the last step arrived (its push was done then).
  std::map<net::Endpoint, Clock::time_point> last_seen_;
  std::map<int32_t, proto::WorkerStepDone> worker_done_;
  std::map<int32_t, Clock::time_point> worker_done_at_;
  std::map<int32_t, proto::StepApplied> server_applied_;
  double last_wait_s_ = 0.0;
  Clock::time_point last_applied_at_;  // when the last step was applied everywhere

  // cluster.sync ssp and async (docs/sync_modes.md): every step is one worker's push. A worker
  // computes on a lease granted ahead of its step; the step begins (its turn to push) once the
  // lease is computed, in the order the leases finished.
  const bool leased_;
  struct Lease {
    uint64_t id = 0;
    std::vector<DataWindow> windows;
    int64_t min_version = 0;    // the weights version it must be computed from, or newer
    int64_t ahead = 0;          // pushes its worker was ahead of the slowest when it was granted
    int64_t base_version = -1;  // the version it was computed from (PushReady); -1: computing
  };
  std::map<int32_t, Lease> leases_;    // granted and not begun as a step, by worker
  std::deque<int32_t> ready_;          // workers whose lease is computed, oldest first
  std::map<int32_t, Lease> in_step_;   // begun as a step that is not applied yet, by worker
  std::map<int32_t, int64_t> clocks_;  // pushes applied, per worker taking part
  uint64_t next_lease_ = 0;
  int64_t staleness_max_ = -1;         // over this run's applied pushes
  double staleness_sum_ = 0.0;
  int64_t staleness_count_ = 0;
};

StepMachineOptions CoordinatorRun::step_machine_options() const {
  StepMachineOptions so;
  for (const net::Endpoint& e : membership_.servers()) so.servers.push_back(e.id);
  std::vector<int32_t> shards(static_cast<size_t>(num_servers_));
  for (size_t k = 0; k < shards.size(); ++k) shards[k] = static_cast<int32_t>(k);
  if (so.servers != shards) {
    throw ConfigError(fmt::format("the membership has {} server(s), the job's parameters are cut "
                                  "into {} shard(s) (cluster.servers): server k must own shard k",
                                  so.servers.size(), num_servers_));
  }
  // cluster.sync local: the workers clip their inner steps; a pseudo-gradient is never clipped.
  so.max_norm = cfg_.cluster.sync == SyncMode::kLocal ? 0.0 : cfg_.optim.grad_clip;
  // Elastic: a lost worker costs its share of the step, not the job.
  so.worker_loss = WorkerLossPolicy::kCompleteStep;
  return so;
}

// One message for the caller, or nullopt once membership changes were applied (the caller
// re-checks what it waits for) or `wake` passed. Joins are read from the membership, not from
// their Register frames; a worker's Shutdown is its goodbye (it leaves); a worker's Failure makes
// it lost (its reason in the event), a server's stops the job.
std::optional<net::Envelope> CoordinatorRun::poll(Clock::time_point wake) {
  for (;;) {
    // A member's last words (a Failure, with its own exit code and reason) reach the queue before
    // its connection is seen dropped: membership changes are applied only after a look at the
    // queue found nothing.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(wake - Clock::now());
    const std::chrono::milliseconds wait =
        pending_events_.empty()
            ? std::clamp(left, std::chrono::milliseconds(1), kMembershipPoll)
            : std::chrono::milliseconds(1);
    std::optional<net::Envelope> env = transport_.receive(wait);
    if (env) {
      last_seen_[env->from] = Clock::now();
      const bool worker = env->from.role == net::Role::kWorker;
      if (auto* f = std::get_if<proto::Failure>(&env->message)) {
        if (!worker) {
          throw Error(proto::failure_code(*f),
                      fmt::format("{} failed: {}", env->from.str(), f->message));
        }
        membership_.report_lost(env->from,
                                fmt::format("{} failed: {}", env->from.str(), f->message));
        continue;
      }
      if (std::holds_alternative<proto::Register>(env->message)) continue;
      // ssp/async: a computed lease joins the queue of pushes, whatever the caller waits for.
      if (const auto* r = std::get_if<proto::PushReady>(&env->message)) {
        on_push_ready(env->from, *r);
        continue;
      }
      if (worker && std::holds_alternative<proto::Shutdown>(env->message)) {
        membership_.report_left(
            env->from, fmt::format("{} left ({})", env->from.str(),
                                   std::get<proto::Shutdown>(env->message).reason));
        continue;
      }
      return env;
    }
    if (!pending_events_.empty()) {
      apply_membership_events(std::exchange(pending_events_, {}));
      return std::nullopt;
    }
    // The queue is read: a member we could not send to and that did not say goodbye is lost.
    for (const auto& [who, why] : std::exchange(unreachable_, {})) {
      membership_.report_lost(who, why);
    }
    pending_events_ = membership_.take_events();
    if (pending_events_.empty() && Clock::now() >= wake) return std::nullopt;
  }
}

net::Envelope CoordinatorRun::next(const std::string& waiting_for) {
  const auto deadline = Clock::now() + o_.timeout;
  for (;;) {
    if (std::optional<net::Envelope> env = poll(deadline)) return std::move(*env);
    if (Clock::now() >= deadline) {
      throw Error(ExitCode::kIo,
                  fmt::format("coordinator: nothing arrived within {} s while waiting for {}",
                              std::chrono::duration_cast<std::chrono::seconds>(o_.timeout).count(),
                              waiting_for));
    }
  }
}

// A worker's report or push about a step before `t`: it was dropped from that step (late, or
// stopped and woken up); what it sends now changes nothing.
// The same for a worker that has no part in the running step (dropped from an earlier attempt
// at it, or between steps).
bool CoordinatorRun::stale(const net::Envelope& env, int64_t t) {
  const auto windows_of = [&](int64_t step) -> const std::map<int32_t, std::vector<DataWindow>>& {
    return next_ && next_->machine.step() == step ? next_->windows : step_windows_;
  };
  if (const auto* d = std::get_if<proto::WorkerStepDone>(&env.message)) {
    // A straggler's report of the step it was dropped from (busy workers get no new step): it
    // is free for the next one.
    if (busy_.erase(d->worker_id) != 0) {
      spdlog::info("worker {} finished step {} late; it takes part again from the next step",
                   d->worker_id, d->step + 1);
      return true;
    }
    return d->step < t || windows_of(d->step).count(d->worker_id) == 0;
  }
  if (const auto* p = std::get_if<proto::PushReceived>(&env.message)) {
    return p->step < t || windows_of(p->step).count(p->worker_id) == 0;
  }
  return false;
}

void CoordinatorRun::record_event(const std::string& kind, const net::Endpoint& who,
                                  const std::string& text) {
  const char* role = who.role == net::Role::kServer ? "server"
                     : who.role == net::Role::kWorker ? "worker"
                                                      : "coordinator";
  if (ledger_) ledger_->event(kind, role, who.id, summary_.final_step);
  if (o_.status == nullptr) return;
  const int64_t step = summary_.final_step;
  const double now = std::chrono::duration<double>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  o_.status->update([&](JobStatus& s) {
    s.membership_changes[kind]++;
    s.membership_events.push_back({kind, role, who.id, step, now, text});
    if (s.membership_events.size() > 100) s.membership_events.erase(s.membership_events.begin());
    add_status_event(s, text);  // the page's list of recent events shows it too
  });
}

void CoordinatorRun::set_waiting(const std::string& text) {
  if (o_.status == nullptr) return;
  o_.status->update([&](JobStatus& s) { s.waiting = text; });
}

void CoordinatorRun::apply_membership_events(std::vector<net::MembershipEvent> events) {
  for (const net::MembershipEvent& ev : events) {
    const net::Endpoint& who = ev.member.endpoint;
    const bool worker = who.role == net::Role::kWorker;
    if (ev.change == net::MembershipChange::kJoined) {
      // It takes part from the next step boundary on (run_step reads active_ there).
      if (worker && o_.welcome) o_.welcome(ev.member);
      // ssp: a newcomer starts level with the slowest, so it neither stalls nor outruns anyone.
      if (worker && leased_) clocks_[who.id] = slowest_clock();
      if (worker) active_.insert(who.id);
      const std::string text = fmt::format("{} joined (membership epoch {}); it takes part from "
                                           "step {}",
                                           ev.member.label(), ev.epoch, summary_.final_step + 1);
      spdlog::info("{}", text);
      record_event("join", who, text);
      continue;
    }
    const bool left = ev.change == net::MembershipChange::kLeft;
    if (worker) gone_why_[who.id] = ev.reason;
    if (worker) active_.erase(who.id);
    if (worker) busy_.erase(who.id);
    if (worker && leased_) forget_lease(who.id);
    const std::string text =
        fmt::format("{}; membership epoch {}{}", ev.reason, ev.epoch,
                    worker ? fmt::format(", {} worker(s) left in the job", active_.size()) : "");
    if (left) {
      spdlog::info("{}", text);
    } else {
      spdlog::warn("{}", text);
    }
    record_event(left ? "leave" : "lost", who, text);
    send(machine_.on_member_lost(who, ev.reason));
    if (next_) send(next_->machine.on_member_lost(who, ev.reason));
    // No contributor left is the step's to handle (run_step begins it again); the rest stop.
    for (const StepMachine* m : {&machine_, next_ ? &next_->machine : nullptr}) {
      if (m != nullptr && m->failure() &&
          m->failure()->kind != StepFailure::Kind::kNoContributors) {
        throw_step_failure(*m);
      }
    }
  }
}

// Before the members are read for new work: the membership already reflects every change the
// network thread recorded, so its events must be applied now — not left to next(), which applies
// them only once the queue is idle, while a step that reads the members would silently run
// without a lost worker.
void CoordinatorRun::apply_all_membership_events() {
  std::vector<net::MembershipEvent> events = std::exchange(pending_events_, {});
  for (net::MembershipEvent& ev : membership_.take_events()) events.push_back(std::move(ev));
  if (!events.empty()) apply_membership_events(std::move(events));
}

void CoordinatorRun::send(std::vector<StepOutgoing> out) {
  for (StepOutgoing& o : out) {
    try {
      transport_.send(o.to, o.message);
    } catch (const net::PeerLost& e) {
      // Unreachable: a loss like any other, reported by poll() once the queue is read — a worker
      // that left closes its connection right after its goodbye, which may still wait in the
      // queue: reported now, its leave would be recorded as a loss.
      unreachable_.emplace(o.to, e.what());
    }
  }
}

void CoordinatorRun::throw_step_failure(const StepMachine& machine) {
  const StepFailure& f = *machine.failure();
  if (f.kind == StepFailure::Kind::kNonFinite) check_finite(machine);
  throw net::PeerLost(fmt::format("{}; the last complete checkpoint stays `latest`", f.message));
}

// Each server initialises (fresh: from run.seed) or reads (resume: its slice of the checkpoint)
// its own range; only the seed or the file's path travels. Returns once every server has it.
void CoordinatorRun::start_servers(const StartState& st) {
  const auto t0 = Clock::now();
  for (int64_t k = 0; k < num_servers_; ++k) {
    proto::LoadShard m;
    m.version = st.step;
    m.membership_epoch = membership_.epoch();
    m.range = o_.server_ranges[static_cast<size_t>(k)];
    m.seed = cfg_.run.seed;
    m.checkpoint = st.resumed_from;
    transport_.send(net::server_endpoint(static_cast<int32_t>(k)), m);
  }
  std::vector<bool> have(static_cast<size_t>(num_servers_), false);
  double slowest_s = 0.0;
  const std::string what = st.resumed_from.empty()
                               ? std::string("servers initialising their shards")
                               : fmt::format("servers reading their shards of {}", st.resumed_from);
  for (int64_t done = 0; done < num_servers_; ++done) {
    net::Envelope env = next(what);
    auto* m = std::get_if<proto::ShardLoaded>(&env.message);
    if (m == nullptr || m->server_id < 0 || m->server_id >= num_servers_ ||
        have[static_cast<size_t>(m->server_id)] ||
        env.from != net::server_endpoint(m->server_id) || m->version != st.step ||
        m->range != o_.server_ranges[static_cast<size_t>(m->server_id)]) {
      throw proto::ProtocolError(fmt::format("coordinator: unexpected {} from {} while {}",
                                             proto::type_name(proto::type_of(env.message)),
                                             env.from.str(), what));
    }
    have[static_cast<size_t>(m->server_id)] = true;
    slowest_s = std::max(slowest_s, m->load_s);
  }
  spdlog::info("{} server(s) {} at step {} (slowest {:.3f} s, {:.3f} s in all)", num_servers_,
               st.resumed_from.empty() ? "initialised" : "loaded their shards", st.step,
               slowest_s, std::chrono::duration<double>(Clock::now() - t0).count());
}

void CoordinatorRun::load_inner_states(const StartState& st) {
  const std::vector<int64_t>& slots = st.inner_state_slots;
  const std::vector<int32_t> workers = ready_workers();
  const size_t n = std::min(workers.size(), slots.size());
  if (slots.size() > workers.size()) {
    spdlog::warn("{}: {} worker inner optimizer state(s) saved, {} worker(s) in this job: the "
                 "state(s) of slot(s) {} are not used",
                 st.resumed_from, slots.size(), workers.size(),
                 fmt::join(std::vector<int64_t>(slots.begin() + static_cast<std::ptrdiff_t>(n),
                                                slots.end()),
                           ", "));
  }
  if (workers.size() > slots.size()) {
    spdlog::info("{}: {} worker inner optimizer state(s) saved, {} worker(s) in this job: "
                 "worker(s) {} start theirs at zero",
                 st.resumed_from, slots.size(), workers.size(),
                 fmt::join(std::vector<int32_t>(workers.begin() + static_cast<std::ptrdiff_t>(n),
                                                workers.end()),
                           ", "));
  }
  if (n == 0) return;
  const auto t0 = Clock::now();
  const uint64_t id = next_request_++;
  std::map<int32_t, int64_t> pending;  // worker id → slot
  std::vector<StepOutgoing> out;
  for (size_t r = 0; r < n; ++r) {
    pending[workers[r]] = slots[r];
    out.push_back({net::worker_endpoint(workers[r]),
                   proto::InnerStateLoad{id, st.step, slots[r], st.resumed_from}});
  }
  send(std::move(out));
  const auto deadline = Clock::now() + o_.timeout;
  double slowest_s = 0.0;
  while (!pending.empty()) {
    // A worker that cannot take its state would leave the resume without it: refused.
    for (const auto& [w, slot] : pending) {
      if (active_.count(w) != 0) continue;
      const auto why = gone_why_.find(w);
      throw Error(ExitCode::kCheckpoint,
                  fmt::format("resume from {}: worker {} did not take the inner optimizer state "
                              "of slot {} ({})",
                              st.resumed_from, w, slot,
                              why != gone_why_.end() ? why->second : std::string("it is gone")));
    }
    std::optional<net::Envelope> got = poll(deadline);
    if (!got) {
      if (Clock::now() < deadline) continue;
      throw Error(ExitCode::kIo,
                  fmt::format("coordinator: nothing arrived within {} s while {} worker(s) read "
                              "their inner optimizer states from {}",
                              std::chrono::duration_cast<std::chrono::seconds>(o_.timeout).count(),
                              pending.size(), st.resumed_from));
    }
    auto* d = std::get_if<proto::InnerStateDone>(&got->message);
    const auto it = d != nullptr ? pending.find(d->worker_id) : pending.end();
    if (d == nullptr || d->request_id != id || d->version != st.step || it == pending.end() ||
        it->second != d->slot || got->from != net::worker_endpoint(d->worker_id)) {
      throw proto::ProtocolError(fmt::format(
          "coordinator: unexpected {} from {} while the workers read their inner optimizer "
          "states",
          proto::type_name(proto::type_of(got->message)), got->from.str()));
    }
    slowest_s = std::max(slowest_s, d->seconds);
    pending.erase(it);
  }
  spdlog::info("{} worker(s) took their inner optimizer states from {} (slowest {:.3f} s, {:.3f} "
               "s in all)",
               n, st.resumed_from, slowest_s,
               std::chrono::duration<double>(Clock::now() - t0).count());
}

std::vector<int32_t> CoordinatorRun::ready_workers() const {
  std::vector<int32_t> out;
  for (int32_t id : active_) {
    if (busy_.count(id) == 0) out.push_back(id);
  }
  return out;
}

// Below cluster.min_workers the job waits for workers to join, saying so; after
// cluster.wait_timeout_s it writes a checkpoint and stops. Returns false when a stop was
// requested while waiting (the caller checkpoints and stops).
bool CoordinatorRun::wait_for_workers(int64_t t) {
  apply_all_membership_events();
  const int64_t need = cfg_.cluster.min_workers;
  if (static_cast<int64_t>(ready_workers().size()) >= need) return true;
  const auto t0 = Clock::now();
  const auto give_up = t0 + std::chrono::milliseconds(
                                static_cast<int64_t>(cfg_.cluster.wait_timeout_s * 1000));
  auto say = [&] {
    const std::string text = fmt::format(
        "step {}/{} | waiting for workers: {} of cluster.min_workers {} (for {:.0f} s; a "
        "checkpoint and stop after cluster.wait_timeout_s {} s)",
        t + 1, steps_, ready_workers().size(), need,
        std::chrono::duration<double>(Clock::now() - t0).count(), cfg_.cluster.wait_timeout_s);
    spdlog::warn("{}", text);
    set_waiting(text);
  };
  say();
  auto said = Clock::now();
  while (static_cast<int64_t>(ready_workers().size()) < need) {
    if (o_.stop_requested && o_.stop_requested(summary_.final_step)) {
      set_waiting("");
      return false;
    }
    if (Clock::now() >= give_up) {
      if (last_checkpoint_step_ != summary_.final_step) checkpoint(summary_.final_step);
      set_waiting("");
      throw Error(ExitCode::kIo,
                  fmt::format("stopped at step {}: {} worker(s), fewer than cluster.min_workers "
                              "({}), for cluster.wait_timeout_s ({} s); the checkpoint {} "
                              "resumes it",
                              summary_.final_step, active_.size(), need,
                              cfg_.cluster.wait_timeout_s, summary_.last_checkpoint));
    }
    if (std::optional<net::Envelope> env =
            poll(std::min(give_up, Clock::now() + std::chrono::milliseconds(500)))) {
      if (!stale(*env, t)) send(machine_.handle(env->from, env->message));
    }
    if (Clock::now() - said > std::chrono::seconds(10)) {
      say();
      said = Clock::now();
    }
  }
  set_waiting("");
  spdlog::info("step {}/{}: {} worker(s), the job goes on", t + 1, steps_,
               ready_workers().size());
  return true;
}

// cluster.step_deadline_s passed: the workers whose push has not reached every server are
// dropped from the step (they stay members); their windows go back to the pool.
void CoordinatorRun::drop_late_workers(int64_t t) {
  const std::vector<int32_t> contributors = machine_.contributors();
  const std::vector<int32_t> dropped = machine_.dropped();
  for (int32_t id : machine_.workers()) {
    if (std::binary_search(contributors.begin(), contributors.end(), id) ||
        std::binary_search(dropped.begin(), dropped.end(), id)) {
      continue;
    }
    const std::string why = fmt::format(
        "worker {} missed the deadline of step {} (cluster.step_deadline_s {} s); its windows go "
        "back to the pool",
        id, t + 1, cfg_.cluster.step_deadline_s);
    spdlog::warn("{}", why);
    busy_.insert(id);
    send(machine_.on_member_lost(net::worker_endpoint(id), why));
  }
}

std::vector<WorkerWork> CoordinatorRun::plan_step(
    std::map<int32_t, std::vector<DataWindow>>& step_windows) {
  const int64_t B = cfg_.train.batch_size;
  if (leased_) {
    // ssp/async: the step is the push of the oldest computed lease, its windows the lease's.
    PTRAIN_ENFORCE(!ready_.empty(), "a step planned with no computed lease");
    const int32_t w = ready_.front();
    ready_.pop_front();
    auto node = leases_.extract(w);
    PTRAIN_ENFORCE(!node.empty(), "worker {} is ready without a lease", w);
    WorkerWork work{w, {}};
    for (const DataWindow& d : node.mapped().windows) work.windows.push_back(d.window);
    step_windows.clear();
    step_windows[w] = node.mapped().windows;
    in_step_.insert(std::move(node));
    return {std::move(work)};
  }
  // The step boundary: the workers taking part now (a member that joined since the last step
  // is in, one lost or gone is out), in worker-id order; at most B (one window each).
  std::vector<int32_t> workers = ready_workers();
  if (static_cast<int64_t>(workers.size()) > B) workers.resize(static_cast<size_t>(B));
  // cluster.sync local: H inner steps' worth of windows, each block of B split as bsp splits a
  // step, a worker's blocks concatenated in inner-step order (worker/local_steps.hpp).
  const int64_t H = local_steps_per_step(cfg_);
  const std::vector<DataWindow> windows = plan_->take(H * B);
  const auto split = split_batch(B, static_cast<int64_t>(workers.size()));
  std::vector<WorkerWork> work;
  step_windows.clear();
  for (size_t i = 0; i < workers.size(); ++i) {
    const auto [b, e] = split[i];
    std::vector<DataWindow> mine;
    for (int64_t h = 0; h < H; ++h) {
      mine.insert(mine.end(), windows.begin() + h * B + b, windows.begin() + h * B + e);
    }
    WorkerWork w{workers[i], {}};
    for (const DataWindow& d : mine) w.windows.push_back(d.window);
    step_windows[workers[i]] = std::move(mine);
    work.push_back(std::move(w));
  }
  return work;
}

// Whether the boundary after step t (t+1 steps applied) can be crossed before step t is
// applied: nothing that needs the servers at version t+1 with no step running happens there.
// A checkpoint that comes due by time (or a stop asked by a signal) after this check is taken at
// the following boundary instead (deferred_checkpoint_).
bool CoordinatorRun::next_can_begin_early(int64_t t) {
  const int64_t step = t + 1;
  if (step >= steps_ || deferred_checkpoint_) return false;
  if (!cfg_.data.val.empty() && cfg_.train.eval_every > 0 && step % cfg_.train.eval_every == 0) {
    return false;
  }
  const double minutes =
      std::chrono::duration<double>(Clock::now() - last_checkpoint_at_).count() / 60.0;
  if (scheduler_.due(step, minutes)) return false;
  if (o_.stop_requested && o_.stop_requested(step)) return false;
  apply_all_membership_events();
  if (leased_) {
    grant_leases();
    if (ready_.empty()) return false;
  }
  const auto ready = static_cast<int64_t>(ready_workers().size());
  return ready >= std::max<int64_t>(1, cfg_.cluster.min_workers);
}

void CoordinatorRun::give_back_windows_of_dropped(int64_t t) {
  const std::vector<int32_t> contributors = machine_.contributors();
  std::vector<DataWindow> back;
  std::vector<int32_t> missing;
  size_t kept = 0;
  for (auto it = step_windows_.begin(); it != step_windows_.end();) {
    if (std::binary_search(contributors.begin(), contributors.end(), it->first)) {
      kept += it->second.size();
      ++it;
      continue;
    }
    back.insert(back.end(), it->second.begin(), it->second.end());
    missing.push_back(it->first);
    in_step_.erase(it->first);
    it = step_windows_.erase(it);
  }
  if (back.empty()) return;
  plan_->give_back(back);
  spdlog::warn("step {} applies {} of {} windows (without worker(s) {}); {} window(s) go back to "
               "the pool",
               t + 1, kept, kept + back.size(), fmt::join(missing, ", "), back.size());
}

int64_t CoordinatorRun::slowest_clock() const {
  int64_t slowest = std::numeric_limits<int64_t>::max();
  for (const auto& [w, c] : clocks_) slowest = std::min(slowest, c);
  return clocks_.empty() ? 0 : slowest;
}

void CoordinatorRun::grant_leases() {
  if (!leased_) return;
  const bool bounded = cfg_.cluster.sync == SyncMode::kSsp;
  const int64_t slowest = slowest_clock();
  for (int32_t w : ready_workers()) {
    if (leases_.count(w) != 0 || in_step_.count(w) != 0) continue;
    // No more work handed out than train.steps still needs (a stop leaves the rest unused).
    const auto outstanding = static_cast<int64_t>(leases_.size() + in_step_.size());
    if (summary_.final_step + outstanding >= steps_) return;
    const int64_t ahead = clocks_[w] - slowest;
    if (bounded && ahead > cfg_.cluster.staleness) continue;  // waits for the slowest
    Lease l;
    l.id = next_lease_++;
    l.windows = plan_->take(cfg_.train.batch_size);
    l.min_version = summary_.final_step;  // its own last push is applied: it reads its writes
    l.ahead = ahead;
    proto::LeaseGrant grant{l.id, membership_.epoch(), l.min_version, {}};
    for (const DataWindow& d : l.windows) grant.windows.push_back(d.window);
    leases_.emplace(w, std::move(l));
    send({{net::worker_endpoint(w), std::move(grant)}});
  }
}

void CoordinatorRun::on_push_ready(const net::Endpoint& from, const proto::PushReady& r) {
  auto refuse = [&](const std::string& why) {
    throw proto::ProtocolError(fmt::format("coordinator: unexpected PushReady for lease {} from "
                                           "{}: {}",
                                           r.lease_id, from.str(), why));
  };
  if (!leased_) {
    refuse(fmt::format("cluster.sync is {}, not ssp or async", sync_mode_name(cfg_.cluster.sync)));
  }
  if (from != net::worker_endpoint(r.worker_id)) refuse(fmt::format("it names worker {}", r.worker_id));
  // Lost or gone meanwhile (its windows went back to the pool): what it computed is not used.
  if (active_.count(r.worker_id) == 0) return;
  const auto it = leases_.find(r.worker_id);
  if (it == leases_.end() || it->second.id != r.lease_id) {
    refuse("that is not the lease the worker holds");
  }
  Lease& l = it->second;
  if (l.base_version >= 0) refuse("a second PushReady for it");
  // The servers are at most the steps begun and not yet counted ahead of the applied count.
  const int64_t newest = summary_.final_step + static_cast<int64_t>(in_step_.size());
  if (r.base_version < l.min_version || r.base_version > newest) {
    refuse(fmt::format("computed from weights version {}; the lease asked for {} or newer and "
                       "the servers hold at most {}",
                       r.base_version, l.min_version, newest));
  }
  l.base_version = r.base_version;
  ready_.push_back(r.worker_id);
}

void CoordinatorRun::forget_lease(int32_t worker) {
  clocks_.erase(worker);
  ready_.erase(std::remove(ready_.begin(), ready_.end(), worker), ready_.end());
  const auto it = leases_.find(worker);
  if (it == leases_.end()) return;  // none, or begun as a step: the step decides (run_step)
  spdlog::warn("worker {}'s lease {} ({} window(s)) goes back to the pool", worker, it->second.id,
               it->second.windows.size());
  plan_->give_back(it->second.windows);
  leases_.erase(it);
}

bool CoordinatorRun::wait_for_ready_lease(int64_t t) {
  auto quiet_since = Clock::now();
  for (;;) {
    apply_all_membership_events();
    grant_leases();
    if (!ready_.empty()) return true;
    if (static_cast<int64_t>(ready_workers().size()) < cfg_.cluster.min_workers) {
      if (!wait_for_workers(t)) return false;
      continue;
    }
    if (o_.stop_requested && o_.stop_requested(summary_.final_step)) return false;
    if (Clock::now() - quiet_since >= o_.timeout) {
      throw Error(ExitCode::kIo,
                  fmt::format("coordinator: no worker finished its lease within {} s before "
                              "step {} ({} lease(s) out)",
                              std::chrono::duration_cast<std::chrono::seconds>(o_.timeout).count(),
                              t + 1, leases_.size()));
    }
    if (std::optional<net::Envelope> env =
            poll(std::min(quiet_since + o_.timeout, Clock::now() + std::chrono::milliseconds(500)))) {
      quiet_since = Clock::now();
      if (!stale(*env, t)) send(machine_.handle(env->from, env->message));
    }
  }
}

void CoordinatorRun::drain_leases() {
  if (!leased_) return;
  // Bounded well below the peer timeout: a worker that does not finish is told to stop anyway.
  const auto give_up = Clock::now() + std::min<Clock::duration>(o_.timeout, std::chrono::seconds(10));
  auto computing = [&] {
    int64_t n = 0;
    for (const auto& [w, l] : leases_) n += l.base_version < 0 && active_.count(w) != 0 ? 1 : 0;
    return n;
  };
  while (computing() > 0 && Clock::now() < give_up) {
    if (std::optional<net::Envelope> env = poll(give_up)) {
      spdlog::debug("coordinator: {} from {} ignored while the last leases finish",
                    proto::type_name(proto::type_of(env->message)), env->from.str());
    }
  }
  if (computing() > 0) {
    spdlog::warn("{} lease(s) still computing after 10 s; their workers are told to stop anyway",
                 computing());
  }
}

void CoordinatorRun::maybe_begin_next(int64_t t) {
  if (next_ || !machine_.committed() || !next_can_begin_early(t)) return;
  give_back_windows_of_dropped(t);
  std::map<int32_t, std::vector<DataWindow>> windows;
  std::vector<WorkerWork> work = plan_step(windows);
  next_.emplace(BegunStep{StepMachine(step_machine_options()), std::move(windows), {},
                          Clock::now()});
  send(next_->machine.begin_step(t + 1, membership_.epoch(), std::move(work)));
  next_begun_at_ = next_->start;
}

bool CoordinatorRun::route_to_next(const net::Envelope& env) {
  if (!next_) return false;
  const int64_t step = std::visit(
      [](const auto& m) -> int64_t {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, proto::PushReceived> ||
                      std::is_same_v<T, proto::WorkerStepDone> ||
                      std::is_same_v<T, proto::NormReport> ||
                      std::is_same_v<T, proto::StepApplied>) {
          return m.step;
        }
        return -1;
      },
      env.message);
  if (step != next_->machine.step()) return false;
  StepMachine& m = next_->machine;
  send(m.handle(env.from, env.message));
  if (std::holds_alternative<proto::WorkerStepDone>(env.message) &&
      m.reports().count(env.from.id) != 0) {
    next_->done_at.emplace(env.from.id, Clock::now());
  }
  if (m.failure() && m.failure()->kind != StepFailure::Kind::kNoContributors) {
    throw_step_failure(m);
  }
  return true;
}

// Runs step t with the workers taking part now (or adopts it, begun early); returns false when
// a stop was requested while too few workers were there (nothing was run).
bool CoordinatorRun::run_step(int64_t t) {
  for (;;) {  // a step whose every worker was dropped is begun again with the workers left
    Clock::time_point step_start;
    if (next_ && next_->machine.step() == t) {
      machine_ = std::move(next_->machine);
      step_windows_ = std::move(next_->windows);
      worker_done_at_ = std::move(next_->done_at);
      step_start = next_->start;
      next_.reset();
    } else {
      if (!wait_for_workers(t)) return false;
      if (leased_ && !wait_for_ready_lease(t)) return false;
      step_start = Clock::now();
      std::vector<WorkerWork> work = plan_step(step_windows_);
      machine_ = StepMachine(step_machine_options());
      send(machine_.begin_step(t, membership_.epoch(), std::move(work)));
      worker_done_at_.clear();
    }
    next_begun_at_.reset();
    const auto forever = Clock::time_point::max();
    auto deadline = cfg_.cluster.step_deadline_s > 0
                        ? step_start + std::chrono::milliseconds(static_cast<int64_t>(
                                           cfg_.cluster.step_deadline_s * 1000))
                        : forever;
    auto quiet_since = Clock::now();
    if (machine_.failure() && machine_.failure()->kind != StepFailure::Kind::kNoContributors) {
      throw_step_failure(machine_);
    }
    while (!machine_.applied() && !machine_.failure()) {
      grant_leases();
      maybe_begin_next(t);
      std::optional<net::Envelope> env =
          poll(std::min(deadline, quiet_since + o_.timeout));
      if (machine_.failure()) break;
      if (!env) {
        if (Clock::now() >= deadline && machine_.phase() == StepPhase::kGathering) {
          drop_late_workers(t);
          deadline = forever;
        } else if (Clock::now() - quiet_since >= o_.timeout) {
          throw Error(ExitCode::kIo,
                      fmt::format("coordinator: nothing arrived within {} s during step {} ({})",
                                  std::chrono::duration_cast<std::chrono::seconds>(o_.timeout)
                                      .count(),
                                  t + 1, phase_name(machine_.phase())));
        }
        continue;
      }
      quiet_since = Clock::now();
      if (stale(*env, t)) continue;
      if (route_to_next(*env)) continue;
      const bool report = std::holds_alternative<proto::WorkerStepDone>(env->message);
      send(machine_.handle(env->from, env->message));
      if (report && machine_.reports().count(env->from.id) != 0) {
        worker_done_at_.emplace(env->from.id, Clock::now());
      }
      if (machine_.failure() &&
          machine_.failure()->kind != StepFailure::Kind::kNoContributors) {
        throw_step_failure(machine_);
      }
    }
    if (machine_.failure()) {
      // Every worker of the step was dropped before its push reached every server: nothing was
      // applied; all its windows go back, and the step begins again with the workers left.
      std::vector<DataWindow> back;
      for (const auto& [id, w] : step_windows_) back.insert(back.end(), w.begin(), w.end());
      spdlog::warn("{}; its {} window(s) go back to the pool and the step begins again",
                   machine_.failure()->message, back.size());
      plan_->give_back(back);
      for (const auto& [id, w] : step_windows_) in_step_.erase(id);
      step_windows_.clear();
      machine_ = StepMachine(step_machine_options());
      continue;
    }
    // The windows of the contributors were applied (ledger); the others went back to the pool.
    give_back_windows_of_dropped(t);
    std::vector<DataWindow> applied;
    for (const auto& [id, w] : step_windows_) applied.insert(applied.end(), w.begin(), w.end());
    std::optional<LedgerWriter::PushRecord> push;
    if (leased_) {
      // One contributor: the worker whose lease this step pushed.
      for (int32_t w : machine_.contributors()) {
        auto node = in_step_.extract(w);
        PTRAIN_ENFORCE(!node.empty(), "step {}: worker {} pushed without a lease", t + 1, w);
        const Lease& l = node.mapped();
        push = LedgerWriter::PushRecord{w, l.base_version, t - l.base_version, l.ahead};
        staleness_max_ = std::max(staleness_max_, push->staleness);
        staleness_sum_ += static_cast<double>(push->staleness);
        ++staleness_count_;
        if (auto c = clocks_.find(w); c != clocks_.end()) ++c->second;
      }
    }
    ledger_->step(t + 1, applied, push);
    step_windows_.clear();
    for (const auto& [id, d] : machine_.reports()) worker_done_[id] = d;
    for (const auto& [id, a] : machine_.applied_reports()) server_applied_[id] = a;
    // "wait": from a worker's report (its pushes done) to its next step begun — the step applied
    // everywhere, or earlier when the next step was begun at the commit (its pull then waits on
    // the servers for the update and counts as pull) — averaged over the reports.
    const auto wait_end = next_begun_at_.value_or(Clock::now());
    double wait_sum = 0.0;
    for (const auto& [id, at] : worker_done_at_) {
      wait_sum += std::max(0.0, std::chrono::duration<double>(wait_end - at).count());
    }
    last_wait_s_ = worker_done_at_.empty()
                       ? 0.0
                       : wait_sum / static_cast<double>(worker_done_at_.size());
    spdlog::debug("step {}: slowest worker pull {:.4f} s, compute {:.4f} s; step {:.4f} s", t + 1,
                  machine_.max_pull_s(), machine_.max_compute_s(),
                  std::chrono::duration<double>(Clock::now() - step_start).count());
    last_step_tokens_ = machine_.tokens();
    summary_.tokens_seen += last_step_tokens_;
    summary_.final_loss = machine_.loss();
    summary_.final_step = t + 1;
    // A step begun early overlaps the one before: its time counts from that one's end.
    const auto now = Clock::now();
    const double step_s =
        std::chrono::duration<double>(now - std::max(step_start, last_applied_at_)).count();
    last_applied_at_ = now;
    interval_loss_sum_ += machine_.loss();
    if (const std::optional<double> acc = machine_.accuracy()) {
      interval_accuracy_sum_ += *acc;
      ++interval_accuracy_steps_;
    }
    interval_step_s_sum_ += step_s;
    const StepSeconds phases = step_phases();
    interval_phase_sum_.compute += phases.compute;
    interval_phase_sum_.push += phases.push;
    interval_phase_sum_.wait += phases.wait;
    interval_phase_sum_.pull += phases.pull;
    ++interval_steps_;
    update_status(t + 1, step_s);
    grant_leases();  // its worker's next lease, now that its own update is in
    return true;
  }
}

uint64_t CoordinatorRun::data_plane_bytes() const {
  uint64_t bytes = 0;  // per worker since it started: the job's total sums every worker's last
  for (const auto& [id, d] : worker_done_) bytes += d.bytes_pushed + d.bytes_pulled;
  return bytes;
}

void CoordinatorRun::check_finite(const StepMachine& machine) {
  const int64_t t = machine.step();
  const double loss = machine.loss();
  const std::optional<int64_t> bad = machine.first_nonfinite();
  if (!bad && std::isfinite(loss)) return;
  std::string msg = fmt::format("non-finite values at step {}: ", t + 1);
  if (bad) {
    msg += fmt::format("gradient of {} is not finite", describe_element(layout_, *bad));
    msg += fmt::format(" (loss {})", loss);
  } else {
    msg += fmt::format("the loss is {} (every gradient element is finite)", loss);
  }
  msg += "; the step was not applied and the last good checkpoint stays `latest`";
  throw NumericError(msg);
}

void CoordinatorRun::log_step(int64_t step) {
  const auto now = Clock::now();
  StepRecord r;
  r.step = step;
  const double n = static_cast<double>(std::max<int64_t>(1, interval_steps_));
  r.loss = interval_steps_ > 0 ? interval_loss_sum_ / n : machine_.loss();
  if (interval_accuracy_steps_ > 0) {
    r.accuracy = interval_accuracy_sum_ / static_cast<double>(interval_accuracy_steps_);
  } else if (interval_steps_ == 0) {
    r.accuracy = machine_.accuracy();
  }
  r.lr = machine_.lr();
  r.grad_norm = machine_.global_norm();
  r.clipped = machine_.clip_coef() < 1.0f;
  r.tokens = summary_.tokens_seen;
  const double this_run_s = std::chrono::duration<double>(now - t_start_).count();
  r.elapsed_s = elapsed_before_ + this_run_s;
  const double dt = std::chrono::duration<double>(now - t_last_log_).count();
  const int64_t tokens = summary_.tokens_seen - tokens_at_last_log_;
  r.tokens_per_s = dt > 0 ? static_cast<double>(tokens) / dt : 0.0;
  r.step_s = interval_step_s_sum_ / n;
  r.phase_s = {interval_phase_sum_.compute / n, interval_phase_sum_.push / n,
               interval_phase_sum_.wait / n, interval_phase_sum_.pull / n};
  const uint64_t bytes = data_plane_bytes();
  const int64_t line_tokens = summary_.tokens_seen - tokens_at_last_line_;
  // A worker that restarts counts from zero again: never a negative span.
  const uint64_t span_bytes = bytes >= bytes_at_last_log_ ? bytes - bytes_at_last_log_ : bytes;
  r.bytes_per_token =
      line_tokens > 0 ? static_cast<double>(span_bytes) / static_cast<double>(line_tokens) : 0.0;
  log_->step(r);
  const int64_t done = step - summary_.start_step;
  const double eta = done > 0 ? this_run_s / static_cast<double>(done) *
                                    static_cast<double>(steps_ - step)
                              : 0.0;
  spdlog::info("{}", progress_line(r, steps_, eta));
  t_last_log_ = now;
  tokens_at_last_log_ = summary_.tokens_seen;
  bytes_at_last_log_ = bytes;
  tokens_at_last_line_ = summary_.tokens_seen;
  interval_loss_sum_ = interval_step_s_sum_ = interval_accuracy_sum_ = 0.0;
  interval_phase_sum_ = {};
  interval_steps_ = interval_accuracy_steps_ = 0;
}

// Validation of weights version `step`, run by the workers: the val windows are cut into batches
// of train.micro_batch from window 0, each worker gets a contiguous run of whole batches and
// answers one loss sum per batch; the sums are added in batch order (common/data/val_loss.hpp),
// so the result does not depend on the number of workers and equals `ptrain eval` on the
// checkpoint of that step when every window is evaluated.
void CoordinatorRun::evaluate(int64_t step) {
  const auto t0 = Clock::now();
  const uint64_t id = next_request_++;
  const int64_t batch = cfg_.train.micro_batch;
  const auto batches = val_batches(val_windows_, batch);
  const auto n = static_cast<int64_t>(batches.size());
  std::vector<double> sums(static_cast<size_t>(n), 0.0);
  std::vector<int64_t> tokens(static_cast<size_t>(n), 0);
  // First batch → (worker, end batch): a lost worker's batches go to another worker.
  std::map<int64_t, std::pair<int32_t, int64_t>> assigned;
  apply_all_membership_events();
  if (active_.empty()) {
    spdlog::warn("step {}/{}: no worker to run the validation; skipped", step, steps_);
    return;
  }
  auto assign = [&](int32_t worker, int64_t b, int64_t e) {
    assigned[b] = {worker, e};
    transport_.send(net::worker_endpoint(worker),
                    proto::EvalBegin{id, step, batches[static_cast<size_t>(b)].first,
                                     batches[static_cast<size_t>(e - 1)].second, batch});
  };
  const std::vector<int32_t> workers(active_.begin(), active_.end());
  const auto split = split_batch(n, static_cast<int64_t>(workers.size()));
  for (size_t w = 0; w < workers.size(); ++w) {
    const auto [b, e] = split[w];
    if (b != e) assign(workers[w], b, e);
  }
  const std::string what = fmt::format("the validation of step {}", step);
  double slowest_s = 0.0;
  const auto give_up = Clock::now() + o_.timeout;
  while (!assigned.empty()) {
    std::optional<net::Envelope> env = poll(give_up);
    if (!env) {
      if (Clock::now() >= give_up) {
        throw Error(ExitCode::kIo, fmt::format("coordinator: nothing arrived within {} s during {}",
                                               std::chrono::duration_cast<std::chrono::seconds>(
                                                   o_.timeout).count(), what));
      }
      // Membership changed: batches of a worker no longer there go to one that is.
      for (auto& [b, we] : assigned) {
        if (active_.count(we.first) != 0) continue;
        if (active_.empty()) {
          spdlog::warn("{}: no worker left; skipped", what);
          return;
        }
        assign(*active_.begin(), b, we.second);
      }
      continue;
    }
    if (stale(*env, step)) continue;
    auto* d = std::get_if<proto::EvalDone>(&env->message);
    const int64_t first = d != nullptr && batch > 0 ? d->window_begin / batch : -1;
    const auto it = d != nullptr ? assigned.find(first) : assigned.end();
    if (it == assigned.end() || d->request_id != id || d->version != step ||
        env->from != net::worker_endpoint(d->worker_id) ||
        d->window_begin != batches[static_cast<size_t>(first)].first ||
        static_cast<int64_t>(d->loss_sums.size()) != it->second.second - first) {
      // A batch given to another worker after its first one was thought lost: already counted.
      if (d != nullptr && d->request_id == id && it == assigned.end()) continue;
      throw proto::ProtocolError(fmt::format("coordinator: unexpected {} from {} during {}",
                                             proto::type_name(proto::type_of(env->message)),
                                             env->from.str(), what));
    }
    std::copy(d->loss_sums.begin(), d->loss_sums.end(), sums.begin() + first);
    std::copy(d->tokens.begin(), d->tokens.end(), tokens.begin() + first);
    slowest_s = std::max(slowest_s, d->eval_s);
    assigned.erase(it);
  }
  const double val = combine_val_batches(sums, tokens).mean();
  log_->eval(step, val, elapsed_before_ + std::chrono::duration<double>(Clock::now() - t_start_).count());
  spdlog::info("step {}/{} | val_loss {:.4f} ({} windows of {} on {} worker(s); slowest {:.2f} s, "
               "{:.2f} s in all)",
               step, steps_, val, val_windows_, cfg_.data.val,
               std::min<int64_t>(n, static_cast<int64_t>(workers.size())),
               slowest_s, std::chrono::duration<double>(Clock::now() - t0).count());
  summary_.final_val_loss = val;
  if (o_.status != nullptr) {
    o_.status->update([&](JobStatus& s) {
      s.val_loss = val;
      s.val_step = step;
      add_status_event(s, fmt::format("step {}: val_loss {:.4f}", step, val));
    });
  }
  // The evaluation's time is not training throughput: the next rate starts after it.
  t_last_log_ = Clock::now();
  tokens_at_last_log_ = summary_.tokens_seen;
}

void CoordinatorRun::checkpoint(int64_t step) {
  // A consistent cut: the next step is not begun until every shard is written and published.
  const uint64_t id = next_request_++;
  const auto t0 = Clock::now();
  const std::string tmp = begin_checkpoint(cfg_.run.dir, step);
  for (int64_t k = 0; k < num_servers_; ++k) {
    transport_.send(net::server_endpoint(static_cast<int32_t>(k)),
                    proto::CheckpointShard{id, step, tmp});
  }
  // cluster.sync local: every worker's inner optimizer state beside the shards, slot = its
  // position among the workers the next step would split its windows between.
  std::map<int32_t, int64_t> inner_pending;  // worker id → slot
  if (cfg_.cluster.sync == SyncMode::kLocal) {
    const std::vector<int32_t> workers = ready_workers();
    std::vector<StepOutgoing> out;
    for (size_t r = 0; r < workers.size(); ++r) {
      inner_pending[workers[r]] = static_cast<int64_t>(r);
      out.push_back({net::worker_endpoint(workers[r]),
                     proto::InnerStateSave{id, step, static_cast<int64_t>(r), tmp}});
    }
    send(std::move(out));
  }
  std::vector<int64_t> inner_slots;
  std::vector<bool> have(static_cast<size_t>(num_servers_), false);
  double slowest_s = 0.0;
  const auto deadline = Clock::now() + o_.timeout;
  for (int64_t done = 0; done < num_servers_ || !inner_pending.empty();) {
    // A worker lost meanwhile takes its inner state with it, as it would a step later: the
    // checkpoint holds the others'.
    for (auto it = inner_pending.begin(); it != inner_pending.end();) {
      if (active_.count(it->first) != 0) {
        ++it;
        continue;
      }
      spdlog::warn("checkpoint {}: worker {} is gone before it saved its inner optimizer state "
                   "(slot {}); the checkpoint holds the other workers'",
                   step, it->first, it->second);
      it = inner_pending.erase(it);
    }
    if (done == num_servers_ && inner_pending.empty()) break;
    std::optional<net::Envelope> got = poll(deadline);
    if (!got) {
      if (Clock::now() < deadline) continue;
      throw Error(ExitCode::kIo,
                  fmt::format("coordinator: nothing arrived within {} s while checkpoint {} was "
                              "written ({} of {} shards, {} inner state(s) missing)",
                              std::chrono::duration_cast<std::chrono::seconds>(o_.timeout).count(),
                              step, done, num_servers_, inner_pending.size()));
    }
    net::Envelope& env = *got;
    // A straggler's late report (or a server's note of its late push) can arrive now.
    if (stale(env, step)) continue;
    if (auto* d = std::get_if<proto::InnerStateDone>(&env.message)) {
      const auto it = inner_pending.find(d->worker_id);
      if (d->request_id != id || d->version != step || it == inner_pending.end() ||
          it->second != d->slot || env.from != net::worker_endpoint(d->worker_id)) {
        throw proto::ProtocolError(fmt::format(
            "coordinator: unexpected InnerStateDone (request {}, step {}, slot {}) from {} while "
            "checkpoint {} is written",
            d->request_id, d->version, d->slot, env.from.str(), step));
      }
      inner_slots.push_back(d->slot);
      slowest_s = std::max(slowest_s, d->seconds);
      inner_pending.erase(it);
      continue;
    }
    auto* m = std::get_if<proto::CheckpointShardWritten>(&env.message);
    if (m == nullptr || m->request_id != id || m->version != step || m->server_id < 0 ||
        m->server_id >= num_servers_ || have[static_cast<size_t>(m->server_id)] ||
        env.from != net::server_endpoint(m->server_id)) {
      throw proto::ProtocolError(fmt::format(
          "coordinator: unexpected {} from {} while checkpoint {} is written",
          proto::type_name(proto::type_of(env.message)), env.from.str(), step));
    }
    const auto& want = o_.server_ranges[static_cast<size_t>(m->server_id)];
    if (m->range != want) {
      throw proto::ProtocolError(fmt::format(
          "server {} wrote checkpoint shard range [{}, {}), its shard is [{}, {})", m->server_id,
          m->range.begin, m->range.end, want.begin, want.end));
    }
    have[static_cast<size_t>(m->server_id)] = true;
    slowest_s = std::max(slowest_s, m->write_s);
    ++done;
  }
  std::sort(inner_slots.begin(), inner_slots.end());
  CheckpointMeta meta;
  meta.step = step;
  meta.tokens_seen = summary_.tokens_seen;
  meta.config_yaml = cfg_.to_yaml();
  meta.layout_hash = layout_.hash();
  meta.tokenizer_json = o_.tokenizer_json;
  meta.data = plan_->state();
  meta.inner_state_slots = inner_slots;
  // ssp/async: windows of leases granted and not applied yet are not trained on in this
  // checkpoint's state: a resume hands them out again.
  for (const auto* leases : {&leases_, &in_step_}) {
    for (const auto& [w, l] : *leases) {
      meta.data.returned.insert(meta.data.returned.end(), l.windows.begin(), l.windows.end());
    }
  }
  summary_.last_checkpoint = finish_sharded_checkpoint(cfg_.run.dir, tmp, layout_, meta,
                                                       num_servers_, cfg_.checkpoint.keep);
  last_checkpoint_step_ = step;
  last_checkpoint_at_ = Clock::now();
  spdlog::info("step {}/{} | checkpoint {} ({} shards{}; slowest file {:.3f} s, {:.3f} s in all)",
               step, steps_, summary_.last_checkpoint, num_servers_,
               cfg_.cluster.sync == SyncMode::kLocal
                   ? fmt::format(", {} worker inner state(s)", inner_slots.size())
                   : std::string(),
               slowest_s, std::chrono::duration<double>(Clock::now() - t0).count());
  if (o_.status != nullptr) {
    const std::string dir = summary_.last_checkpoint;
    o_.status->update([&](JobStatus& s) {
      s.last_checkpoint_step = step;
      s.checkpoints.push_back(step);
      add_status_event(s, fmt::format("step {}: checkpoint {}", step, dir));
    });
  }
  t_last_log_ = Clock::now();
  tokens_at_last_log_ = summary_.tokens_seen;
}

std::vector<MemberStatus> CoordinatorRun::status_members(int64_t step) const {
  std::vector<MemberStatus> out;
  auto add = [&](const net::Endpoint& e, const std::string& host) {
    MemberStatus m;
    m.id = e.id;
    m.role = e.role;
    m.host = host.empty() ? "local" : host;
    m.step = step;
    m.loss = std::numeric_limits<double>::quiet_NaN();
    out.push_back(m);
  };
  add(net::coordinator_endpoint(), "");
  for (const net::Member& m : membership_.members()) add(m.endpoint, m.host);
  return out;
}

void CoordinatorRun::init_status() {
  if (o_.status == nullptr) return;
  const int64_t start = summary_.start_step;
  std::vector<MemberStatus> members = status_members(start);
  const int64_t epoch = membership_.epoch();
  const std::string resumed = start > 0 ? fmt::format("resumed at step {}", start) : "started";
  o_.status->update([&](JobStatus& s) {
    s.step = start;
    s.loss = std::numeric_limits<double>::quiet_NaN();
    s.membership_epoch = epoch;
    s.members = std::move(members);
    s.run_dir = cfg_.run.dir;
    s.start_step = start;
    s.target_steps = steps_;
    s.tokens_total = summary_.tokens_seen;
    add_status_event(s, fmt::format("{} ({} server(s), {} worker(s))", resumed, num_servers_,
                                    membership_.workers().size()));
  });
}

void CoordinatorRun::status_event(const std::string& text) {
  if (o_.status != nullptr) o_.status->update([&](JobStatus& s) { add_status_event(s, text); });
}

StepSeconds CoordinatorRun::step_phases() const {
  StepSeconds phases;
  const auto& reports = machine_.reports();
  for (const auto& [id, d] : reports) {
    phases.compute += d.compute_s;
    phases.push += d.push_s;
    phases.pull += d.pull_s;
  }
  if (!reports.empty()) {
    const auto n = static_cast<double>(reports.size());
    phases.compute /= n;
    phases.push /= n;
    phases.pull /= n;
  }
  phases.wait = last_wait_s_;
  return phases;
}

void CoordinatorRun::update_status(int64_t step, double step_s) {
  if (o_.status == nullptr) return;
  const auto now = Clock::now();
  const double loss = machine_.loss();
  const std::optional<double> accuracy = machine_.accuracy();
  const double tps = step_s > 0 ? static_cast<double>(last_step_tokens_) / step_s : 0.0;
  const StepSeconds phases = step_phases();
  // A worker that restarts counts from zero again: never a negative span.
  const uint64_t bytes = data_plane_bytes();
  const uint64_t step_bytes = bytes >= bytes_at_last_status_ ? bytes - bytes_at_last_status_ : bytes;
  bytes_at_last_status_ = bytes;
  const double bytes_per_token = last_step_tokens_ > 0 ? static_cast<double>(step_bytes) /
                                                             static_cast<double>(last_step_tokens_)
                                                       : std::nan("");
  // Byte counters are per worker since it started: the job's total sums every worker's last.
  uint64_t pushed = 0, pulled = 0;
  for (const auto& [id, d] : worker_done_) {
    pushed += d.bytes_pushed;
    pulled += d.bytes_pulled;
  }
  std::vector<MemberStatus> members = status_members(step);
  for (auto& m : members) {
    const net::Endpoint e{m.role, m.id};
    const auto seen = last_seen_.find(e);
    m.heartbeat_age_s =
        seen == last_seen_.end() ? 0.0 : std::chrono::duration<double>(now - seen->second).count();
    if (m.role == net::Role::kCoordinator) {
      m.loss = loss;
      m.tokens_per_second = tps;
      m.bytes_pushed = pushed;
      m.bytes_pulled = pulled;
    } else if (const auto d = worker_done_.find(m.id);
               m.role == net::Role::kWorker && d != worker_done_.end()) {
      m.step = d->second.step + 1;
      m.loss = d->second.tokens > 0
                   ? d->second.loss_sum / static_cast<double>(d->second.tokens)
                   : std::numeric_limits<double>::quiet_NaN();
      m.tokens_per_second =
          step_s > 0 ? static_cast<double>(d->second.tokens) / step_s : 0.0;
      m.bytes_pushed = d->second.bytes_pushed;
      m.bytes_pulled = d->second.bytes_pulled;
    } else if (const auto a = server_applied_.find(m.id);
               m.role == net::Role::kServer && a != server_applied_.end()) {
      m.step = a->second.version;
      m.bytes_pushed = a->second.bytes_pushed;
      m.bytes_pulled = a->second.bytes_pulled;
    }
  }
  const int64_t epoch = membership_.epoch();
  const int64_t tokens_total = summary_.tokens_seen;
  const double lr = machine_.lr(), grad_norm = machine_.global_norm();
  const double elapsed = elapsed_before_ + std::chrono::duration<double>(now - t_start_).count();
  o_.status->update([&](JobStatus& s) {
    s.step = step;
    s.loss = loss;
    if (accuracy) s.accuracy = *accuracy;
    s.tokens_per_second = tps;
    s.membership_epoch = epoch;
    s.bytes_pushed_total = pushed;
    s.bytes_pulled_total = pulled;
    s.step_seconds = phases;
    s.bytes_per_token = bytes_per_token;
    if (staleness_count_ > 0) {
      s.push_staleness_max = static_cast<double>(staleness_max_);
      s.push_staleness_mean = staleness_sum_ / static_cast<double>(staleness_count_);
    }
    s.tokens_total = tokens_total;
    s.lr = lr;
    s.grad_norm = grad_norm;
    s.elapsed_s = elapsed;
    s.loss_history.push_back({step, loss});
    if (s.loss_history.size() > 4096) {  // keep every other point: bounded, still the whole run
      std::vector<LossPoint> thin;
      for (size_t i = 0; i < s.loss_history.size(); i += 2) thin.push_back(s.loss_history[i]);
      s.loss_history = std::move(thin);
    }
    s.members = std::move(members);
  });
}

// RUN_DIR/status.json and RUN_DIR/report.html: the page as it stands when the run ends, kept.
// A failure to write them is reported, not fatal: the training itself is done and saved.
void CoordinatorRun::write_report(bool finished) {
  if (o_.status != nullptr) o_.status->update([finished](JobStatus& s) { s.finished = finished; });
  try {
    JobStatus s;
    if (o_.status != nullptr) {
      s = o_.status->snapshot();
    } else {
      s.run_dir = cfg_.run.dir;
      s.step = summary_.final_step;
      s.start_step = summary_.start_step;
      s.target_steps = steps_;
      s.tokens_total = summary_.tokens_seen;
      s.loss = summary_.final_loss;
      s.finished = finished;
    }
    write_run_status(cfg_.run.dir, s);
    spdlog::info("report: {}", write_run_report(cfg_.run.dir));
  } catch (const Error& e) {
    spdlog::warn("could not write the run report: {}", e.what());
  }
}

// Every member, servers first (in-process this is also how the roles' threads end).
void broadcast(net::Transport& transport, const net::Membership& membership,
               const std::string& reason, bool best_effort) {
  for (const net::Member& m : membership.members()) {
    try {
      transport.send(m.endpoint, proto::Shutdown{reason});
    } catch (const std::exception&) {
      if (!best_effort) throw;
    }
  }
}

void CoordinatorRun::broadcast_shutdown(const std::string& reason) {
  broadcast(transport_, membership_, reason, /*best_effort=*/false);
}

RunSummary CoordinatorRun::run() {
  t_start_ = Clock::now();
  StartState st = load_start_state(cfg_, layout_, o_.allow_config_change);
  summary_.start_step = st.step;
  summary_.final_step = st.step;
  summary_.tokens_seen = st.tokens_seen;
  tokens_at_start_ = st.tokens_seen;
  summary_.final_loss = std::numeric_limits<double>::quiet_NaN();
  if (!st.resumed_from.empty()) {
    spdlog::info("resuming from {} (step {}, {} tokens seen)", st.resumed_from, st.step,
                 st.tokens_seen);
  }
  {
    const TokenFile train = TokenFile::open(cfg_.data.train);
    plan_.emplace(train.num_windows(layout_.dims().T), st.data);
  }
  // The ledger keeps what happened up to the start step; steps past it are run again.
  ledger_.emplace(cfg_.run.dir, st.step);
  for (const net::Endpoint& w : membership_.workers()) {
    active_.insert(w.id);
    if (leased_) clocks_[w.id] = 0;
  }
  last_checkpoint_at_ = Clock::now();
  if (!st.resumed_from.empty()) {
    last_checkpoint_step_ = st.step;
    record_event("resume", net::coordinator_endpoint(),
                 fmt::format("resumed from {} at step {}", st.resumed_from, st.step));
  }
  if (!cfg_.data.val.empty()) {
    const TokenFile val = TokenFile::open(cfg_.data.val, "val");
    val_windows_ = val_window_count(val.num_windows(layout_.dims().T), cfg_.train.eval_windows);
    if (val_windows_ < 1) {
      throw DataError(fmt::format("{} (data.val) has no complete window of {} tokens",
                                  cfg_.data.val, layout_.dims().T + 1));
    }
  }
  start_servers(st);
  if (cfg_.cluster.sync == SyncMode::kLocal) {
    load_inner_states(st);
  } else if (!st.inner_state_slots.empty()) {
    spdlog::info("{} holds {} worker inner optimizer state(s) of cluster.sync local; this job's "
                 "cluster.sync is {}: not used",
                 st.resumed_from, st.inner_state_slots.size(),
                 sync_mode_name(cfg_.cluster.sync));
  }
  init_status();

  if (summary_.start_step >= steps_) {
    spdlog::info("nothing to do: the checkpoint is at step {}, train.steps is {}",
                 summary_.start_step, steps_);
    broadcast_shutdown("nothing to do");
    return summary_;
  }
  log_.emplace(cfg_.run.dir, summary_.start_step);
  elapsed_before_ = log_->elapsed_before();
  t_last_log_ = Clock::now();
  tokens_at_last_log_ = tokens_at_last_line_ = summary_.tokens_seen;

  for (int64_t t = summary_.start_step; t < steps_; ++t) {
    if (!run_step(t)) {
      // Asked to stop while waiting for workers: the state of the last applied step is kept.
      if (last_checkpoint_step_ != summary_.final_step) checkpoint(summary_.final_step);
      spdlog::info("stopping at step {}/{} as asked; `checkpoint.resume: auto` continues from "
                   "the checkpoint",
                   summary_.final_step, steps_);
      summary_.interrupted = true;
      break;
    }
    const int64_t step = t + 1;
    if (step % std::max<int64_t>(1, cfg_.train.log_every) == 0 || step == steps_ ||
        t == summary_.start_step) {
      log_step(step);
    }
    if (!cfg_.data.val.empty() &&
        (step == steps_ || (cfg_.train.eval_every > 0 && step % cfg_.train.eval_every == 0))) {
      evaluate(step);
    }
    const bool stop = step < steps_ && o_.stop_requested && o_.stop_requested(step);
    const double minutes =
        std::chrono::duration<double>(Clock::now() - last_checkpoint_at_).count() / 60.0;
    const bool due = scheduler_.due(step, minutes) || stop || deferred_checkpoint_;
    if (due && next_) {
      // Step t+1 was begun at step t's commit (nothing was due then): a consistent cut needs no
      // step running, so the checkpoint (and a stop) is taken once step t+1 is applied.
      deferred_checkpoint_ = true;
      continue;
    }
    deferred_checkpoint_ = false;
    if (due) checkpoint(step);
    if (stop) {
      spdlog::info("stopping at step {}/{} as asked; `checkpoint.resume: auto` continues from "
                   "the checkpoint",
                   step, steps_);
      summary_.interrupted = true;
      break;
    }
  }
  drain_leases();
  broadcast_shutdown(summary_.interrupted ? "stopped" : "training finished");
  status_event(summary_.interrupted ? fmt::format("stopped at step {}", summary_.final_step)
                                    : fmt::format("finished at step {}", summary_.final_step));
  write_report(!summary_.interrupted);
  summary_.elapsed_s = std::chrono::duration<double>(Clock::now() - t_start_).count();
  const int64_t ran = summary_.final_step - summary_.start_step;
  summary_.mean_step_s = ran > 0 ? summary_.elapsed_s / static_cast<double>(ran) : 0.0;
  summary_.tokens_per_s =
      summary_.elapsed_s > 0
          ? static_cast<double>(summary_.tokens_seen - tokens_at_start_) / summary_.elapsed_s
          : 0.0;
  return summary_;
}

}  // namespace

RunSummary run_coordinator(const CoordinatorOptions& options, const ParamLayout& layout,
                           net::Transport& transport, net::Membership& membership) {
  try {
    CoordinatorRun run(options, layout, transport, membership);
    return run.run();
  } catch (const net::TransportClosed&) {
    throw;
  } catch (const std::exception& e) {
    // Tell every member to stop (over TCP this is how they learn; in threads mode the job also
    // closes the fabric). Best effort: the member that failed may be gone.
    broadcast(transport, membership, fmt::format("coordinator stopping: {}", e.what()),
              /*best_effort=*/true);
    throw;
  }
}

}  // namespace ptrain
