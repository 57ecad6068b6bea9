// Validation loss for the coordinator: the first `windows` windows of data.val (0 = all), in file
// order, in batches of `batch` sequences, with the coordinator's own model instance.
// val_loss = Σ token losses / Σ tokens.
#pragma once

#include "common/io/token_file.hpp"
#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace ptrain {

class Backend;
class Gpt;
class GptState;

struct EvaluatorOptions {
  std::string val_path;
  int64_t windows = 0;  // 0 = all complete windows
  int64_t batch = 1;    // sequences per forward pass
  int threads = 1;
};

class Evaluator {
 public:
  Evaluator(const ParamLayout& layout, EvaluatorOptions options);
  ~Evaluator();
  double evaluate(std::span<const float> params);
  int64_t windows() const { return count_; }

 private:
  const ParamLayout& layout_;
  EvaluatorOptions options_;
  TokenFile file_;
  int64_t count_ = 0;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Gpt> gpt_;
  std::unique_ptr<GptState> state_;
};

}  // namespace ptrain
