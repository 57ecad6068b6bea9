// bf16 on the wire (common/proto/bf16.hpp, cluster.wire_dtype: bf16): the conversions (round to
// nearest even, NaN kept NaN, Inf kept, exact widening), the packed form (two per 4-byte
// element, an odd count padded with zero) and the codec's handling of a bulk message's encoding
// (round trip, the element count checked against the range, an unknown encoding refused).
#include "common/proto/bf16.hpp"
#include "common/proto/codec.hpp"

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

using namespace ptrain;
using namespace ptrain::proto;

namespace {

float bits(uint32_t u) { return std::bit_cast<float>(u); }

}  // namespace

TEST_CASE("bf16 wire: every bf16 value survives fp32 -> bf16 -> fp32 bit for bit") {
  // All 65536 bf16 bit patterns: widened, rounded back, the same bits (NaNs stay NaN: a NaN's
  // payload may gain the quiet bit, so NaNs are checked as NaN).
  for (uint32_t b = 0; b <= 0xffffu; ++b) {
    const float f = bf16_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) {
      CHECK(std::isnan(bf16_to_float(float_to_bf16(f))));
      continue;
    }
    REQUIRE(float_to_bf16(f) == b);
  }
  // The same through the packed form, odd and even counts.
  for (size_t n : {0u, 1u, 2u, 3u, 1000u, 1001u}) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = bf16_to_float(static_cast<uint16_t>((i * 40503u) & 0x7f7fu));
    std::vector<float> packed(bf16_packed_size(n)), back(n);
    pack_bf16(v, packed);
    unpack_bf16(packed, back);
    CHECK(std::memcmp(v.data(), back.data(), n * sizeof(float)) == 0);
  }
}

TEST_CASE("bf16 wire: rounding is to nearest - ties to even - NaN stays NaN - Inf stays Inf") {
  // 1 + 2^-8 is halfway between 1 (even mantissa) and 1 + 2^-7: rounds down to 1.
  CHECK(round_to_bf16(bits(0x3f808000u)) == 1.0f);
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
  CHECK(float_to_bf16(bits(0x3f818000u)) == 0x3f82u);
  // Just above and below a half: to the nearer.
  CHECK(float_to_bf16(bits(0x3f808001u)) == 0x3f81u);
  CHECK(float_to_bf16(bits(0x3f807fffu)) == 0x3f80u);
  // Negative values round the same way on the magnitude.
  CHECK(float_to_bf16(bits(0xbf818000u)) == 0xbf82u);
  // NaN (any payload, either sign, including one whose payload sits only in the dropped bits)
  // stays NaN and keeps its sign; Inf stays Inf; the largest floats round to Inf as IEEE does.
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    const float r = round_to_bf16(bits(nan));
    CHECK(std::isnan(r));
    CHECK(std::signbit(r) == std::signbit(bits(nan)));
  }
  CHECK(round_to_bf16(std::numeric_limits<float>::infinity()) ==
        std::numeric_limits<float>::infinity());
  CHECK(round_to_bf16(-std::numeric_limits<float>::infinity()) ==
        -std::numeric_limits<float>::infinity());
  CHECK(std::isinf(round_to_bf16(std::numeric_limits<float>::max())));
  CHECK(round_to_bf16(-0.0f) == 0.0f);
  CHECK(std::signbit(round_to_bf16(-0.0f)));
  // Against a reference: the nearest of the two bf16 neighbours, the even one on a tie.
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> any(0, 0x7f7fffffu);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t u = any(rng) | (i % 2 == 0 ? 0u : 0x80000000u);
    const float f = bits(u);
    const float lo = bits(u & 0xffff0000u), hi = bits((u & 0xffff0000u) + 0x10000u);
    // Above the largest bf16 value the next one up is 2^128 as IEEE rounding sees it (→ Inf).
    const double hi_value = std::isinf(hi) ? std::copysign(std::ldexp(1.0, 128), hi) : double(hi);
    const double dlo = std::fabs(double(f) - lo), dhi = std::fabs(hi_value - f);
    const float want = dlo < dhi ? lo : dhi < dlo ? hi : (((u >> 16) & 1u) == 0 ? lo : hi);
    REQUIRE(round_to_bf16(f) == want);
  }
}

TEST_CASE("bf16 wire: the packed form - value i at bytes 2i..2i+1 - an odd count padded with zero") {
  const std::vector<float> v{1.0f, -2.0f, 0.5f};
  std::vector<float> packed(bf16_packed_size(v.size()));
  REQUIRE(packed.size() == 2);
  pack_bf16(v, packed);
  unsigned char b[8];
  std::memcpy(b, packed.data(), 8);
  const unsigned char want[8] = {0x80, 0x3f, 0x00, 0xc0, 0x00, 0x3f, 0x00, 0x00};
  CHECK(std::memcmp(b, want, 8) == 0);
  CHECK(packed_bf16_at(packed.data(), 0) == 1.0f);
  CHECK(packed_bf16_at(packed.data(), 1) == -2.0f);
  CHECK(packed_bf16_at(packed.data(), 2) == 0.5f);
  CHECK(encoded_size(FloatEncoding::kBf16, 3) == 2);
  CHECK(encoded_size(FloatEncoding::kBf16, 4) == 2);
  CHECK(encoded_size(FloatEncoding::kFp32, 3) == 3);
  // Large enough for the parallel loop: the same as the scalar conversion, element by element.
  std::vector<float> big(300001);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& x : big) x = nd(rng);
  std::vector<float> bp(bf16_packed_size(big.size())), back(big.size());
  pack_bf16(big, bp);
  unpack_bf16(bp, back);
  for (size_t i = 0; i < big.size(); ++i) REQUIRE(back[i] == round_to_bf16(big[i]));
}

