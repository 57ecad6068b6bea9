// The few lines `ptrain run` ends on: how far the loss came (validation loss from ln V, what a
// model that knows nothing scores, to the last evaluation, with its perplexity), how long it took
// and how fast, where the checkpoint, the report and the logs are, and the commands to try next.
// Read from what the run left in RUN_DIR (train.jsonl, checkpoints/latest, report.html, logs/), so
// it is the same for every launch and for a resumed run (the whole run, resumes included).
#pragma once

#include "common/config/config.hpp"

#include <string>

namespace ptrain {

// The summary text (several lines, each ending in '\n'); "" when train.jsonl holds no step.
// `config_path`: the CONFIG the user gave (for the next commands). Never throws on a missing or
// unreadable piece: that line is left out.
std::string run_summary(const Config& config, const std::string& config_path);

// `path` as the user would type it from the working directory: relative when it lies below it.
std::string display_path(const std::string& path);

}  // namespace ptrain
