// Logging: spdlog to stderr (stdout stays free for --json output). One place sets the format.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

#include <chrono>
#include <cstdint>
#include <mutex>

namespace ptrain {
// Sets the process-wide logger: stderr, log_pattern(), level from `verbose`.
void init_logging(bool verbose = false);

// The one line format of every log: "[2026-03-01T14:02:03.123+00:00] [info] TAG message" (the
// date and time as ISO 8601, local time with its offset); `tag` ("" = none) goes before the message.
std::string log_pattern(const std::string& tag = "");

// Bounds how often one kind of line is logged (a flood of refused connections must not write
// megabytes of log): at most `burst` lines per `window`; the ones held back are counted and the
// next allowed line says how many. Thread-safe.
//   int64_t held = 0;
//   if (limiter.allow(held)) spdlog::warn("refused ...{}", LogLimiter::held_note(held));
class LogLimiter {
 public:
  explicit LogLimiter(int burst = 5, std::chrono::seconds window = std::chrono::seconds(10))
      : burst_(burst), window_(window) {}
  // Whether to log this occurrence; when true, `held` = occurrences not logged since the last
  // logged one.
  bool allow(int64_t& held);
  // " (N more like this not logged)" or "" when held is 0.
  static std::string held_note(int64_t held);

 private:
  std::mutex mu_;
  int burst_;
  std::chrono::seconds window_;
  std::chrono::steady_clock::time_point window_start_{};
  int in_window_ = 0;
  int64_t held_ = 0;
};
}  // namespace ptrain
