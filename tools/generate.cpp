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
  double top_p = 1.0;
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
    auto more_likely = [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    int32_t k = V;
    if (top_k > 0 && top_k < V) {
      k = static_cast<int32_t>(top_k);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), more_likely);
    } else if (top_p < 1.0) {
      std::sort(order.begin(), order.end(), more_likely);  // nucleus: most likely first
    }
    double max_logit = -INFINITY;
    for (int32_t i = 0; i < k; ++i) max_logit = std::max<double>(max_logit, logits[order[i]]);
    probs.resize(static_cast<size_t>(k));
    double sum = 0.0;
    for (int32_t i = 0; i < k; ++i) {
      probs[i] = std::exp((static_cast<double>(logits[order[i]]) - max_logit) / temperature);
      sum += probs[i];
    }
    if (top_p < 1.0) {
      // The smallest prefix (most likely first) holding top_p of the mass; at least one token.
      double acc = 0.0;
      int32_t keep = 0;
      while (keep < k && (keep == 0 || acc < top_p * sum)) acc += probs[keep++];
      k = keep;
      sum = acc;
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

// The decoder over a context of at most T tokens that slides when full (generate.hpp).
class SlidingContext {
 public:
  SlidingContext(GptDecoder& decoder, const GptState& state, int64_t T)
      : decoder_(decoder), state_(state), T_(T), keep_(std::max<int64_t>(1, T - T / 4)) {}

  // Starts over on `tokens` (at most T); the logits after the last one.
  std::span<const float> start(const std::vector<int32_t>& tokens) {
    decoder_.reset();
    ctx_ = tokens;
    std::span<const float> logits;
    for (int32_t id : ctx_) logits = decoder_.step(state_, id);
    return logits;
  }

  // Appends `id`; when the context is full, restarts on the newest keep_ tokens first.
  std::span<const float> push(int32_t id) {
    ctx_.push_back(id);
    if (decoder_.position() < T_) return decoder_.step(state_, id);
    ++slides;
    return start(std::vector<int32_t>(ctx_.end() - keep_, ctx_.end()));
  }

  int64_t slides = 0;

 private:
  GptDecoder& decoder_;
  const GptState& state_;
  int64_t T_, keep_;
  std::vector<int32_t> ctx_;
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
  auto write = [&](std::string_view text) {
    if (o.out) {
      o.out(text);
    } else {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    }
  };

  std::vector<int32_t> prompt = tok.encode(o.prompt);
  if (prompt.empty()) prompt.push_back(tok.eot());
  if (static_cast<int64_t>(prompt.size()) > T) {
    spdlog::warn("--prompt is {} tokens, more than the model's seq_len ({}): the model sees its "
                 "last {}",
                 prompt.size(), T, T);
    prompt.erase(prompt.begin(), prompt.end() - T);
  }

  Sampler sampler;
  sampler.temperature = o.temperature;
  sampler.top_k = o.top_k;
  sampler.top_p = o.top_p;
  uint64_t seed = 0;
  if (o.seed) {
    seed = *o.seed;
  } else {
    std::random_device rd;
    seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    if (o.temperature > 0.0 && !o.quiet) spdlog::info("sampling seed {}", seed);
  }
  sampler.rng.seed(seed);

  auto backend = make_backend_for(o.device, with_threads(cm.config, o.threads));
  GptState state(layout, *backend);
  state.upload_params(cm.params);
  GptDecoder decoder(layout, *backend);
  SlidingContext context(decoder, state, T);

  GenerateResult r;
  for (int64_t sample = 0; sample < o.num_samples; ++sample) {
    if (sample > 0) write("\n---------------\n");
    if (o.echo) write(o.prompt);
    std::span<const float> logits = context.start(prompt);
    int64_t generated = 0;
    r.stop = "max-tokens";
    while (generated < o.max_tokens) {
      const int32_t next = sampler.next(logits.subspan(0, static_cast<size_t>(V)));
      if (next == tok.eot() && !o.ignore_eot) {
        r.stop = "<|endoftext|>";
        break;
      }
      write(next == tok.eot() ? std::string("<|endoftext|>")
                              : tok.decode(std::span<const int32_t>(&next, 1)));
      ++generated;
      if (generated == o.max_tokens) break;
      logits = context.push(next);
    }
    r.generated += generated;
  }
  r.slides = context.slides;
  if (!o.quiet) {
    spdlog::info("generated {} tokens in {} sample(s) (last stop: {}{})", r.generated, o.num_samples,
                 r.stop,
                 r.slides > 0 ? fmt::format("; the context window of {} tokens slid {} times", T,
                                            r.slides)
                              : "");
  }
  return r;
}

}  // namespace ptrain::tools