TEST_CASE("bf16 wire: GradPush and PullReply carry their encoding - the element count must match it") {
  std::vector<float> v{1.0f, 2.0f, 3.0f};
  std::vector<float> packed(2);
  pack_bf16(v, packed);
  GradPush g{4, 1, 2, 77, {10, 13}, packed};
  g.encoding = FloatEncoding::kBf16;
  const auto f = encode(g);
  CHECK(f.size() == encode(GradPush{4, 1, 2, 77, {10, 13}, v}).size() - 4);  // one element fewer
  const Message back = decode(f);
  CHECK(std::get<GradPush>(back) == g);
  PullReply r{9, 3, {0, 3}, packed};
  r.encoding = FloatEncoding::kBf16;
  CHECK(std::get<PullReply>(decode(encode(r))) == r);
  PullRequest q{5, 3, {0, 3}, FloatEncoding::kBf16};
  CHECK(std::get<PullRequest>(decode(encode(q))) == q);
  // The same split as the TCP reader receives it (head, then the floats placed on their own).
  const auto head = std::span(f).subspan(kHeaderSize, float_body_head(MessageType::kGradPush));
  CHECK(float_body_count(MessageType::kGradPush, head) == 2);
  CHECK(std::get<GradPush>(assemble(MessageType::kGradPush, head, FloatRange(packed))) == g);

  // Three fp32 values sent as bf16 elements: the count disagrees with the range.
  GradPush wrong{4, 1, 2, 77, {10, 13}, v};
  wrong.encoding = FloatEncoding::kBf16;
  CHECK_THROWS_WITH_AS(decode(encode(wrong)),
                       doctest::Contains("grads holds 3 floats for range [10, 13) of 3 values "
                                         "in bf16 (2 expected)"),
                       ProtocolError);
  // An encoding this build does not know.
  auto bytes = encode(g);
  const size_t at = kHeaderSize + float_body_head(MessageType::kGradPush) - 9;
  REQUIRE(static_cast<uint8_t>(bytes[at]) == 1);
  bytes[at] = std::byte{7};
  // (The CRCs no longer match the changed byte: decoded without the CRC check, so the encoding
  // is what is refused.)
  CHECK_THROWS_WITH_AS(decode(bytes, {}, /*check_crc=*/false),
                       doctest::Contains("unknown float encoding 7"), ProtocolError);
}

TEST_CASE("bf16 wire: error feedback - the residual goes out with the next push - the sums stay true - representable values exact") {
  // A value bf16 cannot hold: 1 + 2^-10 rounds to 1 every time without feedback.
  const float g = 1.0f + 0x1p-10f;
  const size_t n = 3;  // odd: the pad half too
  std::vector<float> src(n, g), residual(n, 0.0f), packed(bf16_packed_size(n)), out(n);
  double sent = 0.0, given = 0.0;
  const int pushes = 64;
  for (int t = 0; t < pushes; ++t) {
    pack_bf16_feedback(src, residual, packed);
    unpack_bf16(packed, out);
    sent += out[n - 1];
    given += g;
    // What went out plus what is kept is exactly what was given so far (all values here are
    // exact in fp32).
    CHECK(sent + residual[n - 1] == given);
  }
  CHECK(std::fabs(sent - given) <= 0x1p-7);  // at most one bf16 step of 1.0 behind
  std::vector<float> plain(bf16_packed_size(n));
  pack_bf16(src, plain);
  unpack_bf16(plain, out);
  CHECK(out[0] == 1.0f);  // without feedback the 2^-10 is lost on every push: 64 × 2^-10 behind

  // Values bf16 holds go out unchanged and leave no residual.
  std::vector<float> exact = {0.5f, -3.0f, 0x1p-20f, 0.0f};
  std::vector<float> r2(exact.size(), 0.0f), p2(bf16_packed_size(exact.size())), o2(exact.size());
  pack_bf16_feedback(exact, r2, p2);
  unpack_bf16(p2, o2);
  CHECK(o2 == exact);
  CHECK(r2 == std::vector<float>(exact.size(), 0.0f));
  // A non-finite value is sent as it is and leaves a zero residual.
  std::vector<float> bad = {std::numeric_limits<float>::infinity(), std::nanf("")};
  std::vector<float> r3 = {0.25f, 0.25f}, p3(1), o3(2);
  pack_bf16_feedback(bad, r3, p3);
  unpack_bf16(p3, o3);
  CHECK(std::isinf(o3[0]));
  CHECK(std::isnan(o3[1]));
  CHECK(r3 == std::vector<float>{0.0f, 0.0f});
}
