// Checksums: CRC32C (Castagnoli; token files, checkpoint tensors, protocol frames) and SHA-256
// (layout hash). SHA-256 comes from OpenSSL's libcrypto (also used for HMAC); CRC32C is
// hand-written (Debian 12 packages no CRC32C library) with the SSE4.2 instruction when the CPU
// has it, and tested on the standard check vectors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ptrain {

// CRC32C of `n` bytes, continuing from `crc` (0 for a fresh checksum).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

// Lowercase hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);

}  // namespace ptrain
