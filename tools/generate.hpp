// `ptrain generate`'s work: samples a continuation of a prompt from a checkpoint with the KV-cache
// decoder (GptDecoder) and writes only the continuation's bytes to stdout, as they come. Stops at
// <|endoftext|> (not written), after max_tokens tokens, or when the context reaches the model's
// seq_len (warned on stderr). An empty prompt starts from <|endoftext|>, the document boundary the
// model was trained on.
//
// Sampling: temperature 0 is greedy (argmax, lowest id on ties); otherwise softmax(logits / X)
// over the top_k most likely tokens (0: all), drawn with a std::mt19937_64 seeded by `seed` (a
// random seed, logged, when absent). Only real tokenizer ids are candidates: padded vocabulary
// rows are never sampled.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ptrain::tools {

// The caller checks the numbers (max_tokens >= 0, temperature finite and >= 0, top_k >= 0) and
// the device name, naming its flags.
struct GenerateOptions {
  std::string checkpoint;  // checkpoint .h5 or its directory
  std::string prompt;      // text to continue; "" starts from <|endoftext|>
  std::string device;      // "" = the checkpoint's device.type
  int64_t max_tokens = 100;
  double temperature = 1.0;
  int64_t top_k = 0;
  std::optional<uint64_t> seed;
};

struct GenerateResult {
  int64_t generated = 0;  // tokens written
  std::string stop;       // "max-tokens", "<|endoftext|>" or "seq_len"
};

// Generates, writing to stdout and logging the count and the stop reason on stderr. Throws
// IoError / CheckpointError for the checkpoint, UsageError ("--prompt is N tokens, ...") for a
// prompt longer than the model's seq_len.
GenerateResult generate(const GenerateOptions& o);

}  // namespace ptrain::tools
