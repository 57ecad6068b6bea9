// The status endpoint's pure half: the snapshot's comparisons, its renderers (Prometheus text,
// JSON and back, the page) and the request router. No Asio or Beast here, so that this half builds
// on its own (the request-path fuzz target compiles it with clang, without the server).
#include "status/status_http.hpp"

#include "common/error.hpp"
#include "common/util/fs.hpp"
#include "ptrain/build_config.hpp"
#include "status/status_page.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>

namespace ptrain {
namespace {

constexpr const char* kRoleNames[3] = {"coordinator", "server", "worker"};

const char* role_name(net::Role r) {
  const auto i = static_cast<size_t>(r);
  return i < 3 ? kRoleNames[i] : "unknown";
}

net::Role role_from_name(const std::string& name) {
  for (size_t i = 0; i < 3; ++i) {
    if (name == kRoleNames[i]) return static_cast<net::Role>(i);
  }
  throw IoError(fmt::format("status JSON: unknown role \"{}\"", name));
}

// A float as the Prometheus text format wants it (Go's ParseFloat syntax).
std::string prom_value(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", x);
}

bool same_double(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// NaN ↔ null in JSON.
nlohmann::json num(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(); }
double num_from(const nlohmann::json& j) {
  return j.is_null() ? std::nan("") : j.get<double>();
}

}  // namespace

bool JobStatus::operator==(const JobStatus& o) const {
  auto same_member = [](const MemberStatus& a, const MemberStatus& b) {
    return a.id == b.id && a.role == b.role && a.host == b.host &&
           a.heartbeat_age_s == b.heartbeat_age_s && a.step == b.step && same_double(a.loss, b.loss) &&
           a.tokens_per_second == b.tokens_per_second && a.bytes_pushed == b.bytes_pushed &&
           a.bytes_pulled == b.bytes_pulled;
  };
  auto same_point = [](const LossPoint& a, const LossPoint& b) {
    return a.step == b.step && same_double(a.loss, b.loss);
  };
  return step == o.step && same_double(loss, o.loss) && tokens_per_second == o.tokens_per_second &&
         membership_epoch == o.membership_epoch &&
         std::equal(members.begin(), members.end(), o.members.begin(), o.members.end(),
                    same_member) &&
         bytes_pushed_total == o.bytes_pushed_total && bytes_pulled_total == o.bytes_pulled_total &&
         step_seconds == o.step_seconds && same_double(bytes_per_token, o.bytes_per_token) &&
         same_double(push_staleness_max, o.push_staleness_max) &&
         same_double(push_staleness_mean, o.push_staleness_mean) &&
         last_checkpoint_step == o.last_checkpoint_step &&
         std::equal(loss_history.begin(), loss_history.end(), o.loss_history.begin(),
                    o.loss_history.end(), same_point) &&
         run_dir == o.run_dir && start_step == o.start_step && target_steps == o.target_steps &&
         tokens_total == o.tokens_total && same_double(lr, o.lr) && same_double(grad_norm, o.grad_norm) &&
         same_double(accuracy, o.accuracy) &&
         same_double(val_loss, o.val_loss) && val_step == o.val_step && elapsed_s == o.elapsed_s &&
         checkpoints == o.checkpoints && events == o.events && finished == o.finished &&
         membership_changes == o.membership_changes &&
         membership_events == o.membership_events && waiting == o.waiting;
}

void add_status_event(JobStatus& s, const std::string& text) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  s.events.push_back(fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z {}", tm.tm_year + 1900, tm.tm_mon + 1,
                                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, text));
  if (s.events.size() > 50) s.events.erase(s.events.begin(), s.events.end() - 50);
}

std::array<int64_t, 3> count_members(const JobStatus& s) {
  std::array<int64_t, 3> n{};
  for (const auto& m : s.members) {
    const auto i = static_cast<size_t>(m.role);
    if (i < 3) ++n[i];
  }
  return n;
}

// ---- renderers -------------------------------------------------------------------------------

