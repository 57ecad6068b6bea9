// Masked-LM examples (mlm.hpp).
#include "common/data/mlm.hpp"

#include "common/error.hpp"
#include "common/util/hash.hpp"

namespace ptrain {
namespace {

double unit(uint64_t bits) { return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53; }

constexpr double kChoose = 0.15, kToMask = 0.8, kToRandom = 0.9;
constexpr int32_t kIgnore = -100;

}  // namespace

BertTokens bert_tokens(const ModelDims& dims) {
  PTRAIN_ENFORCE(dims.arch == ModelArch::kBert && dims.V > kBertSpecialTokens,
                 "bert_tokens of a non-BERT model (V={})", dims.V);
  BertTokens t;
  t.text_vocab = dims.V - kBertSpecialTokens;
  t.pad = static_cast<int32_t>(t.text_vocab);
  t.cls = t.pad + 1;
  t.sep = t.pad + 2;
  t.mask = t.pad + 3;
  return t;
}

uint64_t mlm_mask_key(uint64_t run_seed, int64_t step, int64_t window) {
  const uint64_t k = splitmix64(run_seed ^ 0x6d6c6d2d6d61736bull);  // "mlm-mask"
  return splitmix64(splitmix64(k ^ static_cast<uint64_t>(step)) ^ static_cast<uint64_t>(window));
}

void mlm_example(std::span<const int32_t> window, int64_t T, const BertTokens& tok, uint64_t key,
                 std::span<int32_t> inputs, std::span<int32_t> labels) {
  PTRAIN_ENFORCE(T >= 3, "a BERT sequence needs T >= 3, got {}", T);
  PTRAIN_ENFORCE(static_cast<int64_t>(inputs.size()) == T && static_cast<int64_t>(labels.size()) == T,
                 "inputs/labels: expected {} each", T);
  PTRAIN_ENFORCE(static_cast<int64_t>(window.size()) >= T - 2, "window of {} ids for T {}",
                 window.size(), T);
  const int64_t n = T - 2;
  inputs[0] = tok.cls;
  labels[0] = kIgnore;
  inputs[static_cast<size_t>(T - 1)] = tok.sep;
  labels[static_cast<size_t>(T - 1)] = kIgnore;
  auto draw = [key](int64_t j, int r) { return splitmix64(key + 3 * static_cast<uint64_t>(j) + r); };
  int64_t chosen = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int32_t w = window[static_cast<size_t>(j)];
    if (w < 0 || w >= tok.text_vocab) {
      throw DataError(fmt::format("token id {} at position {} of a window is outside the "
                                  "tokenizer's vocabulary [0, {})",
                                  w, j, tok.text_vocab));
    }
    inputs[static_cast<size_t>(j + 1)] = w;
    labels[static_cast<size_t>(j + 1)] = kIgnore;
    chosen += unit(draw(j, 0)) < kChoose;
  }
  auto apply = [&](int64_t j) {
    const int32_t w = window[static_cast<size_t>(j)];
    labels[static_cast<size_t>(j + 1)] = w;
    const double u = unit(draw(j, 1));
    if (u < kToMask) {
      inputs[static_cast<size_t>(j + 1)] = tok.mask;
    } else if (u < kToRandom) {
      inputs[static_cast<size_t>(j + 1)] =
          static_cast<int32_t>(draw(j, 2) % static_cast<uint64_t>(tok.text_vocab));
    }
  };
  if (chosen == 0) {
    apply(static_cast<int64_t>(splitmix64(key) % static_cast<uint64_t>(n)));
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    if (unit(draw(j, 0)) < kChoose) apply(j);
  }
}

int64_t bert_sequence(std::span<const int32_t> text, const BertTokens& tok,
                      std::span<int32_t> out) {
  const auto len = static_cast<int64_t>(text.size());
  PTRAIN_ENFORCE(static_cast<int64_t>(out.size()) >= len + 2, "sequence of {} tokens in {}",
                 len + 2, out.size());
  out[0] = tok.cls;
  for (int64_t j = 0; j < len; ++j) out[static_cast<size_t>(j + 1)] = text[static_cast<size_t>(j)];
  out[static_cast<size_t>(len + 1)] = tok.sep;
  return len + 2;
}

}  // namespace ptrain
