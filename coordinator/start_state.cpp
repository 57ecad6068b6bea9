#include "coordinator/start_state.hpp"

#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/run_checkpoints.hpp"
#include "common/io/token_file.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>

namespace ptrain {

namespace {

StartState fresh(const Config& config) {
  StartState s;
  s.data = DataState{config.run.seed, 0, 0, {}};
  return s;
}

// With `report` false nothing is logged: the launcher's check before any role starts stays
// silent, and the coordinator's own load reports each difference once.
void check_config_change(const Config& config, const std::string& file, const CheckpointMeta& meta,
                         bool allow, bool report) {
  Config stored;
  try {
    stored = parse_config_text(meta.config_yaml, file + " (attribute config_yaml)",
                               std::filesystem::path(file).parent_path().string());
  } catch (const Error& e) {
    if (report) {
      spdlog::warn("{}: its stored config does not load ({}); cannot compare it with this run's",
                   file, e.what());
    }
    return;
  }
  std::string refused;
  for (const ConfigDifference& d : config_differences(stored, config)) {
    const std::string line = fmt::format("{}: {} in the checkpoint, {} now", d.key, d.before, d.after);
    if (resume_safe_key(d.key)) {
      if (report) spdlog::info("resume: {}", line);
    } else if (allow) {
      if (report) spdlog::warn("resume: {} (allowed by --allow-config-change)", line);
    } else {
      refused += "\n  " + line;
    }
  }
  if (!refused.empty()) {
    throw ConfigError(fmt::format(
        "{}: this run's config differs from the checkpoint's in keys that change the training:{}\n"
        "Resume with the checkpoint's values, start a fresh run (another run.dir, or "
        "checkpoint.resume: never), or pass --allow-config-change to resume anyway",
        file, refused));
  }
}

// The tokenizer hash token data records, without reading its tokens: a prepared folder's (or
// manifest's) from the manifest and shard headers, a .tok file's from its header.
std::string data_tokenizer_hash(const std::string& path, std::string_view split) {
  const std::filesystem::path p(path);
  std::error_code ec;
  if (std::filesystem::is_directory(p, ec) || p.extension() == ".json") {
    return TokenFile::open(path, split).tokenizer_hash();
  }
  return read_token_file_header(path).tokenizer_hash;
}

// A checkpoint's model learnt the ids of its own tokenizer (an imported or `ptrain init`
// checkpoint's too): data.train and data.val must have been prepared with it.
void check_data_tokenizers(const Config& config, const std::string& file, const CheckpointMeta& meta) {
  if (meta.tokenizer_json.empty()) return;
  const std::unique_ptr<Tokenizer> tok = tokenizer_from_json(meta.tokenizer_json, file + " (dataset /tokenizer)");
  const struct {
    const std::string& path;
    const char* key;
    const char* split;
  } data[] = {{config.data.train, "data.train", "train"}, {config.data.val, "data.val", "val"}};
  for (const auto& d : data) {
    if (d.path.empty()) continue;
    check_data_tokenizer(fmt::format("{} ({})", d.path, d.key), data_tokenizer_hash(d.path, d.split), *tok,
                         "the checkpoint " + file);
  }
}

}  // namespace

bool resume_safe_key(const std::string& key) {
  static const char* const kSafe[] = {"run.dir", "run.threads", "train.steps", "train.micro_batch",
                                      "train.eval_every", "train.eval_windows", "train.log_every",
                                      "train.sample_tokens"};
  for (const char* k : kSafe) {
    if (key == k) return true;
  }
  return key.starts_with("checkpoint.") || key.starts_with("cluster.") || key.starts_with("status.");
}

namespace {

StartState start_state(const Config& config, const ParamLayout& layout, bool allow_config_change,
                       bool report) {
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
  check_data_tokenizers(config, file, meta);  // not overridable: the model would read other ids
  check_config_change(config, file, meta, allow_config_change, report);
  StartState s;
  s.step = meta.step;
  s.tokens_seen = meta.tokens_seen;
  s.data = meta.data;
  s.resumed_from = file;
  s.inner_state_slots = meta.inner_state_slots;
  if (report && s.data.seed != config.run.seed) {
    spdlog::warn("resuming with the data order of {} (seed {}), not run.seed {}", path,
                 s.data.seed, config.run.seed);
  }
  return s;
}

}  // namespace

StartState load_start_state(const Config& config, const ParamLayout& layout, bool allow_config_change) {
  return start_state(config, layout, allow_config_change, /*report=*/true);
}

void check_start_state(const Config& config, const ParamLayout& layout, bool allow_config_change) {
  (void)start_state(config, layout, allow_config_change, /*report=*/false);
}

}  // namespace ptrain
