#include "coordinator/start_state.hpp"

#include "common/error.hpp"
#include "common/io/run_checkpoints.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace ptrain {

namespace {

StartState fresh(const Config& config) {
  StartState s;
  s.data = DataState{config.run.seed, 0, 0};
  return s;
}

}  // namespace

StartState load_start_state(const Config& config, const ParamLayout& layout) {
  const std::string& resume = config.checkpoint.resume;
  std::string path;
  if (resume == "never") {
    return fresh(config);
  } else if (resume == "auto") {
    std::optional<std::string> latest = find_latest_checkpoint(config.run.dir);
    if (!latest) return fresh(config);
    path = *latest;
  } else {
    path = resume;
  }
  // Resolved once: the servers read this very file even if `latest` moves meanwhile.
  const std::string file = checkpoint_file(path);
  const CheckpointMeta meta = read_checkpoint_meta(file);
  if (meta.layout_hash != layout.hash()) {
    throw CheckpointError(fmt::format(
        "{}: layout hash {} does not match this model's {}: the checkpoint was written for a "
        "different model config",
        file, meta.layout_hash, layout.hash()));
  }
  StartState s;
  s.step = meta.step;
  s.tokens_seen = meta.tokens_seen;
  s.data = meta.data;
  s.resumed_from = file;
  if (s.data.seed != config.run.seed) {
    spdlog::warn("resuming with the data order of {} (seed {}), not run.seed {}", path,
                 s.data.seed, config.run.seed);
  }
  return s;
}

}  // namespace ptrain
