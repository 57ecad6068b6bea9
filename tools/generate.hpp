// `ptrain generate`'s work: samples continuations of a prompt from a checkpoint with the KV-cache
// decoder (GptDecoder) and writes them to an output (stdout by default) as they come, each
// sample the prompt followed by its continuation unless `echo` is off. A sample stops at
// <|endoftext|> (not written; with ignore_eot it is written as "<|endoftext|>" and sampling goes
// on) or after max_tokens tokens. An empty prompt starts from <|endoftext|>, the document
// boundary the model was trained on.
//
// Longer than the context: a prompt longer than the model's seq_len T keeps its last T tokens
// (warned). When the context is full (T tokens), the window slides: the decoder restarts on the
// newest 3T/4 tokens and goes on, so max_tokens may exceed T (positions are learned, so the cache
// cannot be shifted; the refill costs about 3 extra decoder steps per generated token).
//
// Sampling: temperature 0 is greedy (argmax, lowest id on ties); otherwise softmax(logits / X)
// over the top_k most likely tokens (0: all), then the smallest set of the most likely of those
// whose probability adds up to top_p (1: all), drawn with one std::mt19937_64 seeded by `seed` (a
// random seed, logged, when absent) for all samples in turn. Only real tokenizer ids are
// candidates: padded vocabulary rows are never sampled.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace ptrain::tools {

// The caller checks the numbers (max_tokens >= 0, temperature finite and >= 0, top_k >= 0,
// 0 < top_p <= 1, num_samples >= 1, threads >= 0) and the device name, naming its flags.
struct GenerateOptions {
  std::string checkpoint;  // checkpoint .h5 or its directory
  std::string prompt;      // text to continue; "" starts from <|endoftext|>
  std::string device;      // "" = the checkpoint's device.type
  int64_t max_tokens = 100;  // new tokens per sample
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  int64_t num_samples = 1;
  bool echo = true;          // write the prompt before each continuation
  bool ignore_eot = false;   // <|endoftext|> neither stops nor is dropped
  std::optional<int> threads;  // compute threads; nullopt = the checkpoint's run.threads
  std::optional<uint64_t> seed;
  // Where the text goes, piece by piece; empty = stdout (flushed per token). With several samples
  // a line "---------------" separates them.
  std::function<void(std::string_view)> out;
  bool quiet = false;  // no info lines on stderr (the sampling seed, the counts)
};

struct GenerateResult {
  int64_t generated = 0;  // tokens generated over all samples
  std::string stop;       // the last sample's: "max-tokens" or "<|endoftext|>"
  int64_t slides = 0;     // times the context window slid
};

// Generates, logging the counts and the stop reason on stderr. Throws IoError / CheckpointError
// for the checkpoint, UsageError for a checkpoint that is not a causal LM.
GenerateResult generate(const GenerateOptions& o);

}  // namespace ptrain::tools
