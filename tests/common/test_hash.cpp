// CRC32C: the standard check vectors (RFC 3720 B.4 and the "123456789" check value), and the fast
// path (three interleaved streams joined by zero-append operators) equal to the bytewise table for
// every length around its block edges, any alignment and any split of the input.
#include "common/util/hash.hpp"

#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace ptrain;

TEST_CASE("crc32c: the standard check vectors") {
  const std::string digits = "123456789";
  CHECK(crc32c(digits.data(), digits.size()) == 0xE3069283u);
  CHECK(crc32c_reference(digits.data(), digits.size()) == 0xE3069283u);
  std::vector<unsigned char> b(32, 0);
  CHECK(crc32c(b.data(), b.size()) == 0x8A9136AAu);
  std::fill(b.begin(), b.end(), 0xFF);
  CHECK(crc32c(b.data(), b.size()) == 0x62A8AB43u);
  for (size_t i = 0; i < 32; ++i) b[i] = static_cast<unsigned char>(i);
  CHECK(crc32c(b.data(), b.size()) == 0x46DD794Eu);
  for (size_t i = 0; i < 32; ++i) b[i] = static_cast<unsigned char>(31 - i);
  CHECK(crc32c(b.data(), b.size()) == 0x113FDB5Cu);
  CHECK(crc32c(nullptr, 0) == 0u);
}

TEST_CASE("crc32c: the three-stream path equals the bytewise table - every length near the block edges - any alignment - any split") {
  std::mt19937 rng(5);
  std::vector<unsigned char> buf(3 * 8192 * 2 + 3 * 256 * 3 + 64);
  for (auto& x : buf) x = static_cast<unsigned char>(rng());
  std::vector<size_t> lengths;
  for (size_t n = 0; n < 80; ++n) lengths.push_back(n);
  for (size_t edge : {size_t{3 * 256}, size_t{2 * 3 * 256}, size_t{3 * 8192}, size_t{2 * 3 * 8192}}) {
    for (size_t d = 0; d < 20; ++d) {
      lengths.push_back(edge + d - 10);
    }
  }
  lengths.push_back(buf.size() - 8);
  for (size_t n : lengths) {
    for (size_t offset = 0; offset < 8; ++offset) {
      CAPTURE(n);
      CAPTURE(offset);
      const uint32_t seed = static_cast<uint32_t>(rng());
      const unsigned char* p = buf.data() + offset;
      const uint32_t want = crc32c_reference(p, n, seed);
      CHECK(crc32c(p, n, seed) == want);
      // Continued over a split anywhere: the same checksum.
      const size_t cut = n == 0 ? 0 : static_cast<size_t>(rng()) % n;
      CHECK(crc32c(p + cut, n - cut, crc32c(p, cut, seed)) == want);
    }
  }
}
