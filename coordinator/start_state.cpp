#include "coordinator/start_state.hpp"

#include "common/error.hpp"
#include "worker/model/gpt.hpp"

#include <spdlog/spdlog.h>

namespace ptrain {

namespace {

StartState fresh(const Config& config, const ParamLayout& layout) {
  StartState s;
  const auto n = static_cast<size_t>(layout.total());
  s.params.assign(n, 0.0f);
  init_gpt_params(layout, config.run.seed, s.params);
  s.m.assign(n, 0.0f);
  s.v.assign(n, 0.0f);
  s.data = DataState{config.run.seed, 0, 0};
  return s;
}

}  // namespace

StartState load_start_state(const Config& config, const ParamLayout& layout) {
  const std::string& resume = config.checkpoint.resume;
  std::string path;
  if (resume == "never") {
    return fresh(config, layout);
  } else if (resume == "auto") {
    std::optional<std::string> latest = find_latest_checkpoint(config.run.dir);
    if (!latest) return fresh(config, layout);
    path = *latest;
  } else {
    path = resume;
  }
  CheckpointData d = read_checkpoint(path, layout, /*with_optimizer=*/true);
  StartState s;
  const auto n = static_cast<size_t>(layout.total());
  s.step = d.meta.step;
  s.tokens_seen = d.meta.tokens_seen;
  s.data = d.meta.data;
  s.params = std::move(d.params);
  s.m = d.m.empty() ? std::vector<float>(n, 0.0f) : std::move(d.m);
  s.v = d.v.empty() ? std::vector<float>(n, 0.0f) : std::move(d.v);
  PTRAIN_ENFORCE(s.params.size() == n && s.m.size() == n && s.v.size() == n,
                 "checkpoint {} holds {} floats, the layout {}", path, s.params.size(), n);
  s.resumed_from = checkpoint_file(path);
  if (s.data.seed != config.run.seed) {
    spdlog::warn("resuming with the data order of {} (seed {}), not run.seed {}", path,
                 s.data.seed, config.run.seed);
  }
  return s;
}

}  // namespace ptrain
