// `ptrain generate --checkpoint CKPT --prompt TEXT [--max-tokens N] [--temperature X] [--top-k K]
// [--seed S] [--device D]`: samples a continuation with the KV-cache decoder (GptDecoder, on
// --device, default the stored device.type) and prints only the continuation's bytes on stdout,
// as they come. Stops at <|endoftext|> (not printed), after N
// tokens, or when the context reaches the model's seq_len (said on stderr). An empty prompt starts
// from <|endoftext|>, the document boundary the model was trained on.
//
// Sampling: temperature 0 is greedy (argmax, lowest id on ties); otherwise softmax(logits / X)
// over the K most likely tokens (K = 0: all), drawn with a std::mt19937_64 seeded by --seed (a
// random seed, logged, when absent). Only real tokenizer ids are candidates: padded vocabulary
// rows are never sampled.
#include "cli/checkpoint_model.hpp"
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <optional>
#include <random>

namespace ptrain::cli {
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

void add_generate_command(CLI::App& app, Action& action) {
  struct Args {
    std::string checkpoint, prompt, device;
    int64_t max_tokens = 100;
    double temperature = 1.0;
    int64_t top_k = 0;
    std::optional<uint64_t> seed;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "generate", "Sample a continuation of a prompt from a checkpoint (prints only the continuation)");
  sub->add_option("--checkpoint", args->checkpoint, "Checkpoint .h5 file or its directory")->required();
  sub->add_option("--prompt", args->prompt, "Text to continue (\"\" starts from <|endoftext|>)")
      ->required();
  sub->add_option("--max-tokens", args->max_tokens, "Most tokens to generate")->capture_default_str();
  sub->add_option("--temperature", args->temperature, "Softmax temperature; 0 = greedy")
      ->capture_default_str();
  sub->add_option("--top-k", args->top_k, "Sample among the K most likely tokens; 0 = all")
      ->capture_default_str();
  sub->add_option("--seed", args->seed, "Sampling seed (default: random, logged)");
  add_device_option(sub, args->device);
  sub->callback([&action, args] {
    action = [args] {
      if (!args->device.empty()) check_device(args->device, "--device");  // before any work
      if (args->max_tokens < 0) {
        throw UsageError(fmt::format("--max-tokens must be >= 0, got {}", args->max_tokens));
      }
      if (!(args->temperature >= 0.0) || !std::isfinite(args->temperature)) {
        throw UsageError(fmt::format("--temperature must be a finite number >= 0, got {}",
                                     args->temperature));
      }
      if (args->top_k < 0) throw UsageError(fmt::format("--top-k must be >= 0, got {}", args->top_k));

      const CheckpointModel cm = open_checkpoint_model(args->checkpoint);
      const ParamLayout& layout = *cm.layout;
      const Tokenizer& tok = *cm.tokenizer;
      const int64_t T = layout.dims().T;
      const int64_t V = layout.dims().V;

      std::vector<int32_t> prompt = tok.encode(args->prompt);
      if (prompt.empty()) prompt.push_back(tok.eot());
      if (static_cast<int64_t>(prompt.size()) > T) {
        throw UsageError(fmt::format("--prompt is {} tokens, more than the model's seq_len ({}) of {}",
                                     prompt.size(), T, cm.file));
      }

      Sampler sampler;
      sampler.temperature = args->temperature;
      sampler.top_k = args->top_k;
      uint64_t seed = 0;
      if (args->seed) {
        seed = *args->seed;
      } else {
        std::random_device rd;
        seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
        if (args->temperature > 0.0) spdlog::info("sampling seed {}", seed);
      }
      sampler.rng.seed(seed);

      auto backend = tool_backend(args->device, cm.config);
      GptState state(layout, *backend);
      state.upload_params(cm.params);
      GptDecoder decoder(layout, *backend);
      std::span<const float> logits;
      for (int32_t id : prompt) logits = decoder.step(state, id);

      int64_t generated = 0;
      std::string stop = "max-tokens";
      while (generated < args->max_tokens) {
        const int32_t next = sampler.next(logits.subspan(0, static_cast<size_t>(V)));
        if (next == tok.eot()) {
          stop = "<|endoftext|>";
          break;
        }
        const std::string bytes = tok.decode(std::span<const int32_t>(&next, 1));
        std::fwrite(bytes.data(), 1, bytes.size(), stdout);
        std::fflush(stdout);
        ++generated;
        if (generated == args->max_tokens) break;
        if (decoder.position() >= T) {
          stop = "seq_len";
          spdlog::warn("stopped after {} tokens: the context reached the model's seq_len ({})",
                       generated, T);
          break;
        }
        logits = decoder.step(state, next);
      }
      spdlog::info("generated {} tokens (stop: {})", generated, stop);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
