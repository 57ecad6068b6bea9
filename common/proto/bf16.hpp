// bfloat16 on the wire (cluster.wire_dtype: bf16): the conversions between fp32 and the packed
// form a GradPush or PullReply carries when its `encoding` is FloatEncoding::kBf16.
//
// Packed form: element i of the fp32 vector becomes the upper 16 bits of its IEEE-754 single
// (rounded), stored little-endian at bytes [2i, 2i+2) of the payload. The payload still travels
// as 4-byte elements (FloatRange), two bf16 values per element; an odd count is padded with a
// zero half. So the transports, the frame decoder and receive posting never learn about bf16:
// they move ceil(n/2) "floats" whose bits happen to be two bf16 values each.
//
// Rounding is round-to-nearest-even (as PyTorch's `tensor.to(torch.bfloat16)`); a NaN stays a
// NaN (quiet bit set, sign kept); ±Inf stay ±Inf; finite values beyond bf16's range round to
// ±Inf as IEEE rounding does. Widening back is exact: every bf16 value is an fp32 value, so a
// value representable in bf16 survives a round trip bit for bit.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace ptrain::proto {

// fp32 → bf16 bits, round-to-nearest-even.
inline uint16_t float_to_bf16(float f) {
  const auto u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN: keep sign, force a quiet NaN
  }
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

// bf16 bits → fp32 (exact).
inline float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

// fp32 → fp32 rounded to the nearest bf16 value (what a value looks like after the wire).
inline float round_to_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

// 4-byte elements of the packed form of n values: ceil(n / 2).
inline constexpr size_t bf16_packed_size(size_t n) { return (n + 1) / 2; }

// Packs `src` into `dst` (bf16_packed_size(src.size()) elements). Parallel (OpenMP) when large.
void pack_bf16(std::span<const float> src, std::span<float> dst);
// Error feedback (cluster.wire_error_feedback): packs src[i] + residual[i] and keeps in
// residual[i] what the rounding dropped, (src[i] + residual[i]) − bf16(src[i] + residual[i]), so
// that it is sent with the next push of the same element: over many pushes the values received
// add up to the values given, less the last residual. A non-finite sum leaves a zero residual
// (the value itself goes out as it is). `residual` has src.size() values.
void pack_bf16_feedback(std::span<const float> src, std::span<float> residual,
                        std::span<float> dst);
// Widens packed `src` into `dst` (src.size() == bf16_packed_size(dst.size())).
void unpack_bf16(std::span<const float> src, std::span<float> dst);
// The i-th value of a packed vector, widened.
inline float packed_bf16_at(const float* packed, size_t i) {
  uint32_t w;
  static_assert(sizeof(w) == sizeof(float));
  std::memcpy(&w, packed + i / 2, sizeof(w));
  return bf16_to_float(static_cast<uint16_t>((i & 1) != 0 ? w >> 16 : w & 0xffffu));
}

}  // namespace ptrain::proto
