// The data ledger's writer and checker (ledger.hpp).
#include "common/io/ledger.hpp"

#include "common/config/config.hpp"
#include "common/error.hpp"
#include "common/io/run_checkpoints.hpp"
#include "common/io/token_file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace ptrain {
namespace {

namespace fs = std::filesystem;

std::string ledger_path(const std::string& run_dir) {
  return (fs::path(run_dir) / "ledger.jsonl").string();
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int open_append(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  return fd;
}

// One line in one write(): lines of concurrent appenders never interleave.
void write_line(int fd, const std::string& path, const nlohmann::json& j) {
  const std::string line = j.dump() + "\n";
  const ssize_t n = ::write(fd, line.data(), line.size());
  if (n != static_cast<ssize_t>(line.size())) {
    throw IoError(fmt::format("cannot append to {}: {}", path,
                              n < 0 ? std::strerror(errno) : "short write"));
  }
}

nlohmann::json event_json(const std::string& kind, const std::string& role, int64_t id,
                          int64_t step) {
  return {{"event", kind}, {"role", role}, {"id", id}, {"step", step}, {"time", unix_seconds()}};
}

}  // namespace

LedgerWriter::LedgerWriter(const std::string& run_dir, int64_t resume_step)
    : path_(ledger_path(run_dir)) {
  // Keep the lines up to the resume step (steps past it are run again), rewritten atomically.
  std::error_code ec;
  if (fs::exists(path_, ec)) {
    std::ifstream in(path_);
    std::string kept, line;
    bool dropped = false;
    for (int64_t no = 1; std::getline(in, line); ++no) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      // A torn last line (a crash mid-write) or a line past the resume step goes.
      if (j.is_discarded() || !j.is_object() || !j.contains("step") ||
          !j["step"].is_number_integer() || j["step"].get<int64_t>() > resume_step) {
        dropped = true;
        continue;
      }
      kept += line + "\n";
    }
    if (dropped) {
      const std::string tmp = path_ + ".tmp";
      {
        std::ofstream out(tmp, std::ios::trunc);
        out << kept;
        if (!out.flush()) throw IoError(fmt::format("cannot write {}", tmp));
      }
      fs::rename(tmp, path_, ec);
      if (ec) throw IoError(fmt::format("cannot replace {}: {}", path_, ec.message()));
    }
  }
  fd_ = open_append(path_);
}

LedgerWriter::~LedgerWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void LedgerWriter::step(int64_t step, const std::vector<DataWindow>& windows,
                        const std::optional<PushRecord>& push) {
  // One line per data epoch, epochs in the order their first window was handed out.
  std::vector<int64_t> order;
  std::map<int64_t, std::vector<int64_t>> by_epoch;
  for (const DataWindow& w : windows) {
    auto [it, fresh] = by_epoch.try_emplace(w.epoch);
    if (fresh) order.push_back(w.epoch);
    it->second.push_back(w.window);
  }
  const double now = unix_seconds();
  for (int64_t e : order) {
    nlohmann::json line = {
        {"step", step}, {"data_epoch", e}, {"windows", by_epoch[e]}, {"time", now}};
    if (push) {
      line["worker"] = push->worker;
      line["base_version"] = push->base_version;
      line["staleness"] = push->staleness;
      line["ahead"] = push->ahead;
    }
    write_line(fd_, path_, line);
  }
}

void LedgerWriter::event(const std::string& kind, const std::string& role, int64_t id,
                         int64_t step) {
  write_line(fd_, path_, event_json(kind, role, id, step));
}

