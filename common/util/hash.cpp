#include "common/util/hash.hpp"

#include <openssl/evp.h>

#include <array>
#include <cstring>

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace ptrain {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // CRC32C, reflected

// The bytewise reference: one table lookup per byte.
uint32_t crc32c_table(const unsigned char* p, size_t n, uint32_t c) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t v = i;
      for (int k = 0; k < 8; ++k) v = (v & 1u) ? (v >> 1) ^ kPoly : v >> 1;
      t[i] = v;
    }
    return t;
  }();
  while (n--) c = table[(c ^ *p++) & 0xFFu] ^ (c >> 8);
  return c;
}

#if defined(__SSE4_2__)

// Three independent streams hide the crc32 instruction's 3-cycle latency (one stream is bound
// by it, at about 8 bytes per 3 cycles); the streams' CRCs are then joined with "append n zero
// bytes" operators, the GF(2) matrix method of zlib's crc32_combine, applied by four table
// lookups. Block sizes: kLong bytes per stream for long inputs, kShort for the rest.
constexpr size_t kLong = 8192;
constexpr size_t kShort = 256;

using ZerosTable = std::array<std::array<uint32_t, 256>, 4>;

// A 32×32 matrix over GF(2), column n = the image of bit n.
using Gf2Matrix = std::array<uint32_t, 32>;

uint32_t gf2_times(const Gf2Matrix& mat, uint32_t vec) {
  uint32_t sum = 0;
  for (size_t i = 0; vec != 0; vec >>= 1, ++i) {
    if (vec & 1u) sum ^= mat[i];
  }
  return sum;
}

Gf2Matrix gf2_product(const Gf2Matrix& a, const Gf2Matrix& b) {
  Gf2Matrix out{};
  for (size_t n = 0; n < 32; ++n) out[n] = gf2_times(a, b[n]);
  return out;
}

// The operator that appends `len` zero bytes to a CRC register, as four byte-indexed tables.
ZerosTable make_zeros_table(size_t len) {
  Gf2Matrix power{};  // one zero bit: the register shifted right, the polynomial where bit 0 fell
  power[0] = kPoly;
  for (size_t n = 1; n < 32; ++n) power[n] = 1u << (n - 1);
  for (int i = 0; i < 3; ++i) power = gf2_product(power, power);  // 2, 4, 8 bits: one byte
  Gf2Matrix op{};
  for (size_t n = 0; n < 32; ++n) op[n] = 1u << n;  // identity
  for (; len != 0; len >>= 1) {  // powers of one zero byte commute: multiply in len's bits
    if (len & 1u) op = gf2_product(power, op);
    if (len > 1) power = gf2_product(power, power);
  }
  ZerosTable z{};
  for (uint32_t n = 0; n < 256; ++n) {
    z[0][n] = gf2_times(op, n);
    z[1][n] = gf2_times(op, n << 8);
    z[2][n] = gf2_times(op, n << 16);
    z[3][n] = gf2_times(op, n << 24);
  }
  return z;
}

inline uint32_t shift(const ZerosTable& z, uint32_t crc) {
  return z[0][crc & 0xFFu] ^ z[1][(crc >> 8) & 0xFFu] ^ z[2][(crc >> 16) & 0xFFu] ^
         z[3][crc >> 24];
}

inline uint64_t load64(const unsigned char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

// Consumes whole triple blocks from p (n bytes left) as three streams, joined after each one.
uint64_t three_streams(const unsigned char*& p, size_t& n, uint64_t c0, size_t block,
                       const ZerosTable& z) {
  while (n >= 3 * block) {
    uint64_t c1 = 0, c2 = 0;
    const unsigned char* end = p + block;
    do {
      c0 = _mm_crc32_u64(c0, load64(p));
      c1 = _mm_crc32_u64(c1, load64(p + block));
      c2 = _mm_crc32_u64(c2, load64(p + 2 * block));
      p += 8;
    } while (p < end);
    c0 = shift(z, static_cast<uint32_t>(c0)) ^ c1;
    c0 = shift(z, static_cast<uint32_t>(c0)) ^ c2;
    p += 2 * block;
    n -= 3 * block;
  }
  return c0;
}

uint32_t crc32c_sse42(const unsigned char* p, size_t n, uint32_t c) {
  static const ZerosTable long_zeros = make_zeros_table(kLong);
  static const ZerosTable short_zeros = make_zeros_table(kShort);
  uint64_t c64 = c;
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    c64 = _mm_crc32_u8(static_cast<uint32_t>(c64), *p++);
    --n;
  }
  c64 = three_streams(p, n, c64, kLong, long_zeros);
  c64 = three_streams(p, n, c64, kShort, short_zeros);
  for (; n >= 8; n -= 8, p += 8) c64 = _mm_crc32_u64(c64, load64(p));
  auto c32 = static_cast<uint32_t>(c64);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

#endif

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
#if defined(__SSE4_2__)
  return ~crc32c_sse42(p, n, ~crc);
#else
  return ~crc32c_table(p, n, ~crc);
#endif
}

uint32_t crc32c_reference(const void* data, size_t n, uint32_t crc) {
  return ~crc32c_table(static_cast<const unsigned char*>(data), n, ~crc);
}

std::string sha256_hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(hex[digest[i] >> 4]);
    out.push_back(hex[digest[i] & 15]);
  }
  return out;
}

}  // namespace ptrain
