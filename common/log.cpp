#include "common/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace ptrain {
void init_logging(bool verbose) {
  auto logger = spdlog::stderr_color_mt("ptrain");
  logger->set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
  spdlog::set_default_logger(logger);
}
}  // namespace ptrain