void append_ledger_event(const std::string& run_dir, const std::string& kind,
                         const std::string& role, int64_t id, int64_t step) {
  const std::string path = ledger_path(run_dir);
  const int fd = open_append(path);
  try {
    write_line(fd, path, event_json(kind, role, id, step));
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

std::string LedgerCheck::to_json() const {
  nlohmann::json j;
  j["ok"] = ok();
  j["num_windows"] = num_windows;
  j["last_step"] = last_step;
  j["step_lines"] = step_lines;
  j["events"] = events;
  nlohmann::json per = nlohmann::json::object();
  for (const auto& [e, n] : windows_per_epoch) per[std::to_string(e)] = n;
  j["windows_per_epoch"] = per;
  j["complete_epochs"] = complete_epochs;
  j["doubled"] = doubled;
  j["missing"] = missing;
  j["problems"] = problems;
  return j.dump();
}

LedgerCheck check_ledger(const std::string& path, int64_t num_windows,
                         const DataState& final_state, int64_t final_step) {
  std::ifstream in(path);
  if (!in) throw IoError(fmt::format("cannot read {}", path));
  LedgerCheck c;
  c.num_windows = num_windows;
  auto problem = [&c](std::string what) {
    if (c.problems.size() < 20) c.problems.push_back(std::move(what));
  };
  std::map<int64_t, std::set<int64_t>> seen;  // data epoch → windows applied
  std::string line;
  for (int64_t no = 1; std::getline(in, line); ++no) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    const std::string where = fmt::format("{}:{}", path, no);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") ||
        !j["step"].is_number_integer()) {
      throw IoError(fmt::format("{}: not a ledger line (a JSON object with an integer \"step\")",
                                where));
    }
    if (j.contains("event")) {
      c.events[j["event"].get<std::string>()]++;
      continue;
    }
    if (!j.contains("data_epoch") || !j.contains("windows") || !j["windows"].is_array()) {
      throw IoError(fmt::format("{}: a step line needs \"data_epoch\" and \"windows\"", where));
    }
    const auto step = j["step"].get<int64_t>();
    const auto epoch = j["data_epoch"].get<int64_t>();
    ++c.step_lines;
    c.last_step = std::max(c.last_step, step);
    for (const auto& w : j["windows"]) {
      const auto i = w.get<int64_t>();
      if (i < 0 || i >= num_windows) {
        problem(fmt::format("{}: step {} applied window {}, data.train has {} windows", where,
                            step, i, num_windows));
        continue;
      }
      if (!seen[epoch].insert(i).second) {
        ++c.doubled;
        problem(fmt::format("{}: step {} applied window {} of data epoch {} a second time", where,
                            step, i, epoch));
      }
    }
  }
  for (const auto& [e, s] : seen) c.windows_per_epoch[e] = static_cast<int64_t>(s.size());
  // Epochs before the cursor's: every window, except those still waiting in the returned pool.
  std::map<int64_t, std::set<int64_t>> pool;
  for (const DataWindow& w : final_state.returned) pool[w.epoch].insert(w.window);
  for (int64_t e = 0; e < final_state.epoch; ++e) {
    c.complete_epochs.push_back(e);
    const std::set<int64_t>& got = seen[e];
    const std::set<int64_t>& waiting = pool[e];
    for (int64_t i = 0; i < num_windows; ++i) {
      const bool applied = got.count(i) != 0;
      const bool pending = waiting.count(i) != 0;
      if (applied && pending) {
        ++c.doubled;
        problem(fmt::format("window {} of data epoch {} was applied and is still in the returned "
                            "pool",
                            i, e));
      } else if (!applied && !pending) {
        ++c.missing;
        problem(fmt::format("window {} of data epoch {} was never applied", i, e));
      }
    }
  }
  if (final_step >= 0 && c.last_step != final_step) {
    problem(fmt::format("the ledger's last step is {}, the final checkpoint's is {}", c.last_step,
                        final_step));
  }
  return c;
}

LedgerCheck check_run_ledger(const std::string& run_dir) {
  const std::optional<std::string> latest = find_latest_checkpoint(run_dir);
  if (!latest) throw IoError(fmt::format("{}: no checkpoint to check the ledger against", run_dir));
  const CheckpointMeta meta = read_checkpoint_meta(checkpoint_file(*latest));
  const Config cfg = parse_config_text(meta.config_yaml, *latest + " (its config)", "/");
  const TokenFile train = TokenFile::open(cfg.data.train);
  return check_ledger(ledger_path(run_dir), train.num_windows(cfg.model.seq_len), meta.data,
                      meta.step);
}

}  // namespace ptrain
