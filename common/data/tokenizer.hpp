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

// Lowercase hex SHA-256 of the tokenizer's JSON (to_json()): two tokenizers with the same hash
// encode alike. Token files carry its first 32 hex digits, manifests all of it.
std::string tokenizer_hash(const Tokenizer& tok);

// Refuses token data made with another tokenizer than `tok` (same vocabulary size is not the same
// tokenizer: two BPEs of 4096 tokens). `data_hash`: the hash the data records (a prefix of
// tokenizer_hash(); "" = unknown, as in format version 1 token files: accepted). `data` and
// `tok_origin` name both sides in the DataError (a path and its config key; a checkpoint file).
void check_data_tokenizer(const std::string& data, const std::string& data_hash, const Tokenizer& tok,
                          const std::string& tok_origin);

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

// The same trainer fed incrementally: add() pre-tokenizes a document and counts its words, so
// memory grows with the distinct words seen, not with the text (prepare feeds it a bounded sample).
class BpeWordCounter {
 public:
  BpeWordCounter();
  ~BpeWordCounter();
  void add(std::string_view document);
  std::unique_ptr<Tokenizer> train(int64_t vocab_size) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- GPT-2's tokenizer (gpt2_tokenizer.cpp) ----
// Token for token what GPT-2's reference encoder gives: its pre-tokenizer regex over Unicode
// classes, byte-level BPE in its byte-to-unicode alphabet, eot = <|endoftext|> (50256). Kind
// "gpt2"; tokenizer.json carries the vocabulary and merges so checkpoints need nothing else.

// From GPT-2's vocab.json (encoder.json: token string -> id) and merges.txt (vocab.bpe: a
// "#version" line, then "a b" per line, rank = line order). Throws IoError / DataError naming
// the file (and line).
std::unique_ptr<Tokenizer> load_gpt2_tokenizer(const std::string& vocab_json, const std::string& merges_txt);

// From the token strings by id and the merge lines ("a b"); `origin` names them in errors.
std::unique_ptr<Tokenizer> make_gpt2_tokenizer(std::vector<std::string> tokens, const std::vector<std::string>& merges,
                                               const std::string& origin);

}  // namespace ptrain
