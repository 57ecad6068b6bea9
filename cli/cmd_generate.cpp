// `ptrain generate --checkpoint CKPT --prompt TEXT [--max-tokens N] [--temperature X] [--top-k K]
// [--seed S] [--device D]`: samples a continuation with the KV-cache decoder (on --device, default
// the stored device.type) and prints only the continuation's bytes on stdout, as they come; the
// work, its stop conditions and the sampling rule are tools/generate.hpp's.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "tools/generate.hpp"
#include "worker/backend/backend_factory.hpp"

#include <cmath>
#include <memory>

namespace ptrain::cli {

void add_generate_command(CLI::App& app, Action& action) {
  auto args = std::make_shared<tools::GenerateOptions>();
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

      tools::generate(*args);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
