// `ptrain fill-mask`'s work: a BERT checkpoint's most likely fillers for each [MASK] of a text.
// The text is split at the literal marker "[MASK]", each piece encoded with the checkpoint's
// tokenizer, the pieces joined by the [MASK] token and wrapped as [CLS] … [SEP]
// (common/data/mlm.hpp); one forward pass; for each [MASK] the top-k tokenizer tokens by
// probability (softmax over the whole vocabulary, special tokens never listed).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain::tools {

struct FillMaskOptions {
  std::string checkpoint;  // checkpoint .h5 or its directory (model.arch bert)
  std::string text;        // with one or more "[MASK]"
  int64_t top_k = 5;       // >= 1 (the caller checks, naming its flag)
  std::string device;      // "" = the checkpoint's device.type
  bool json = false;
};

struct Filler {
  int32_t id = 0;
  std::string text;  // the token decoded
  double probability = 0.0;
};

// One entry per [MASK], in text order, each with top_k fillers by descending probability.
// UsageError: no [MASK] in the text, a GPT checkpoint, or a text longer than seq_len − 2 tokens.
std::vector<std::vector<Filler>> fill_mask(const FillMaskOptions& o);

// Text: per mask "[MASK] #i:" then one line per filler (probability, quoted text); --json: one
// object {"masks": [[{"token", "id", "probability"}, ...], ...]}.
void print_fill_mask(const std::vector<std::vector<Filler>>& r, bool json);

}  // namespace ptrain::tools
