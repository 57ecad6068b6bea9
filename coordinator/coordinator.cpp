#include "coordinator/coordinator.hpp"

#include "common/data/val_loss.hpp"
#include "common/error.hpp"
#include "common/io/checkpoint.hpp"
#include "common/io/token_file.hpp"
#include "common/proto/codec.hpp"
#include "coordinator/checkpoint_scheduler.hpp"
#include "coordinator/data_plan.hpp"
#include "coordinator/run_log.hpp"
#include "coordinator/start_state.hpp"
#include "coordinator/status_service.hpp"
#include "coordinator/step_controller.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <limits>
#include <map>
#include <numeric>

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

// The coordinator's run, as a small object wiring the pieces together for one job.
class CoordinatorRun {
 public:
  CoordinatorRun(const CoordinatorOptions& o, const ParamLayout& layout, net::Transport& t)
      : o_(o),
        cfg_(o.config),
        layout_(layout),
        transport_(t),
        num_servers_(static_cast<int64_t>(o.server_ranges.size())),
        num_workers_(cfg_.cluster.workers),
        steps_(cfg_.train.steps),
        scheduler_(cfg_.checkpoint.every_steps, cfg_.train.steps) {}

  RunSummary run();

 private:
  net::Envelope next(const std::string& waiting_for);
  void start_servers(const StartState& st);
  void run_step(int64_t t);
  void check_finite(int64_t t);
  void log_step(int64_t step);
  void evaluate(int64_t step);
  void checkpoint(int64_t step);
  void broadcast_shutdown(const std::string& reason);
  void init_status();
  void update_status(int64_t step, double step_s);

  const CoordinatorOptions& o_;
  const Config& cfg_;
  const ParamLayout& layout_;
  net::Transport& transport_;
  int64_t num_servers_;
  int64_t num_workers_;
  int64_t steps_;
  CheckpointScheduler scheduler_;
  std::optional<DataPlan> plan_;
  std::optional<StepController> ctl_;
  std::optional<RunLog> log_;
  int64_t val_windows_ = 0;  // windows of data.val per evaluation (0: no data.val)
  uint64_t next_request_ = 1;

  RunSummary summary_;
  Clock::time_point t_start_;
  Clock::time_point t_last_log_;
  int64_t tokens_at_last_log_ = 0;
  int64_t tokens_at_start_ = 0;
  int64_t last_step_tokens_ = 0;

  // For the status endpoint: the last message from each member, the workers' and servers' last
  // reports, and when each worker's report arrived (its push was done then).
  std::map<net::Endpoint, Clock::time_point> last_seen_;
  std::vector<proto::WorkerStepDone> worker_done_;
  std::vector<Clock::time_point> worker_done_at_;
  std::vector<proto::StepApplied> server_applied_;
  double last_wait_s_ = 0.0;
};

net::Envelope CoordinatorRun::next(const std::string& waiting_for) {
  std::optional<net::Envelope> env = transport_.receive(o_.timeout);
  if (!env) {
    throw Error(ExitCode::kIo,
                fmt::format("coordinator: nothing arrived within {} s while waiting for {}",
                            std::chrono::duration_cast<std::chrono::seconds>(o_.timeout).count(),
                            waiting_for));
  }
  last_seen_[env->from] = Clock::now();
  if (auto* f = std::get_if<proto::Failure>(&env->message)) {
    throw Error(proto::failure_code(*f), fmt::format("{} failed: {}", env->from.str(),
                                                            f->message));
  }
  return std::move(*env);
}

