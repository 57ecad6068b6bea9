// Token data: one token file (.tok: a fixed 64-byte little-endian header, then the tokens) or a
// split of a prepared folder (its manifest.json lists the split's shards, read as one token
// stream: shard k's tokens follow shard k-1's). Byte layout in docs/formats.md. Read through
// read-only memory maps; written atomically (a `.partial` name, fsync, rename).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace ptrain {

class TokenFile {
 public:
  // `path` is a .tok file, a manifest.json, or a folder holding one; for a manifest, `split`
  // ("train" or "val") picks the shards. A single file is verified whole here (magic, version,
  // dtype, size, CRC32C, every token below the vocab size). A manifest's shards have their headers
  // checked here against the manifest (so a job over many shards starts without reading them), and
  // their tokens verified the first time a window touches them. Throws IoError (missing/unreadable)
  // or DataError (bad header, truncated, checksum mismatch, no manifest) naming the file.
  static TokenFile open(const std::string& path, std::string_view split = "train");

  TokenFile(TokenFile&&) noexcept;
  TokenFile& operator=(TokenFile&&) noexcept;
  ~TokenFile();

  const std::string& path() const;
  int64_t vocab_size() const;
  int64_t size() const;  // tokens, all shards together
  int64_t shards() const;
  // Hex of the tokenizer hash the data was written with (the first 16 bytes of the SHA-256 of the
  // tokenizer's JSON, see tokenizer_hash()); "" when unknown (format version 1 files).
  const std::string& tokenizer_hash() const;
  int32_t at(int64_t i) const;
  // floor((size - 1) / T) windows of T+1 tokens at stride T.
  int64_t num_windows(int64_t T) const;
  // Copies window i (tokens [i·T, i·T+T+1), across shard ends) into out (T+1).
  void window(int64_t i, int64_t T, std::span<int32_t> out) const;

 private:
  TokenFile();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// What a .tok header says (docs/formats.md); read without the tokens. Throws as open().
struct TokenFileHeader {
  uint32_t version = 0;
  int64_t vocab_size = 0;
  int64_t tokens = 0;
  uint32_t tokens_crc32c = 0;
  std::string tokenizer_hash;  // hex, "" when unknown
};
TokenFileHeader read_token_file_header(const std::string& path);

// A file `ptrain prepare` keeps in its output folder while it writes there (created before the old
// manifest is removed, removed after the new one is written): a folder holding it is the output of
// an interrupted (or still running) prepare, and open() refuses it whatever else the folder holds.
inline constexpr const char* kPrepareIncompleteFile = "prepare.incomplete";

// Hex digits of the tokenizer hash stored in a token file header (16 bytes).
inline constexpr size_t kTokenizerHashHexDigits = 32;

// Writes one token file incrementally: tokens go to PATH.partial, and commit() writes the header,
// fsyncs and renames it to PATH, so a reader never sees a half-written PATH. Destroyed without
// commit(), it removes the partial file.
class TokenFileWriter {
 public:
  // `tokenizer_hash`: "" (unknown) or at least 32 hex digits (only the first 32 are stored).
  TokenFileWriter(std::string path, int64_t vocab_size, const std::string& tokenizer_hash);
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  void append(std::span<const uint32_t> tokens);  // each < vocab size (DataError otherwise)
  int64_t tokens() const { return count_; }
  int64_t bytes() const;                          // the file's size once committed
  uint32_t tokens_crc32c() const { return crc_; }
  static int64_t token_width(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }
  void commit();

 private:
  std::string path_, partial_;
  int64_t vocab_;
  unsigned char hash_[16] = {};
  int fd_ = -1;
  int64_t count_ = 0;
  uint32_t crc_ = 0;
  std::string buf_;
};

// Writes tokens (each < vocab_size) atomically. Throws IoError naming the path.
void write_token_file(const std::string& path, int64_t vocab_size, std::span<const uint32_t> tokens,
                      const std::string& tokenizer_hash = "");

}  // namespace ptrain
