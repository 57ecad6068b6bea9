// Checksums and a hash-based generator: CRC32C (Castagnoli; token files, checkpoint tensors, protocol frames) and SHA-256
// (layout hash). SHA-256 comes from OpenSSL's libcrypto (also used for HMAC); CRC32C is
// hand-written (Debian 12 packages no CRC32C library for C or C++) with the SSE4.2 instruction
// when the CPU has it, and tested on the standard check vectors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ptrain {

// CRC32C of `n` bytes, continuing from `crc` (0 for a fresh checksum). With SSE4.2: three
// interleaved streams of the crc32 instruction, joined by zero-append operators.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
// The same by one table lookup per byte (the portable path; tests compare the two).
uint32_t crc32c_reference(const void* data, size_t n, uint32_t crc = 0);

// Lowercase hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);

// SplitMix64's output function: the counter-based generator behind initialisation and BERT's
// masks (a pure function, so any thread or process computes any element).
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace ptrain
