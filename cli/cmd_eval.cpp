// `ptrain eval --checkpoint CKPT --data FILE.tok [--device D] [--json]`: mean cross-entropy of a
// checkpoint over every complete window of a token file (file order, T = model.seq_len, batches of
// train.micro_batch windows, summed as common/data/val_loss.hpp says), and its perplexity, on
// --device (default: the stored device.type). --json prints one object
// {"loss", "perplexity", "windows", "tokens", "step"} on stdout; logs go to stderr.
#include "cli/checkpoint_model.hpp"
#include "cli/commands.hpp"
#include "common/data/val_loss.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

namespace ptrain::cli {

void add_eval_command(CLI::App& app, Action& action) {
  struct Args {
    std::string checkpoint, data, device;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "eval", "Mean loss and perplexity of a checkpoint over every complete window of a token file");
  sub->add_option("--checkpoint", args->checkpoint, "Checkpoint .h5 file or its directory")->required();
  sub->add_option("--data", args->data, ".tok file")->required();
  add_device_option(sub, args->device);
  sub->add_flag("--json", args->json, "Print one JSON object on stdout");
  sub->callback([&action, args] {
    action = [args] {
      if (!args->device.empty()) check_device(args->device, "--device");  // before any work
      const CheckpointModel cm = open_checkpoint_model(args->checkpoint);
      const ParamLayout& layout = *cm.layout;
      const int64_t T = layout.dims().T;
      const TokenFile tf = TokenFile::open(args->data);
      check_token_file_vocab(tf, cm);
      const int64_t windows = tf.num_windows(T);
      if (windows < 1) {
        throw DataError(fmt::format("{} has {} tokens: no complete window of T+1 = {} tokens", tf.path(),
                                    tf.size(), T + 1));
      }
      auto backend = tool_backend(args->device, cm.config);
      const int64_t micro = std::clamp<int64_t>(cm.config.train.micro_batch, 1, windows);
      Gpt gpt(layout, *backend, micro);
      GptState state(layout, *backend);
      state.upload_params(cm.params);
      const auto t0 = std::chrono::steady_clock::now();
      // The batches and the order of the sum are those of the in-run evaluation
      // (common/data/val_loss.hpp), so its val_loss at a checkpoint's step is this number.
      const auto batches = val_batches(windows, micro);
      std::vector<double> sums(batches.size());
      std::vector<int64_t> counts(batches.size());
      std::vector<int32_t> batch;
      for (size_t k = 0; k < batches.size(); ++k) {
        const auto [w0, w1] = batches[k];
        read_windows(tf, w0, w1 - w0, T, layout.dims().V, batch);
        const LossSum ls = gpt.forward_loss(state, batch, w1 - w0, T);
        sums[k] = ls.loss_sum;
        counts[k] = ls.tokens;
      }
      const ValLoss total = combine_val_batches(sums, counts);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double loss = total.mean();
      const double ppl = std::exp(loss);
      spdlog::info("{} (step {}) on {}: {} windows, {} tokens in {:.2f} s", cm.file, cm.meta.step,
                   tf.path(), windows, total.tokens, seconds);
      if (args->json) {
        nlohmann::json j;
        j["loss"] = loss;
        j["perplexity"] = ppl;
        j["windows"] = windows;
        j["tokens"] = total.tokens;
        j["step"] = cm.meta.step;
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("loss %.6f  perplexity %.4f  (%lld windows, %lld tokens, step %lld)\n", loss, ppl,
                    static_cast<long long>(windows), static_cast<long long>(total.tokens),
                    static_cast<long long>(cm.meta.step));
      }
      return 0;
    };
  });
}

}  // namespace ptrain::cli
