// A checkpoint opened as a usable model, for the tools (`grad`, `eval`, `generate`, `inspect`):
// the stored config parsed back into a Config, the stored tokenizer, the layout rebuilt from them,
// and the parameters read and verified (format version, layout hash, shapes, CRC32C). The
// checkpoint carries everything: no config file or tokenizer.json is needed beside it.
#pragma once

#include "common/config/config.hpp"
#include "common/data/tokenizer.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/tensor/param_layout.hpp"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ptrain {
class Backend;
class TokenFile;
}

namespace ptrain::tools {

struct CheckpointModel {
  std::string file;  // the checkpoint .h5 (CKPT resolved)
  CheckpointMeta meta;
  Config config;  // parsed from meta.config_yaml
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<ParamLayout> layout;  // heap: Gpt keeps a reference to it
  std::vector<float> params;            // layout->total() floats, verified
  std::vector<float> m, v;              // AdamW moments, only when asked for
};

// The stored config with run.threads replaced by `threads` when given (the tools' --threads,
// 0 = all cores), for make_backend_for.
Config with_threads(const Config& stored, std::optional<int> threads);

// CKPT is a checkpoint .h5 or its directory. Throws IoError (missing file) or CheckpointError
// (refused checkpoint, unparsable stored config or tokenizer), naming the file.
CheckpointModel open_checkpoint_model(const std::string& ckpt, bool with_optimizer = false);

// Meta data, config, tokenizer and layout only (no tensor is read).
CheckpointModel open_checkpoint_header(const std::string& ckpt);

// DataError unless the token file's vocabulary equals the checkpoint tokenizer's and, where the
// file records one, its tokenizer hash is the checkpoint tokenizer's (data prepared with another
// tokenizer), naming both.
void check_token_file_vocab(const TokenFile& tf, const CheckpointModel& cm);

// Windows [first, first+n) of T+1 tokens (stride T) into `out` (n·(T+1)); DataError naming the
// file and position when an id is not a real token (>= vocab).
void read_windows(const TokenFile& tf, int64_t first, int64_t n, int64_t T, int64_t vocab,
                  std::vector<int32_t>& out);

}  // namespace ptrain::tools
