#include "common/tensor/gpt_init.hpp"

#include "common/error.hpp"
#include "common/util/hash.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>

namespace ptrain {
namespace {

// A uniform in (0, 1) from 64 random bits.
double unit_open(uint64_t bits) { return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53; }

// Element i of a standard-normal stream: Box–Muller on the pair i/2 of a counter-based generator
// keyed by (seed, stream). A pure function of its arguments, so any thread may compute any element.
double normal_at(uint64_t key, int64_t i) {
  const uint64_t pair = static_cast<uint64_t>(i) >> 1;
  const double u1 = unit_open(splitmix64(key ^ (2 * pair)));
  const double u2 = unit_open(splitmix64(key ^ (2 * pair + 1)));
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double th = 2.0 * std::numbers::pi * u2;
  return (i & 1) ? r * std::sin(th) : r * std::cos(th);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void check_dims(const ModelDims& d) {
  PTRAIN_ENFORCE(d.V > 0 && d.Vp >= d.V, "vocabulary V={} Vp={}", d.V, d.Vp);
  PTRAIN_ENFORCE(d.T > 0 && d.L > 0 && d.NH > 0 && d.C > 0, "model dims T={} L={} NH={} C={}", d.T,
                 d.L, d.NH, d.C);
}

}  // namespace

void init_gpt_params_range(const ParamLayout& layout, uint64_t seed, int64_t begin,
                           std::span<float> out) {
  const ModelDims& d = layout.dims();
  check_dims(d);
  const auto size = static_cast<int64_t>(out.size());
  PTRAIN_ENFORCE(begin >= 0 && begin + size <= layout.total(),
                 "init of [{}, {}) outside the parameter vector [0, {})", begin, begin + size,
                 layout.total());
  const int64_t end = begin + size;
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(d.L));
  const auto& tensors = layout.tensors();
  for (size_t k = 0; k < tensors.size(); ++k) {
    const TensorSpec& t = tensors[k];
    // The part [lo, hi) of tensor t inside the slice, as element indices i of the tensor.
    const int64_t lo = std::max(begin, t.offset) - t.offset;
    const int64_t hi = std::min(end, t.offset + t.count) - t.offset;
    if (lo >= hi) continue;
    float* p = out.data() + (t.offset + lo - begin);  // p[i - lo] is element i of t
    double stddev = 0.02;
    if (ends_with(t.name, "attn.c_proj.weight") || ends_with(t.name, "mlp.c_proj.weight")) {
      stddev = residual_std;
    }
    // GPT-2's ln_*/ln_f, BERT's LayerNorm (BERT names have no ".ln_" and no c_proj).
    const bool is_ln_weight = (t.name.find(".ln_") != std::string::npos ||
                               t.name.find("LayerNorm") != std::string::npos) &&
                              ends_with(t.name, ".weight");
    if (ends_with(t.name, ".bias") || is_ln_weight) {
      const float v = is_ln_weight ? 1.0f : 0.0f;
      std::fill(p, p + (hi - lo), v);
      continue;
    }
    // Real rows only for wte; padded rows start at zero.
    int64_t real = t.count;
    if (t.offset == layout.wte()) real = d.V * d.C;
    const int64_t rhi = std::min(hi, real);
    for (int64_t i = std::max(lo, rhi); i < hi; ++i) p[i - lo] = 0.0f;
    const uint64_t key = splitmix64(seed ^ splitmix64(0x70747261696e00ull + k));  // "ptrain" + k
#pragma omp parallel for schedule(static) if (rhi - lo > (1 << 16))
    for (int64_t i = lo; i < rhi; ++i) p[i - lo] = static_cast<float>(stddev * normal_at(key, i));
  }
}

void init_gpt_params(const ParamLayout& layout, uint64_t seed, std::span<float> params) {
  PTRAIN_ENFORCE(static_cast<int64_t>(params.size()) == layout.total(),
                 "params: expected {} floats, got {}", layout.total(), params.size());
  init_gpt_params_range(layout, seed, 0, params);
}

}  // namespace ptrain
