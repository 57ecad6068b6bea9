// train.jsonl and the progress line (run_log.hpp).
#include "coordinator/run_log.hpp"

#include "common/error.hpp"
#include "common/util/fs.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

namespace ptrain {

RunLog::RunLog(const std::string& run_dir, int64_t resume_step) : path_(run_dir + "/train.jsonl") {
  const bool append = resume_step > 0;
  if (append && std::filesystem::exists(path_)) {
    std::istringstream in(read_file(path_));
    std::string kept, line;
    int64_t dropped = 0;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
          j["step"].get<int64_t>() > resume_step) {
        ++dropped;
        continue;
      }
      if (j.contains("elapsed_s") && j["elapsed_s"].is_number()) elapsed_before_ = j["elapsed_s"].get<double>();
      kept += line + "\n";
    }
    if (dropped > 0) write_file_atomic(path_, kept);
  }
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
  if (r.accuracy) j["accuracy"] = *r.accuracy;
  j["lr"] = r.lr;
  j["grad_norm"] = r.grad_norm;
  j["clipped"] = r.clipped;
  j["tokens"] = r.tokens;
  j["tokens_per_s"] = r.tokens_per_s;
  j["step_s"] = r.step_s;
  j["bytes_per_token"] = r.bytes_per_token;
  j["compute_s"] = r.phase_s.compute;
  j["push_s"] = r.phase_s.push;
  j["wait_s"] = r.phase_s.wait;
  j["pull_s"] = r.phase_s.pull;
  j["elapsed_s"] = r.elapsed_s;
  j["time"] = iso8601_now();
  write_line(j.dump());
}

void RunLog::eval(int64_t step, double val_loss, double elapsed_s) {
  nlohmann::ordered_json j;
  j["step"] = step;
  j["val_loss"] = val_loss;
  j["val_ppl"] = std::exp(val_loss);
  j["elapsed_s"] = elapsed_s;
  j["time"] = iso8601_now();
  write_line(j.dump());
}

std::string iso8601_now() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec, ms % 1000);
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
