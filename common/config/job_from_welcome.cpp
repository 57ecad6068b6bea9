#include "common/config/job_from_welcome.hpp"

#include <fmt/format.h>

#include "common/error.hpp"
#include "common/tensor/param_layout.hpp"

namespace ptrain {

JobFromWelcome job_from_welcome(const proto::Welcome& w) {
  JobFromWelcome j;
  j.config = parse_config_text(w.config_yaml, "<config from the coordinator>", "/");
  j.tokenizer = tokenizer_from_json(w.tokenizer_json, "<tokenizer from the coordinator>");
  const ParamLayout layout(model_dims(j.config.model, j.tokenizer->vocab_size()));
  if (layout.hash() != w.layout_hash) {
    throw ConfigError(fmt::format(
        "parameter layout mismatch: the coordinator's layout hash is {}, this process computes "
        "{} from the same config (different ptrain builds?); refusing to join",
        w.layout_hash, layout.hash()));
  }
  auto ms = [](double s) { return std::chrono::milliseconds(static_cast<int64_t>(s * 1000)); };
  j.heartbeat = ms(j.config.cluster.heartbeat_s);
  j.peer_timeout = ms(j.config.cluster.peer_timeout_s);
  return j;
}

}  // namespace ptrain
