// Aggregation of one step's gradient pushes on a server, and the partial squared norm of the
// result. Workers push token-SUM gradients (d Σ token losses / dθ) with their token counts; the
// step's gradient is the token-weighted mean over the contributor set fixed by the coordinator:
//   g = (Σ_{w in contributors, ascending id} G_w) / (Σ tokens_w)
// The sum is an fp32 left fold in worker-id order — the same fold a worker applies to its own
// micro-batches (worker.cpp) — and the division is done in fp64 and rounded once. So the result
// never depends on arrival order, and when every worker's share is whole micro-batches of the
// single-worker run (e.g. B = 8, micro_batch = 4, W = 1 or 2) it is bitwise the same whatever W.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <vector>

namespace ptrain {

class GradientAggregator {
 public:
  explicit GradientAggregator(int64_t size) : size_(size) {}

  // Keeps worker `worker`'s push. Returns false (and keeps nothing) for a second push from it.
  bool add(int32_t worker, int64_t tokens, std::vector<float> grads);
  bool has(int32_t worker) const { return pushes_.count(worker) != 0; }
  size_t count() const { return pushes_.size(); }

  // The token-weighted mean over exactly `contributors` (each must have pushed) into `out`
  // (size()). Returns the total token count. With zero tokens the mean is all zeros.
  int64_t mean(std::span<const int32_t> contributors, std::span<float> out) const;

  void clear() { pushes_.clear(); }
  int64_t size() const { return size_; }

 private:
  struct Push {
    int64_t tokens = 0;
    std::vector<float> grads;
  };
  int64_t size_;
  std::map<int32_t, Push> pushes_;
};

// Elements per chunk of the partial norm: each chunk is summed in order in fp64, then the chunk
// sums in chunk order, so the result is independent of the OpenMP thread count.
inline constexpr int64_t kNormChunk = 16384;

struct NormPartial {
  double sum_squares = 0.0;
  int64_t first_nonfinite = -1;  // index into the span, -1 if every element is finite
};

NormPartial partial_norm(std::span<const float> g);

}  // namespace ptrain
