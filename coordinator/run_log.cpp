#include "coordinator/run_log.hpp"

#include "common/error.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstring>

namespace ptrain {

RunLog::RunLog(const std::string& run_dir, bool append) : path_(run_dir + "/train.jsonl") {
  out_.open(path_, append ? std::ios::app : std::ios::trunc);
  if (!out_) {
    throw IoError(fmt::format("cannot open {} for writing: {}", path_, std::strerror(errno)));
  }
}

void RunLog::write_line(const std::string& line) {
  out_ << line << '\n';
  out_.flush();
  if (!out_) throw IoError(fmt::format("cannot write {}", path_));
}

void RunLog::step(const StepRecord& r) {
  nlohmann::ordered_json j;
  j["step"] = r.step;
  j["loss"] = r.loss;
  j["lr"] = r.lr;
  j["tokens"] = r.tokens;
  j["elapsed_s"] = r.elapsed_s;
  j["tokens_per_s"] = r.tokens_per_s;
  write_line(j.dump());
}

void RunLog::eval(int64_t step, double val_loss) {
  nlohmann::ordered_json j;
  j["step"] = step;
  j["val_loss"] = val_loss;
  write_line(j.dump());
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  if (s < 60) return fmt::format("{:.1f}s", s);
  const auto total = static_cast<int64_t>(std::llround(s));
  const int64_t h = total / 3600, m = (total / 60) % 60, sec = total % 60;
  if (h > 0) return fmt::format("{}h{:02}m{:02}s", h, m, sec);
  return fmt::format("{}m{:02}s", m, sec);
}

std::string progress_line(const StepRecord& r, int64_t total_steps, double eta_s) {
  return fmt::format("step {}/{} | loss {:.4f} | lr {:.2e} | {:.0f} tok/s | elapsed {} | ETA {}",
                     r.step, total_steps, r.loss, r.lr, r.tokens_per_s,
                     format_duration(r.elapsed_s), format_duration(eta_s));
}

}  // namespace ptrain
