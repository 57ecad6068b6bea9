// Evaluating a checkpoint over a token file (eval.hpp).
#include "tools/eval.hpp"

#include "common/data/val_loss.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "tools/checkpoint_model.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"
#include "worker/train_step.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <cmath>
#include <cstdio>
#include <vector>

namespace ptrain::tools {

EvalResult evaluate(const EvalOptions& o) {
  const CheckpointModel cm = open_checkpoint_model(o.checkpoint);
  const ParamLayout& layout = *cm.layout;
  const int64_t T = layout.dims().T;
  const TokenFile tf = TokenFile::open(o.data, "val");  // a prepared folder: its val split
  check_token_file_vocab(tf, cm);
  const int64_t windows = tf.num_windows(T);
  if (windows < 1) {
    throw DataError(fmt::format("{} has {} tokens: no complete window of T+1 = {} tokens", tf.path(),
                                tf.size(), T + 1));
  }
  auto backend = make_backend_for(o.device, with_threads(cm.config, o.threads));
  const int64_t micro = std::clamp<int64_t>(cm.config.train.micro_batch, 1, windows);
  // BERT goes through the worker's TrainStep: the same masking (the fixed evaluation masks of
  // each window, common/data/mlm.hpp) as the in-run validation.
  const bool bert = layout.dims().arch == ModelArch::kBert;
  std::unique_ptr<Gpt> gpt;
  std::unique_ptr<GptState> state;
  std::unique_ptr<TrainStep> mlm;
  if (bert) {
    mlm = std::make_unique<TrainStep>(layout, *backend, micro);
    mlm->set_weights(cm.params);
  } else {
    gpt = std::make_unique<Gpt>(layout, *backend, micro);
    state = std::make_unique<GptState>(layout, *backend);
    state->upload_params(cm.params);
  }
  int64_t correct = 0;
  std::vector<int64_t> ids;
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
    LossSum ls;
    if (bert) {
      ids.resize(static_cast<size_t>(w1 - w0));
      for (int64_t w = w0; w < w1; ++w) ids[static_cast<size_t>(w - w0)] = w;
      ls = mlm->loss(batch, w1 - w0, ids);
      correct += ls.correct;
    } else {
      ls = gpt->forward_loss(*state, batch, w1 - w0, T);
    }
    sums[k] = ls.loss_sum;
    counts[k] = ls.tokens;
  }
  const ValLoss total = combine_val_batches(sums, counts);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EvalResult r;
  r.loss = total.mean();
  r.perplexity = std::exp(r.loss);
  r.windows = windows;
  r.tokens = total.tokens;
  r.step = cm.meta.step;
  if (bert) r.accuracy = total.tokens > 0 ? static_cast<double>(correct) / total.tokens : 0.0;
  spdlog::info("{} (step {}) on {}: {} windows, {} tokens in {:.2f} s", cm.file, cm.meta.step,
               tf.path(), windows, total.tokens, seconds);
  return r;
}

void print_eval(const EvalResult& r, bool json) {
  if (json) {
    nlohmann::json j;
    j["loss"] = r.loss;
    j["perplexity"] = r.perplexity;
    j["windows"] = r.windows;
    j["tokens"] = r.tokens;
    j["step"] = r.step;
    if (r.accuracy >= 0) j["accuracy"] = r.accuracy;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("loss %.6f  perplexity %.4f  (%lld windows, %lld tokens, step %lld)\n", r.loss,
                r.perplexity, static_cast<long long>(r.windows), static_cast<long long>(r.tokens),
                static_cast<long long>(r.step));
    if (r.accuracy >= 0) std::printf("masked-token accuracy %.4f\n", r.accuracy);
  }
}

}  // namespace ptrain::tools
