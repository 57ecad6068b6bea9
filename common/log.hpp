// Logging: spdlog to stderr (stdout stays free for --json output). One place sets the format.
#pragma once

#include <spdlog/spdlog.h>

namespace ptrain {
// Sets the process-wide logger: stderr, "[time] [level] message", level from `verbose`.
void init_logging(bool verbose = false);
}  // namespace ptrain
