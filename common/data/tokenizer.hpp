// Tokenizers: `byte` (ids 0-255 are bytes, 256 = <|endoftext|>, V = 257) and a byte-level BPE
// trained by `ptrain prepare`. Both are lossless: decode(encode(x)) == x for any bytes. Stored as
// tokenizer.json (format in docs/formats.md) and embedded in checkpoints.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
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

}  // namespace ptrain
