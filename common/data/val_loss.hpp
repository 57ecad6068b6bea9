// Validation loss in one fixed summation order, shared by the in-run evaluation (planned by the
// coordinator, computed by the workers) and `ptrain eval`, so that both print the same number for
// the same weights and windows.
//
// The unit is the validation batch: batch k holds windows [k·B, min((k+1)·B, n)) of data.val in file
// order (B = train.micro_batch). Its loss sum is Gpt::forward_loss over exactly those windows (a
// pass over one batch sums its token losses in a fixed order). The mean is Σ_k loss_sum_k / Σ_k
// tokens_k, the loss sums added in k order in fp64. A batch is the same whatever the number of
// workers (the coordinator hands out whole batches), so the result is too.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace ptrain {

// Windows evaluated: the first `limit` of the `available` complete windows (limit 0 = all).
int64_t val_window_count(int64_t available, int64_t limit);

// Batches of `batch` windows over windows [0, n): [begin, end) pairs, in order. batch >= 1.
std::vector<std::pair<int64_t, int64_t>> val_batches(int64_t n, int64_t batch);

struct ValLoss {
  double loss_sum = 0.0;  // nats
  int64_t tokens = 0;
  double mean() const { return tokens > 0 ? loss_sum / static_cast<double>(tokens) : 0.0; }
};

// Combines per-batch sums in batch order (fp64). The spans have one entry per batch.
ValLoss combine_val_batches(std::span<const double> loss_sums, std::span<const int64_t> tokens);

}  // namespace ptrain
