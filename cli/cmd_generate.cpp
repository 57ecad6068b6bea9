// `ptrain generate --checkpoint CKPT --prompt TEXT [--max-new-tokens N] [--num-samples N]
// [--temperature X] [--top-k K] [--top-p P] [--ignore-eot] [--no-echo] [--seed S] [--threads N]
// [--device D]`: samples continuations with the KV-cache decoder and prints the prompt and each
// continuation on stdout, as they come; the work, its stop conditions, the sliding context window
// and the sampling rule are tools/generate.hpp's.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "tools/generate.hpp"
#include "worker/backend/backend_factory.hpp"

#include <cmath>
#include <memory>

namespace ptrain::cli {

void add_generate_command(CLI::App& app, Action& action) {
  auto args = std::make_shared<tools::GenerateOptions>();
  auto no_echo = std::make_shared<bool>(false);
  auto* sub = app.add_subcommand(
      "generate", "Sample continuations of a prompt from a checkpoint (prints the prompt, then "
                  "the continuation)");
  sub->add_option("--checkpoint", args->checkpoint, "Checkpoint .h5 file or its directory")->required();
  sub->add_option("--prompt", args->prompt, "Text to continue (\"\" starts from <|endoftext|>)")
      ->required();
  sub->add_option("--max-new-tokens,--max-tokens", args->max_tokens,
                  "Most tokens to generate per sample (may exceed seq_len: the context slides)")
      ->capture_default_str();
  sub->add_option("--num-samples", args->num_samples, "Samples to draw, one after the other")
      ->capture_default_str();
  sub->add_option("--temperature", args->temperature, "Softmax temperature; 0 = greedy")
      ->capture_default_str();
  sub->add_option("--top-k", args->top_k, "Sample among the K most likely tokens; 0 = all")
      ->capture_default_str();
  sub->add_option("--top-p", args->top_p,
                  "Sample among the most likely tokens holding this much probability (nucleus); "
                  "1 = all")
      ->capture_default_str();
  sub->add_flag("--ignore-eot", args->ignore_eot,
                "Do not stop at <|endoftext|>: print it and go on into a new document");
  sub->add_flag("--no-echo", *no_echo, "Print only the continuation, not the prompt");
  sub->add_option("--seed", args->seed, "Sampling seed (default: random, logged)");
  add_threads_option(sub, args->threads);
  add_device_option(sub, args->device);
  sub->callback([&action, args, no_echo] {
    action = [args, no_echo] {
      if (!args->device.empty()) check_device(args->device, "--device");  // before any work
      if (args->max_tokens < 0) {
        throw UsageError(fmt::format("--max-new-tokens must be >= 0, got {}", args->max_tokens));
      }
      if (!(args->temperature >= 0.0) || !std::isfinite(args->temperature)) {
        throw UsageError(fmt::format("--temperature must be a finite number >= 0, got {}",
                                     args->temperature));
      }
      if (args->top_k < 0) throw UsageError(fmt::format("--top-k must be >= 0, got {}", args->top_k));
      if (!(args->top_p > 0.0 && args->top_p <= 1.0)) {
        throw UsageError(fmt::format("--top-p must be in (0, 1], got {}", args->top_p));
      }
      if (args->num_samples < 1) {
        throw UsageError(fmt::format("--num-samples must be >= 1, got {}", args->num_samples));
      }
      check_threads_option(args->threads);
      args->echo = !*no_echo;
      tools::generate(*args);
      if (args->echo) std::fputc('\n', stdout);  // the prompt and its text end as a line
      return 0;
    };
  });
}

}  // namespace ptrain::cli
