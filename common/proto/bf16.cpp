#include "common/proto/bf16.hpp"

#include "common/error.hpp"

#include <cmath>
#include <cstring>

namespace ptrain::proto {

static_assert(std::endian::native == std::endian::little,
              "the packed bf16 form is defined on little-endian bytes");

void pack_bf16(std::span<const float> src, std::span<float> dst) {
  const size_t n = src.size();
  PTRAIN_ENFORCE(dst.size() == bf16_packed_size(n), "packing {} values into {} elements", n,
                 dst.size());
  const auto pairs = static_cast<int64_t>(n / 2);
  const float* s = src.data();
  float* d = dst.data();
#pragma omp parallel for schedule(static) if (pairs > 65536)
  for (int64_t j = 0; j < pairs; ++j) {
    const uint32_t w = static_cast<uint32_t>(float_to_bf16(s[2 * j])) |
                       (static_cast<uint32_t>(float_to_bf16(s[2 * j + 1])) << 16);
    std::memcpy(d + j, &w, sizeof(w));
  }
  if (n % 2 != 0) {
    const uint32_t w = float_to_bf16(s[n - 1]);  // the upper half is the zero pad
    std::memcpy(d + n / 2, &w, sizeof(w));
  }
}

namespace {

// bf16 bits of v + r, and the new residual.
inline uint16_t with_feedback(float v, float& r) {
  const float sum = v + r;
  const uint16_t b = float_to_bf16(sum);
  const float kept = sum - bf16_to_float(b);
  r = std::isfinite(kept) ? kept : 0.0f;
  return b;
}

}  // namespace

void pack_bf16_feedback(std::span<const float> src, std::span<float> residual,
                        std::span<float> dst) {
  const size_t n = src.size();
  PTRAIN_ENFORCE(dst.size() == bf16_packed_size(n), "packing {} values into {} elements", n,
                 dst.size());
  PTRAIN_ENFORCE(residual.size() == n, "error feedback of {} values for {} values",
                 residual.size(), n);
  const auto pairs = static_cast<int64_t>(n / 2);
  const float* s = src.data();
  float* r = residual.data();
  float* d = dst.data();
#pragma omp parallel for schedule(static) if (pairs > 65536)
  for (int64_t j = 0; j < pairs; ++j) {
    const uint32_t w = static_cast<uint32_t>(with_feedback(s[2 * j], r[2 * j])) |
                       (static_cast<uint32_t>(with_feedback(s[2 * j + 1], r[2 * j + 1])) << 16);
    std::memcpy(d + j, &w, sizeof(w));
  }
  if (n % 2 != 0) {
    const uint32_t w = with_feedback(s[n - 1], r[n - 1]);
    std::memcpy(d + n / 2, &w, sizeof(w));
  }
}

void unpack_bf16(std::span<const float> src, std::span<float> dst) {
  const size_t n = dst.size();
  PTRAIN_ENFORCE(src.size() == bf16_packed_size(n), "widening {} elements into {} values",
                 src.size(), n);
  const auto pairs = static_cast<int64_t>(n / 2);
  const float* s = src.data();
  float* d = dst.data();
#pragma omp parallel for schedule(static) if (pairs > 65536)
  for (int64_t j = 0; j < pairs; ++j) {
    uint32_t w;
    std::memcpy(&w, s + j, sizeof(w));
    d[2 * j] = bf16_to_float(static_cast<uint16_t>(w & 0xffffu));
    d[2 * j + 1] = bf16_to_float(static_cast<uint16_t>(w >> 16));
  }
  if (n % 2 != 0) d[n - 1] = packed_bf16_at(s, n - 1);
}

}  // namespace ptrain::proto
