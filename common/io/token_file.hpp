// Token files (.tok): a fixed 64-byte little-endian header, then the tokens. Byte layout in
// docs/formats.md. Read through a read-only memory map; written atomically (tmp + fsync + rename).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace ptrain {

class TokenFile {
 public:
  // Opens and verifies magic, version, dtype, size and CRC32C. Throws IoError (missing/unreadable)
  // or DataError (bad header, truncated, checksum mismatch) naming the file.
  static TokenFile open(const std::string& path);

  TokenFile(TokenFile&&) noexcept;
  TokenFile& operator=(TokenFile&&) noexcept;
  ~TokenFile();

  const std::string& path() const;
  int64_t vocab_size() const;
  int64_t size() const;  // tokens
  int32_t at(int64_t i) const;
  // floor((size - 1) / T) windows of T+1 tokens at stride T.
  int64_t num_windows(int64_t T) const;
  // Copies window i (tokens [i·T, i·T+T+1)) into out (T+1).
  void window(int64_t i, int64_t T, std::span<int32_t> out) const;

 private:
  TokenFile();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes tokens (each < vocab_size) atomically. Throws IoError naming the path.
void write_token_file(const std::string& path, int64_t vocab_size,
                      std::span<const uint32_t> tokens);

}  // namespace ptrain