std::string render_prometheus(const JobStatus& s) {
  std::string out;
  auto it = std::back_inserter(out);
  auto head = [&out](const char* name, const char* type, const char* help) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto one = [&](const char* name, const char* type, const char* help, const std::string& value) {
    head(name, type, help);
    fmt::format_to(it, "{} {}\n", name, value);
  };
  head("ptrain_build_info", "gauge", "Always 1; the labels name the ptrain build.");
  fmt::format_to(it, "ptrain_build_info{{version=\"{}\"}} 1\n", PTRAIN_VERSION);
  one("ptrain_step", "gauge", "Optimizer steps applied.", std::to_string(s.step));
  one("ptrain_target_steps", "gauge", "Optimizer steps the run trains to (train.steps).",
      std::to_string(s.target_steps));
  one("ptrain_tokens_total", "counter", "Target tokens trained on, resumes included.",
      std::to_string(s.tokens_total));
  one("ptrain_loss", "gauge", "Mean training loss (nats per token) of the last applied step.", prom_value(s.loss));
  one("ptrain_val_loss", "gauge", "Validation loss (nats per token) of the last evaluation.", prom_value(s.val_loss));
  one("ptrain_learning_rate", "gauge", "Learning rate of the last applied step.", prom_value(s.lr));
  one("ptrain_grad_norm", "gauge", "Global gradient norm of the last applied step, before clipping.",
      prom_value(s.grad_norm));
  one("ptrain_elapsed_seconds", "gauge", "Training time of the run, continued across resumes.",
      prom_value(s.elapsed_s));
  head("ptrain_members", "gauge", "Live members of the job by role.");
  const auto counts = count_members(s);
  for (size_t i = 0; i < 3; ++i) fmt::format_to(it, "ptrain_members{{role=\"{}\"}} {}\n", kRoleNames[i], counts[i]);
  one("ptrain_membership_epoch", "gauge", "Membership epoch (bumps on every join or leave).",
      std::to_string(s.membership_epoch));
  one("ptrain_pushed_bytes_total", "counter", "Gradient bytes pushed by workers to servers since this run started.",
      std::to_string(s.bytes_pushed_total));
  one("ptrain_pulled_bytes_total", "counter", "Weight bytes pulled by workers from servers since this run started.",
      std::to_string(s.bytes_pulled_total));
  one("ptrain_bytes_per_token", "gauge",
      "Data-plane bytes (gradient pushes + weight pulls) per target token of the last applied step.",
      prom_value(s.bytes_per_token));
  one("ptrain_push_staleness_max", "gauge",
      "cluster.sync ssp/async: most updates applied between a push's read of the weights and its "
      "own update, over this run (NaN under bsp and local).",
      prom_value(s.push_staleness_max));
  one("ptrain_push_staleness_mean", "gauge",
      "cluster.sync ssp/async: mean of that staleness over this run's pushes (NaN under bsp and "
      "local).",
      prom_value(s.push_staleness_mean));
  head("ptrain_step_phase_seconds", "gauge", "Seconds of the last step by phase (mean over workers).");
  const std::pair<const char*, double> phases[] = {{"compute", s.step_seconds.compute},
                                                   {"push", s.step_seconds.push},
                                                   {"wait", s.step_seconds.wait},
                                                   {"pull", s.step_seconds.pull}};
  for (const auto& [phase, v] : phases) {
    fmt::format_to(it, "ptrain_step_phase_seconds{{phase=\"{}\"}} {}\n", phase, prom_value(v));
  }
  one("ptrain_last_checkpoint_step", "gauge", "Step of the last published checkpoint (-1 before the first).",
      std::to_string(s.last_checkpoint_step));
  // Per member: one series per {role, id, host}.
  auto label = [](const MemberStatus& m) {
    std::string host;
    for (char c : m.host) {  // label values escape \, " and newline
      if (c == '\\' || c == '"') host.push_back('\\');
      if (c == '\n') {
        host += "\\n";
        continue;
      }
      host.push_back(c);
    }
    return fmt::format("{{role=\"{}\",id=\"{}\",host=\"{}\"}}", role_name(m.role), m.id, host);
  };
  auto per_member = [&](const char* name, const char* type, const char* help, auto value) {
    head(name, type, help);
    for (const auto& m : s.members) fmt::format_to(it, "{}{} {}\n", name, label(m), value(m));
  };
  per_member("ptrain_member_step", "gauge", "A member's last completed step.",
             [](const MemberStatus& m) { return std::to_string(m.step); });
  per_member("ptrain_member_heartbeat_age_seconds", "gauge", "Seconds since the coordinator last heard from a member.",
             [](const MemberStatus& m) { return prom_value(m.heartbeat_age_s); });
  per_member("ptrain_member_pushed_bytes_total", "counter",
             "Gradient bytes a worker sent (a server: received) since it started.",
             [](const MemberStatus& m) { return std::to_string(m.bytes_pushed); });
  per_member("ptrain_member_pulled_bytes_total", "counter",
             "Weight bytes a worker received (a server: sent) since it started.",
             [](const MemberStatus& m) { return std::to_string(m.bytes_pulled); });
  head("ptrain_membership_changes_total", "counter",
       "Membership changes by kind (join, leave, lost, restart, resume).");
  for (const char* kind : {"join", "leave", "lost", "restart", "resume"}) {
    const auto found = s.membership_changes.find(kind);
    fmt::format_to(it, "ptrain_membership_changes_total{{kind=\"{}\"}} {}\n", kind,
                   found == s.membership_changes.end() ? 0 : found->second);
  }
  head("ptrain_waiting_for_workers", "gauge",
       "1 while the job waits for workers (fewer than cluster.min_workers), else 0.");
  fmt::format_to(it, "ptrain_waiting_for_workers {}\n", s.waiting.empty() ? 0 : 1);
  return out;
}

