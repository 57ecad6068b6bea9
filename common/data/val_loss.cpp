#include "common/data/val_loss.hpp"

#include "common/error.hpp"

#include <algorithm>

namespace ptrain {

int64_t val_window_count(int64_t available, int64_t limit) {
  PTRAIN_ENFORCE(available >= 0 && limit >= 0, "val windows: available {}, limit {}", available,
                 limit);
  return limit > 0 ? std::min(limit, available) : available;
}

std::vector<std::pair<int64_t, int64_t>> val_batches(int64_t n, int64_t batch) {
  PTRAIN_ENFORCE(batch >= 1 && n >= 0, "val batches: {} windows in batches of {}", n, batch);
  std::vector<std::pair<int64_t, int64_t>> out;
  out.reserve(static_cast<size_t>((n + batch - 1) / batch));
  for (int64_t b = 0; b < n; b += batch) out.emplace_back(b, std::min(n, b + batch));
  return out;
}

ValLoss combine_val_batches(std::span<const double> loss_sums, std::span<const int64_t> tokens) {
  PTRAIN_ENFORCE(loss_sums.size() == tokens.size(), "{} loss sums, {} token counts",
                 loss_sums.size(), tokens.size());
  ValLoss v;
  for (size_t k = 0; k < loss_sums.size(); ++k) {
    v.loss_sum += loss_sums[k];
    v.tokens += tokens[k];
  }
  return v;
}

}  // namespace ptrain
