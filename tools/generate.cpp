// Sampling a continuation from a checkpoint (generate.hpp).
#include "tools/generate.hpp"

#include "common/error.hpp"
#include "tools/checkpoint_model.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

namespace ptrain::tools {
namespace {

struct Sampler {
  double temperature = 1.0;
  int64_t top_k = 0;
  std::mt19937_64 rng;
  std::vector<int32_t> order;
  std::vector<double> probs;

  // logits: the first V (real) entries of the decoder's output.
  int32_t next(std::span<const float> logits) {
    const auto V = static_cast<int32_t>(logits.size());
    if (temperature == 0.0) {
      int32_t best = 0;
      for (int32_t i = 1; i < V; ++i) {
        if (logits[i] > logits[best]) best = i;
      }
      return best;
    }
    order.resize(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    int32_t k = V;
    if (top_k > 0 && top_k < V) {
      k = static_cast<int32_t>(top_k);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
    }
    double max_logit = -INFINITY;
    for (int32_t i = 0; i < k; ++i) max_logit = std::max<double>(max_logit, logits[order[i]]);
    probs.resize(static_cast<size_t>(k));
    double sum = 0.0;
    for (int32_t i = 0; i < k; ++i) {
      probs[i] = std::exp((static_cast<double>(logits[order[i]]) - max_logit) / temperature);
      sum += probs[i];
    }
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * sum;
    double acc = 0.0;
    for (int32_t i = 0; i < k; ++i) {
      acc += probs[i];
      if (u < acc) return order[i];
    }
    for (int32_t i = k - 1; i >= 0; --i) {  // rounding: the last candidate with mass
      if (probs[i] > 0.0) return order[i];
    }
    return order[0];
  }
};

}  // namespace

GenerateResult generate(const GenerateOptions& o) {
  const CheckpointModel cm = open_checkpoint_model(o.checkpoint);
  const ParamLayout& layout = *cm.layout;
  if (layout.dims().arch != ModelArch::kGpt) {
    throw UsageError(fmt::format("{}: generate needs a causal LM (model.arch gpt), this one is "
                                 "model.arch {}; use fill-mask",
                                 cm.file, model_arch_name(layout.dims().arch)));
  }
  const Tokenizer& tok = *cm.tokenizer;
  const int64_t T = layout.dims().T;
  const int64_t V = layout.dims().V;

  std::vector<int32_t> prompt = tok.encode(o.prompt);
  if (prompt.empty()) prompt.push_back(tok.eot());
  if (static_cast<int64_t>(prompt.size()) > T) {
    throw UsageError(fmt::format("--prompt is {} tokens, more than the model's seq_len ({}) of {}",
                                 prompt.size(), T, cm.file));
  }

  Sampler sampler;
  sampler.temperature = o.temperature;
  sampler.top_k = o.top_k;
  uint64_t seed = 0;
  if (o.seed) {
    seed = *o.seed;
  } else {
    std::random_device rd;
    seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    if (o.temperature > 0.0) spdlog::info("sampling seed {}", seed);
  }
  sampler.rng.seed(seed);

  auto backend = make_backend_for(o.device, cm.config);
  GptState state(layout, *backend);
  state.upload_params(cm.params);
  GptDecoder decoder(layout, *backend);
  std::span<const float> logits;
  for (int32_t id : prompt) logits = decoder.step(state, id);

  int64_t generated = 0;
  std::string stop = "max-tokens";
  while (generated < o.max_tokens) {
    const int32_t next = sampler.next(logits.subspan(0, static_cast<size_t>(V)));
    if (next == tok.eot()) {
      stop = "<|endoftext|>";
      break;
    }
    const std::string bytes = tok.decode(std::span<const int32_t>(&next, 1));
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
    ++generated;
    if (generated == o.max_tokens) break;
    if (decoder.position() >= T) {
      stop = "seq_len";
      spdlog::warn("stopped after {} tokens: the context reached the model's seq_len ({})",
                   generated, T);
      break;
    }
    logits = decoder.step(state, next);
  }
  spdlog::info("generated {} tokens (stop: {})", generated, stop);
  return GenerateResult{generated, stop};
}

}  // namespace ptrain::tools
