// ptrain's tokenizers in Hugging Face's tokenizer files, and back.
//
// Export: tokenizer.json (a byte-level BPE: a Split pre-tokenizer whose regular expression is
// ptrain's piece rules written over characters, then ByteLevel without its own regex; the vocabulary
// and merges in ptrain's id order; <|endoftext|> as a special added token), vocab.json, merges.txt,
// tokenizer_config.json and special_tokens_map.json. Tokenization is the same as ptrain's for any
// valid UTF-8 text except where `warnings` says (HF cannot express ptrain's 128-byte cut of very
// long pieces); if an id cannot be given a distinct HF token string the export is refused.
// Import: the reverse, for tokenizer.json files that carry exactly this pre-tokenizer (what export
// writes); GPT-2's own tokenizer (its regex over Unicode classes, its byte order) is a different
// tokenizer, refused as not implemented yet.
#pragma once

#include "common/data/tokenizer.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ptrain::tools::hf {

// ptrain's pre-tokenizer ("gpt2-bytes-v1") as the regular expression of HF's Split pre-tokenizer:
// letters are ASCII letters and every character from U+0080 (whose UTF-8 bytes are >= 0x80), digits
// are 0-9, whitespace is the six ASCII blanks, everything else is "other".
extern const char* const kPiecePattern;

struct HfTokenizerFiles {
  std::string tokenizer_json, vocab_json, merges_txt, tokenizer_config_json, special_tokens_map_json;
  std::vector<std::string> warnings;  // where HF's tokenization can differ from ptrain's
};

// DataError when two ids decode to the same bytes (HF's vocabulary maps strings to ids) or an id's
// bytes spell "<|endoftext|>". `model_max_length` is the model's context (tokenizer_config.json).
HfTokenizerFiles to_hf_tokenizer(const Tokenizer& tok, int64_t model_max_length);

// The ptrain tokenizer a tokenizer.json written by to_hf_tokenizer describes; `origin` names the
// file in errors. DataError for a file that is not such a tokenizer (naming the field),
// NotImplementedError for another pre-tokenizer (GPT-2's own included).
std::unique_ptr<Tokenizer> from_hf_tokenizer(const std::string& tokenizer_json, const std::string& origin);

// GPT-2's printable stand-in for byte b in byte-level token strings (UTF-8).
std::string byte_level_char(unsigned char b);

}  // namespace ptrain::tools::hf