// Each server initialises (fresh: from run.seed) or reads (resume: its slice of the checkpoint)
// its own range; only the seed or the file's path travels. Returns once every server has it.
void CoordinatorRun::start_servers(const StartState& st) {
  const auto t0 = Clock::now();
  for (int64_t k = 0; k < num_servers_; ++k) {
    proto::LoadShard m;
    m.version = st.step;
    m.membership_epoch = 0;
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

void CoordinatorRun::run_step(int64_t t) {
  const auto step_start = Clock::now();
  const std::vector<int64_t> windows = plan_->next_step(cfg_.train.batch_size);
  const auto split = split_batch(cfg_.train.batch_size, num_workers_);
  ctl_->begin(t);
  for (int64_t w = 0; w < num_workers_; ++w) {
    const auto [b, e] = split[static_cast<size_t>(w)];
    proto::StepBegin m;
    m.step = t;
    m.membership_epoch = 0;
    m.windows.assign(windows.begin() + b, windows.begin() + e);
    transport_.send(net::worker_endpoint(static_cast<int32_t>(w)), m);
  }
  const std::string what = fmt::format("step {}", t + 1);
  while (!ctl_->gathered()) {
    net::Envelope env = next(what + ": gradient pushes and worker reports");
    bool ok = false;
    if (auto* m = std::get_if<proto::PushReceived>(&env.message)) {
      ok = ctl_->on_push_received(*m);
    } else if (auto* d = std::get_if<proto::WorkerStepDone>(&env.message)) {
      ok = ctl_->on_worker_done(*d);
      if (ok && d->worker_id >= 0 && d->worker_id < num_workers_) {
        worker_done_[static_cast<size_t>(d->worker_id)] = *d;
        worker_done_at_[static_cast<size_t>(d->worker_id)] = Clock::now();
      }
    }
    if (!ok) {
      throw proto::ProtocolError(fmt::format(
          "coordinator: unexpected {} from {} during {}",
          proto::type_name(proto::type_of(env.message)), env.from.str(), what));
    }
  }
  const std::vector<int32_t> contributors = ctl_->contributors();
  for (int64_t k = 0; k < num_servers_; ++k) {
    transport_.send(net::server_endpoint(static_cast<int32_t>(k)),
                    proto::StepContributors{t, 0, contributors});
  }
  while (!ctl_->norms_complete()) {
    net::Envelope env = next(what + ": partial gradient norms");
    auto* m = std::get_if<proto::NormReport>(&env.message);
    if (m == nullptr || !ctl_->on_norm(*m)) {
      throw proto::ProtocolError(fmt::format(
          "coordinator: unexpected {} from {} during {}",
          proto::type_name(proto::type_of(env.message)), env.from.str(), what));
    }
  }
  check_finite(t);
  const double norm = ctl_->global_norm();
  for (int64_t k = 0; k < num_servers_; ++k) {
    transport_.send(net::server_endpoint(static_cast<int32_t>(k)),
                    proto::StepCommit{t, contributors, norm, ctl_->clip_coef()});
  }
  while (!ctl_->applied_complete()) {
    net::Envelope env = next(what + ": servers applying the update");
    auto* m = std::get_if<proto::StepApplied>(&env.message);
    if (m == nullptr || !ctl_->on_applied(*m)) {
      throw proto::ProtocolError(fmt::format(
          "coordinator: unexpected {} from {} during {}",
          proto::type_name(proto::type_of(env.message)), env.from.str(), what));
    }
    if (m->server_id >= 0 && m->server_id < num_servers_) {
      server_applied_[static_cast<size_t>(m->server_id)] = *m;
    }
  }
  // "wait": from a worker's report (its pushes done) to the step applied everywhere, averaged.
  const auto applied_at = Clock::now();
  double wait_sum = 0.0;
  for (const auto& at : worker_done_at_) {
    wait_sum += std::chrono::duration<double>(applied_at - at).count();
  }
  last_wait_s_ = num_workers_ > 0 ? wait_sum / static_cast<double>(num_workers_) : 0.0;
  spdlog::debug("step {}: slowest worker pull {:.4f} s, compute {:.4f} s; step {:.4f} s", t + 1,
                ctl_->max_pull_s(), ctl_->max_compute_s(),
                std::chrono::duration<double>(Clock::now() - step_start).count());
  last_step_tokens_ = ctl_->tokens();
  summary_.tokens_seen += last_step_tokens_;
  summary_.final_loss = ctl_->loss();
  summary_.final_step = t + 1;
  update_status(t + 1, std::chrono::duration<double>(Clock::now() - step_start).count());
}

void CoordinatorRun::check_finite(int64_t t) {
  const double loss = ctl_->loss();
  const std::optional<int64_t> bad = ctl_->first_nonfinite();
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
  r.loss = ctl_->loss();
  r.lr = ctl_->lr();
  r.tokens = summary_.tokens_seen;
  r.elapsed_s = std::chrono::duration<double>(now - t_start_).count();
  const double dt = std::chrono::duration<double>(now - t_last_log_).count();
  r.tokens_per_s = dt > 0 ? static_cast<double>(summary_.tokens_seen - tokens_at_last_log_) / dt
                          : 0.0;
  log_->step(r);
  const int64_t done = step - summary_.start_step;
  const double eta = done > 0 ? r.elapsed_s / static_cast<double>(done) *
                                    static_cast<double>(steps_ - step)
                              : 0.0;
  spdlog::info("{}", progress_line(r, steps_, eta));
  t_last_log_ = now;
  tokens_at_last_log_ = summary_.tokens_seen;
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
  std::map<int32_t, std::pair<int64_t, int64_t>> assigned;  // worker → its batches [b, e)
  const auto split = split_batch(n, num_workers_);
  for (int64_t w = 0; w < num_workers_; ++w) {
    const auto [b, e] = split[static_cast<size_t>(w)];
    if (b == e) continue;
    const auto worker = static_cast<int32_t>(w);
    assigned[worker] = {b, e};
    transport_.send(net::worker_endpoint(worker),
                    proto::EvalBegin{id, step, batches[static_cast<size_t>(b)].first,
                                     batches[static_cast<size_t>(e - 1)].second, batch});
  }
  const std::string what = fmt::format("the validation of step {}", step);
  double slowest_s = 0.0;
  while (!assigned.empty()) {
    net::Envelope env = next(what);
    auto* d = std::get_if<proto::EvalDone>(&env.message);
    const auto it = d != nullptr ? assigned.find(d->worker_id) : assigned.end();
    if (it == assigned.end() || d->request_id != id || d->version != step ||
        env.from != net::worker_endpoint(d->worker_id) ||
        d->window_begin != batches[static_cast<size_t>(it->second.first)].first ||
        static_cast<int64_t>(d->loss_sums.size()) != it->second.second - it->second.first) {
      throw proto::ProtocolError(fmt::format("coordinator: unexpected {} from {} during {}",
                                             proto::type_name(proto::type_of(env.message)),
                                             env.from.str(), what));
    }
    std::copy(d->loss_sums.begin(), d->loss_sums.end(), sums.begin() + it->second.first);
    std::copy(d->tokens.begin(), d->tokens.end(), tokens.begin() + it->second.first);
    slowest_s = std::max(slowest_s, d->eval_s);
    assigned.erase(it);
  }
  const double val = combine_val_batches(sums, tokens).mean();
  log_->eval(step, val);
  spdlog::info("step {}/{} | val_loss {:.4f} ({} windows of {} on {} worker(s); slowest {:.2f} s, "
               "{:.2f} s in all)",
               step, steps_, val, val_windows_, cfg_.data.val, std::min(n, num_workers_),
               slowest_s, std::chrono::duration<double>(Clock::now() - t0).count());
  summary_.final_val_loss = val;
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
  std::vector<bool> have(static_cast<size_t>(num_servers_), false);
  double slowest_s = 0.0;
  for (int64_t done = 0; done < num_servers_;) {
    net::Envelope env = next(fmt::format("checkpoint shards of step {}", step));
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
  CheckpointMeta meta;
  meta.step = step;
  meta.tokens_seen = summary_.tokens_seen;
  meta.config_yaml = cfg_.to_yaml();
  meta.layout_hash = layout_.hash();
  meta.tokenizer_json = o_.tokenizer_json;
  meta.data = plan_->state();
  summary_.last_checkpoint = finish_sharded_checkpoint(cfg_.run.dir, tmp, layout_, meta,
                                                       num_servers_, cfg_.checkpoint.keep);
  spdlog::info("step {}/{} | checkpoint {} ({} shards; slowest shard {:.3f} s, {:.3f} s in all)",
               step, steps_, summary_.last_checkpoint, num_servers_, slowest_s,
               std::chrono::duration<double>(Clock::now() - t0).count());
  if (o_.status != nullptr) {
    o_.status->update([step](JobStatus& s) { s.last_checkpoint_step = step; });
  }
  t_last_log_ = Clock::now();
  tokens_at_last_log_ = summary_.tokens_seen;
}

void CoordinatorRun::init_status() {
  worker_done_.assign(static_cast<size_t>(num_workers_), proto::WorkerStepDone{});
  worker_done_at_.assign(static_cast<size_t>(num_workers_), Clock::now());
  server_applied_.assign(static_cast<size_t>(num_servers_), proto::StepApplied{});
  for (int64_t w = 0; w < num_workers_; ++w) worker_done_[static_cast<size_t>(w)].worker_id =
      static_cast<int32_t>(w);
  if (o_.status == nullptr) return;
  const int64_t start = summary_.start_step;
  o_.status->update([&](JobStatus& s) {
    s.step = start;
    s.loss = std::numeric_limits<double>::quiet_NaN();
    s.membership_epoch = 0;
    s.members.clear();
    auto add = [&](net::Endpoint e) {
      MemberStatus m;
      m.id = e.id;
      m.role = e.role;
      m.host = o_.member_host ? o_.member_host(e) : "local";
      if (m.host.empty()) m.host = "local";
      m.step = start;
      m.loss = std::numeric_limits<double>::quiet_NaN();
      s.members.push_back(m);
    };
    add(net::coordinator_endpoint());
    for (int64_t k = 0; k < num_servers_; ++k) add(net::server_endpoint(static_cast<int32_t>(k)));
    for (int64_t w = 0; w < num_workers_; ++w) add(net::worker_endpoint(static_cast<int32_t>(w)));
  });
}

void CoordinatorRun::update_status(int64_t step, double step_s) {
  if (o_.status == nullptr) return;
  const auto now = Clock::now();
  const double loss = ctl_->loss();
  const double tps = step_s > 0 ? static_cast<double>(last_step_tokens_) / step_s : 0.0;
  StepSeconds phases;
  uint64_t pushed = 0, pulled = 0;
  for (const auto& d : worker_done_) {
    phases.compute += d.compute_s;
    phases.push += d.push_s;
    phases.pull += d.pull_s;
    pushed += d.bytes_pushed;
    pulled += d.bytes_pulled;
  }
  if (num_workers_ > 0) {
    const auto n = static_cast<double>(num_workers_);
    phases.compute /= n;
    phases.push /= n;
    phases.pull /= n;
  }
  phases.wait = last_wait_s_;
  o_.status->update([&](JobStatus& s) {
    s.step = step;
    s.loss = loss;
    s.tokens_per_second = tps;
    s.bytes_pushed_total = pushed;
    s.bytes_pulled_total = pulled;
    s.step_seconds = phases;
    s.loss_history.push_back({step, loss});
    if (s.loss_history.size() > 4096) {  // keep every other point: bounded, still the whole run
      std::vector<LossPoint> thin;
      for (size_t i = 0; i < s.loss_history.size(); i += 2) thin.push_back(s.loss_history[i]);
      s.loss_history = std::move(thin);
    }
    for (auto& m : s.members) {
      const net::Endpoint e{m.role, m.id};
      const auto seen = last_seen_.find(e);
      m.heartbeat_age_s =
          seen == last_seen_.end() ? 0.0 : std::chrono::duration<double>(now - seen->second).count();
      if (m.role == net::Role::kCoordinator) {
        m.step = step;
        m.loss = loss;
        m.tokens_per_second = tps;
        m.bytes_pushed = pushed;
        m.bytes_pulled = pulled;
      } else if (m.role == net::Role::kWorker && m.id >= 0 && m.id < num_workers_) {
        const auto& d = worker_done_[static_cast<size_t>(m.id)];
        m.step = d.step + 1;
        m.loss = d.tokens > 0 ? d.loss_sum / static_cast<double>(d.tokens)
                              : std::numeric_limits<double>::quiet_NaN();
        m.tokens_per_second = step_s > 0 ? static_cast<double>(d.tokens) / step_s : 0.0;
        m.bytes_pushed = d.bytes_pushed;
        m.bytes_pulled = d.bytes_pulled;
      } else if (m.role == net::Role::kServer && m.id >= 0 && m.id < num_servers_) {
        const auto& a = server_applied_[static_cast<size_t>(m.id)];
        m.step = a.version;
        m.bytes_pushed = a.bytes_pushed;
        m.bytes_pulled = a.bytes_pulled;
      }
    }
  });
}

void CoordinatorRun::broadcast_shutdown(const std::string& reason) {
  for (int64_t k = 0; k < num_servers_; ++k) {
    transport_.send(net::server_endpoint(static_cast<int32_t>(k)), proto::Shutdown{reason});
  }
  for (int64_t w = 0; w < num_workers_; ++w) {
    transport_.send(net::worker_endpoint(static_cast<int32_t>(w)), proto::Shutdown{reason});
  }
}

RunSummary CoordinatorRun::run() {
  t_start_ = Clock::now();
  StartState st = load_start_state(cfg_, layout_);
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
  if (!cfg_.data.val.empty()) {
    const TokenFile val = TokenFile::open(cfg_.data.val);
    val_windows_ = val_window_count(val.num_windows(layout_.dims().T), cfg_.train.eval_windows);
    if (val_windows_ < 1) {
      throw DataError(fmt::format("{} (data.val) has no complete window of {} tokens",
                                  cfg_.data.val, layout_.dims().T + 1));
    }
  }
  start_servers(st);
  init_status();

  if (summary_.start_step >= steps_) {
    spdlog::info("nothing to do: the checkpoint is at step {}, train.steps is {}",
                 summary_.start_step, steps_);
    broadcast_shutdown("nothing to do");
    return summary_;
  }
  std::vector<int32_t> workers(static_cast<size_t>(num_workers_));
  std::iota(workers.begin(), workers.end(), 0);
  ctl_.emplace(num_servers_, workers, cfg_.optim.grad_clip);
  log_.emplace(cfg_.run.dir, /*append=*/summary_.start_step > 0);
  t_last_log_ = Clock::now();
  tokens_at_last_log_ = summary_.tokens_seen;

  for (int64_t t = summary_.start_step; t < steps_; ++t) {
    run_step(t);
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
    if (scheduler_.due(step) || stop) checkpoint(step);
    if (stop) {
      spdlog::info("stopping at step {}/{} as asked; `checkpoint.resume: auto` continues from "
                   "the checkpoint",
                   step, steps_);
      summary_.interrupted = true;
      break;
    }
  }
  broadcast_shutdown(summary_.interrupted ? "stopped" : "training finished");
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
                           net::Transport& transport) {
  CoordinatorRun run(options, layout, transport);
  try {
    return run.run();
  } catch (const net::TransportClosed&) {
    throw;
  } catch (const std::exception& e) {
    // Tell every role to stop (over TCP this is how they learn; in threads mode the job also
    // closes the fabric). Best effort: the peer that failed may be gone.
    const std::string reason = fmt::format("coordinator stopping: {}", e.what());
    for (int64_t k = 0; k < static_cast<int64_t>(options.server_ranges.size()); ++k) {
      try {
        transport.send(net::server_endpoint(static_cast<int32_t>(k)), proto::Shutdown{reason});
      } catch (const std::exception&) {
      }
    }
    for (int64_t w = 0; w < options.config.cluster.workers; ++w) {
      try {
        transport.send(net::worker_endpoint(static_cast<int32_t>(w)), proto::Shutdown{reason});
      } catch (const std::exception&) {
      }
    }
    throw;
  }
}

}  // namespace ptrain
