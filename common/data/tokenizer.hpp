// Tokenizers: `byte` (ids 0-255 are bytes, 256 = <|endoftext|>, V = 257) and a byte-level BPE
// trained by `ptrain prepare`. Both are lossless: decode(encode(x)) == x for any bytes. Stored as
// tokenizer.json (format in docs/formats.md) and embedded in checkpoints.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ptrain {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string kind() const = 0;        // "byte" or "bpe"
  virtual int64_t vocab_size() const = 0;      // including <|endoftext|>
  virtual int32_t eot() const = 0;             // <|endoftext|> id
  virtual std::vector<int32_t> encode(std::string_view bytes) const = 0;  // no eot appended
  virtual std::string decode(std::span<const int32_t> ids) const = 0;     // eot decodes to ""
  virtual std::string to_json() const = 0;
};

std::unique_ptr<Tokenizer> make_byte_tokenizer();
// Parses tokenizer.json text; `origin` names it in errors (DataError).
std::unique_ptr<Tokenizer> tokenizer_from_json(const std::string& json, const std::string& origin);
// "byte" or a path to tokenizer.json (IoError / DataError naming the path).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& spec);

// ---- byte-level BPE (bpe.cpp) ----
// Merge k (0-based) joins ids (first, second) into the new id 256 + k; eot = 256 + merges.size().
using BpeMerge = std::pair<int32_t, int32_t>;

// A BPE tokenizer from its merge list. Throws DataError if a merge names an id not yet defined or
// repeats an earlier merge.
std::unique_ptr<Tokenizer> make_bpe_tokenizer(std::vector<BpeMerge> merges);

// Trains a byte-level BPE on `documents` so that the total vocabulary (256 bytes + merges + eot)
// is `vocab_size` (>= 257; UsageError otherwise). Stops early, with a warning and a smaller
// vocabulary, when no pair of adjacent tokens occurs at least twice. Deterministic: the same
// documents (in any order) give the same merges. Single-threaded.
std::unique_ptr<Tokenizer> train_bpe_tokenizer(std::span<const std::string_view> documents,
                                               int64_t vocab_size);

}  // namespace ptrain
