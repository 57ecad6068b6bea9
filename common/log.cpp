#include "common/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace ptrain {
void init_logging(bool verbose) {
  auto logger = spdlog::stderr_color_mt("ptrain");
  logger->set_pattern(log_pattern());
  logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
  spdlog::set_default_logger(logger);
}
std::string log_pattern(const std::string& tag) {
  // ISO 8601 date and time with the UTC offset: a line read from a log days later, or beside
  // another host's, still says when it happened.
  return "[%Y-%m-%dT%H:%M:%S.%e%z] [%^%l%$] " + (tag.empty() ? std::string() : tag + " ") + "%v";
}

bool LogLimiter::allow(int64_t& held) {
  std::lock_guard lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (now - window_start_ >= window_) {
    window_start_ = now;
    in_window_ = 0;
  }
  if (in_window_ >= burst_) {
    ++held_;
    return false;
  }
  ++in_window_;
  held = held_;
  held_ = 0;
  return true;
}

std::string LogLimiter::held_note(int64_t held) {
  return held > 0 ? fmt::format(" ({} more like this not logged)", held) : std::string();
}

}  // namespace ptrain
