// Top-k fillers of [MASK] positions from a BERT checkpoint (fill_mask.hpp).
#include "tools/fill_mask.hpp"

#include "common/data/mlm.hpp"
#include "common/error.hpp"
#include "tools/checkpoint_model.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/bert.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string_view>

namespace ptrain::tools {

std::vector<std::vector<Filler>> fill_mask(const FillMaskOptions& o) {
  const CheckpointModel cm = open_checkpoint_model(o.checkpoint);
  const ParamLayout& layout = *cm.layout;
  const ModelDims& d = layout.dims();
  if (d.arch != ModelArch::kBert || d.num_labels > 0) {
    throw UsageError(fmt::format("{}: fill-mask needs a masked-LM checkpoint (model.arch bert), "
                                 "this one is model.arch {}{}",
                                 cm.file, model_arch_name(d.arch),
                                 d.num_labels > 0 ? fmt::format(" with a {}-way classification "
                                                                "head (model.num_labels)",
                                                                d.num_labels)
                                                  : std::string()));
  }
  const BertTokens tok = bert_tokens(d);
  constexpr std::string_view kMarker = "[MASK]";
  std::vector<int32_t> text;
  std::string_view rest = o.text;
  int64_t masks = 0;
  for (;;) {
    const size_t at = rest.find(kMarker);
    const std::vector<int32_t> piece = cm.tokenizer->encode(rest.substr(0, at));
    text.insert(text.end(), piece.begin(), piece.end());
    if (at == std::string_view::npos) break;
    text.push_back(tok.mask);
    ++masks;
    rest = rest.substr(at + kMarker.size());
  }
  if (masks == 0) throw UsageError("--text has no [MASK]");
  if (static_cast<int64_t>(text.size()) > d.T - 2) {
    throw UsageError(fmt::format("--text is {} tokens; the model takes at most seq_len - 2 = {}",
                                 text.size(), d.T - 2));
  }
  std::vector<int32_t> seq(text.size() + 2);
  const int64_t T = bert_sequence(text, tok, seq);

  auto backend = make_backend_for(o.device, cm.config);
  Bert bert(layout, *backend, 1);
  GptState state(layout, *backend);
  state.upload_params(cm.params);
  std::vector<float> logits(static_cast<size_t>(T * d.Vp));
  bert.mlm_logits(state, seq, 1, T, logits);

  std::vector<std::vector<Filler>> out;
  std::vector<int32_t> order(static_cast<size_t>(tok.text_vocab));
  for (int64_t t = 0; t < T; ++t) {
    if (seq[static_cast<size_t>(t)] != tok.mask) continue;
    const float* row = logits.data() + t * d.Vp;
    const float mx = *std::max_element(row, row + d.V);
    double z = 0;
    for (int64_t v = 0; v < d.V; ++v) z += std::exp(double(row[v]) - mx);
    std::iota(order.begin(), order.end(), 0);
    const auto k = static_cast<size_t>(std::min<int64_t>(o.top_k, tok.text_vocab));
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                      [row](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    std::vector<Filler> f;
    for (size_t i = 0; i < k; ++i) {
      const int32_t id = order[i];
      f.push_back({id, cm.tokenizer->decode(std::span<const int32_t>(&id, 1)),
                   std::exp(double(row[id]) - mx) / z});
    }
    out.push_back(std::move(f));
  }
  return out;
}

void print_fill_mask(const std::vector<std::vector<Filler>>& r, bool json) {
  if (json) {
    nlohmann::json j;
    j["masks"] = nlohmann::json::array();
    for (const auto& fs : r) {
      nlohmann::json a = nlohmann::json::array();
      for (const auto& f : fs) {
        a.push_back({{"token", f.text}, {"id", f.id}, {"probability", f.probability}});
      }
      j["masks"].push_back(a);
    }
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return;
  }
  for (size_t i = 0; i < r.size(); ++i) {
    std::printf("[MASK] #%zu:\n", i + 1);
    for (const auto& f : r[i]) {
      std::printf("  %.4f  %s\n", f.probability, nlohmann::json(f.text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
  }
}

}  // namespace ptrain::tools
