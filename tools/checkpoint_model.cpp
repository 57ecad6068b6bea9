// Opening a checkpoint as a model for the tools (checkpoint_model.hpp).
#include "tools/checkpoint_model.hpp"

#include "common/error.hpp"
#include "common/io/token_file.hpp"

#include <filesystem>

namespace ptrain::tools {

CheckpointModel open_checkpoint_header(const std::string& ckpt) {
  CheckpointModel cm;
  cm.file = checkpoint_file(ckpt);
  cm.meta = read_checkpoint_meta(cm.file);
  const std::string base = std::filesystem::path(cm.file).parent_path().string();
  try {
    cm.config = parse_config_text(cm.meta.config_yaml, cm.file + " (attribute config_yaml)", base);
  } catch (const Error& e) {
    throw CheckpointError(fmt::format("{}: its stored config does not load: {}", cm.file, e.what()));
  }
  try {
    cm.tokenizer = tokenizer_from_json(cm.meta.tokenizer_json, cm.file + " (dataset /tokenizer)");
  } catch (const Error& e) {
    throw CheckpointError(fmt::format("{}: its stored tokenizer does not load: {}", cm.file, e.what()));
  }
  try {
    cm.layout = std::make_unique<ParamLayout>(model_dims(cm.config.model, cm.tokenizer->vocab_size()));
  } catch (const ConfigError& e) {
    throw CheckpointError(fmt::format("{}: its stored config does not fit its tokenizer: {}", cm.file,
                                      e.what()));
  }
  return cm;
}

Config with_threads(const Config& stored, std::optional<int> threads) {
  Config c = stored;
  if (threads) c.run.threads = *threads;
  return c;
}

CheckpointModel open_checkpoint_model(const std::string& ckpt, bool with_optimizer) {
  CheckpointModel cm = open_checkpoint_header(ckpt);
  CheckpointData d = read_checkpoint(cm.file, *cm.layout, with_optimizer);
  cm.params = std::move(d.params);
  cm.m = std::move(d.m);
  cm.v = std::move(d.v);
  return cm;
}

void check_token_file_vocab(const TokenFile& tf, const CheckpointModel& cm) {
  if (tf.vocab_size() != cm.tokenizer->vocab_size()) {
    throw DataError(fmt::format(
        "{}: token file vocabulary {} differs from the checkpoint's tokenizer ({} tokens, {}): "
        "the data was prepared with another tokenizer",
        tf.path(), tf.vocab_size(), cm.tokenizer->vocab_size(), cm.file));
  }
  check_data_tokenizer(tf.path(), tf.tokenizer_hash(), *cm.tokenizer, "the checkpoint " + cm.file);
}

void read_windows(const TokenFile& tf, int64_t first, int64_t n, int64_t T, int64_t vocab,
                  std::vector<int32_t>& out) {
  out.resize(static_cast<size_t>(n * (T + 1)));
  for (int64_t b = 0; b < n; ++b) {
    std::span<int32_t> w(out.data() + b * (T + 1), static_cast<size_t>(T + 1));
    tf.window(first + b, T, w);
    for (int64_t t = 0; t <= T; ++t) {
      if (w[t] < 0 || w[t] >= vocab) {
        throw DataError(fmt::format("{}: token {} at position {} is outside the model's vocabulary "
                                    "(ids 0..{})",
                                    tf.path(), w[t], (first + b) * T + t, vocab - 1));
      }
    }
  }
}

}  // namespace ptrain::tools
