// Evaluator: validation loss with the coordinator's own model instance (evaluator.hpp).
#include "coordinator/evaluator.hpp"

#include "common/error.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/batch_loader.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"
#include "worker/model/gpt_state.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <numeric>

namespace ptrain {

Evaluator::Evaluator(const ParamLayout& layout, EvaluatorOptions options)
    : layout_(layout), options_(std::move(options)), file_(TokenFile::open(options_.val_path)) {
  const int64_t available = file_.num_windows(layout.dims().T);
  if (available < 1) {
    throw DataError(fmt::format("{} (data.val) has no complete window of {} tokens",
                                options_.val_path, layout.dims().T + 1));
  }
  count_ = options_.windows > 0 ? std::min(options_.windows, available) : available;
}

Evaluator::~Evaluator() = default;

double Evaluator::evaluate(std::span<const float> params) {
  const int threads = std::max(1, options_.threads);
  omp_set_num_threads(threads);
  if (!gpt_) {
    backend_ = make_cpu_backend(threads);
    gpt_ = std::make_unique<Gpt>(layout_, *backend_, options_.batch);
    state_ = std::make_unique<GptState>(layout_, *backend_);
  }
  state_->upload_params(params);
  const int64_t T = layout_.dims().T;
  BatchLoader loader(file_, T);
  std::vector<int64_t> ids(static_cast<size_t>(count_));
  std::iota(ids.begin(), ids.end(), int64_t{0});
  std::vector<int32_t> tokens;
  double loss = 0.0;
  int64_t n = 0;
  for (const auto& [b, e] : micro_batches(count_, options_.batch)) {
    loader.load(std::span<const int64_t>(ids.data() + b, static_cast<size_t>(e - b)), tokens);
    const LossSum ls = gpt_->forward_loss(*state_, tokens, e - b, T);
    loss += ls.loss_sum;
    n += ls.tokens;
  }
  return n > 0 ? loss / static_cast<double>(n) : 0.0;
}

}  // namespace ptrain