std::string render_status_json(const JobStatus& s) {
  using nlohmann::json;
  const auto counts = count_members(s);
  json members = json::array();
  for (const auto& m : s.members) {
    members.push_back({{"id", m.id},
                       {"role", role_name(m.role)},
                       {"host", m.host},
                       {"heartbeat_age_s", num(m.heartbeat_age_s)},
                       {"step", m.step},
                       {"loss", num(m.loss)},
                       {"tokens_per_second", num(m.tokens_per_second)},
                       {"bytes_pushed", m.bytes_pushed},
                       {"bytes_pulled", m.bytes_pulled}});
  }
  json history = json::array();
  for (const auto& p : s.loss_history) history.push_back(json::array({p.step, num(p.loss)}));
  json membership_events = json::array();
  for (const auto& e : s.membership_events) {
    membership_events.push_back({{"kind", e.kind}, {"role", e.role}, {"id", e.id}, {"step", e.step},
                      {"time", e.time}, {"text", e.text}});
  }
  json j = {
      {"step", s.step},
      {"loss", num(s.loss)},
      {"tokens_per_second", num(s.tokens_per_second)},
      {"membership_epoch", s.membership_epoch},
      {"members_by_role",
       {{"coordinator", counts[0]}, {"server", counts[1]}, {"worker", counts[2]}}},
      {"bytes_pushed_total", s.bytes_pushed_total},
      {"bytes_pulled_total", s.bytes_pulled_total},
      {"step_seconds",
       {{"compute", num(s.step_seconds.compute)},
        {"push", num(s.step_seconds.push)},
        {"wait", num(s.step_seconds.wait)},
        {"pull", num(s.step_seconds.pull)}}},
      {"bytes_per_token", num(s.bytes_per_token)},
      {"push_staleness_max", num(s.push_staleness_max)},
      {"push_staleness_mean", num(s.push_staleness_mean)},
      {"last_checkpoint_step", s.last_checkpoint_step},
      {"members", std::move(members)},
      {"loss_history", std::move(history)},
      {"run_dir", s.run_dir},
      {"run_name", std::filesystem::path(s.run_dir).filename().string()},
      {"start_step", s.start_step},
      {"target_steps", s.target_steps},
      {"tokens_total", s.tokens_total},
      {"lr", num(s.lr)},
      {"grad_norm", num(s.grad_norm)},
      {"val_loss", num(s.val_loss)},
      {"val_step", s.val_step},
      {"elapsed_s", num(s.elapsed_s)},
      {"checkpoints", s.checkpoints},
      {"events", s.events},
      {"finished", s.finished},
      {"membership_changes", s.membership_changes},
      {"membership_events", std::move(membership_events)},
      {"waiting", s.waiting},
  };
  // Masked-LM runs only: a GPT run's /status has no "accuracy" key.
  if (std::isfinite(s.accuracy)) j["accuracy"] = s.accuracy;
  return j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

JobStatus parse_status_json(std::string_view text) {
  try {
    const auto j = nlohmann::json::parse(text);
    JobStatus s;
    s.step = j.at("step").get<int64_t>();
    s.loss = num_from(j.at("loss"));
    s.tokens_per_second = num_from(j.at("tokens_per_second"));
    s.membership_epoch = j.at("membership_epoch").get<int64_t>();
    s.bytes_pushed_total = j.at("bytes_pushed_total").get<uint64_t>();
    s.bytes_pulled_total = j.at("bytes_pulled_total").get<uint64_t>();
    const auto& ss = j.at("step_seconds");
    s.step_seconds = {num_from(ss.at("compute")), num_from(ss.at("push")),
                      num_from(ss.at("wait")), num_from(ss.at("pull"))};
    // Absent from a status.json written before the figure existed.
    if (j.contains("bytes_per_token")) s.bytes_per_token = num_from(j.at("bytes_per_token"));
    if (j.contains("push_staleness_max")) {
      s.push_staleness_max = num_from(j.at("push_staleness_max"));
      s.push_staleness_mean = num_from(j.at("push_staleness_mean"));
    }
    s.last_checkpoint_step = j.at("last_checkpoint_step").get<int64_t>();
    for (const auto& m : j.at("members")) {
      MemberStatus ms;
      ms.id = m.at("id").get<int32_t>();
      ms.role = role_from_name(m.at("role").get<std::string>());
      ms.host = m.at("host").get<std::string>();
      ms.heartbeat_age_s = num_from(m.at("heartbeat_age_s"));
      ms.step = m.at("step").get<int64_t>();
      ms.loss = num_from(m.at("loss"));
      ms.tokens_per_second = num_from(m.at("tokens_per_second"));
      ms.bytes_pushed = m.at("bytes_pushed").get<uint64_t>();
      ms.bytes_pulled = m.at("bytes_pulled").get<uint64_t>();
      s.members.push_back(std::move(ms));
    }
    for (const auto& p : j.at("loss_history")) {
      s.loss_history.push_back({p.at(0).get<int64_t>(), num_from(p.at(1))});
    }
    s.run_dir = j.at("run_dir").get<std::string>();
    s.start_step = j.at("start_step").get<int64_t>();
    s.target_steps = j.at("target_steps").get<int64_t>();
    s.tokens_total = j.at("tokens_total").get<int64_t>();
    s.lr = num_from(j.at("lr"));
    s.grad_norm = num_from(j.at("grad_norm"));
    if (j.contains("accuracy")) s.accuracy = num_from(j.at("accuracy"));
    s.val_loss = num_from(j.at("val_loss"));
    s.val_step = j.at("val_step").get<int64_t>();
    s.elapsed_s = num_from(j.at("elapsed_s"));
    s.checkpoints = j.at("checkpoints").get<std::vector<int64_t>>();
    s.events = j.at("events").get<std::vector<std::string>>();
    s.finished = j.at("finished").get<bool>();
    s.membership_changes = j.at("membership_changes").get<std::map<std::string, int64_t>>();
    for (const auto& e : j.at("membership_events")) {
      s.membership_events.push_back({e.at("kind").get<std::string>(), e.at("role").get<std::string>(),
                          e.at("id").get<int64_t>(), e.at("step").get<int64_t>(),
                          e.at("time").get<double>(), e.at("text").get<std::string>()});
    }
    s.waiting = j.at("waiting").get<std::string>();
    return s;
  } catch (const nlohmann::json::exception& e) {
    throw IoError(fmt::format("status JSON: {}", e.what()));
  }
}

std::string render_status_html(const JobStatus& s) { return render_live_page(s); }

StatusReply route_status_request(std::string_view method, std::string_view target,
                                 const std::function<JobStatus()>& snapshot) {
  StatusReply r;
  if (method != "GET" && method != "HEAD") {
    r.status = 405;
    r.content_type = "text/plain; charset=utf-8";
    r.body = "method not allowed: the status endpoint is read-only (GET)\n";
    r.allow = "GET, HEAD";
    return r;
  }
  const std::string_view path = target.substr(0, target.find('?'));
  enum class Page { kMetrics, kStatus, kHtml, kTrainLog } page;
  if (path == "/train.jsonl") {
    page = Page::kTrainLog;
  } else if (path == "/metrics") {
    page = Page::kMetrics;
  } else if (path == "/status") {
    page = Page::kStatus;
  } else if (path == "/" || path == "/index.html") {
    page = Page::kHtml;
  } else {
    r.status = 404;
    r.content_type = "text/plain; charset=utf-8";
    r.body = "not found: try /metrics, /status, /train.jsonl or /\n";
    return r;
  }
  JobStatus s;
  try {
    s = snapshot();
  } catch (const std::exception& e) {
    r.status = 500;
    r.content_type = "text/plain; charset=utf-8";
    r.body = fmt::format("cannot take a status snapshot: {}\n", e.what());
    return r;
  }
  switch (page) {
    case Page::kMetrics:
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = render_prometheus(s);
      break;
    case Page::kStatus:
      r.content_type = "application/json";
      r.body = render_status_json(s);
      break;
    case Page::kHtml:
      r.content_type = "text/html; charset=utf-8";
      r.body = render_status_html(s);
      break;
    case Page::kTrainLog:
      r.content_type = "application/x-ndjson";
      if (s.run_dir.empty()) break;  // nothing logged: an empty log
      try {
        r.body = read_file(s.run_dir + "/train.jsonl");
      } catch (const IoError&) {
        // Not written yet (the first logged step has not happened): an empty log.
      }
      break;
  }
  return r;
}

}  // namespace ptrain
