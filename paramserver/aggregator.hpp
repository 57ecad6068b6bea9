// Aggregation of one step's gradient pushes on a server, and the partial squared norm of the
// result. Workers push token-SUM gradients (d Σ token losses / dθ) with their token counts; the
// step's gradient is the token-weighted mean over the contributor set fixed by the coordinator:
//   g = (Σ_{w in contributors, ascending id} G_w) / (Σ tokens_w)
// The sum is an fp32 left fold in worker-id order — the same fold a worker applies to its own
// micro-batches (worker.cpp) — and the division is done in fp64 and rounded once. So the result
// never depends on arrival order, and when every worker's share is whole micro-batches of the
// single-worker run (e.g. B = 8, micro_batch = 4, W = 1 or 2) it is bitwise the same whatever W.
// With bf16 on the wire a slot holds the push as it arrived (packed, common/proto/bf16.hpp) and
// the fold widens each value as it reads it: the same fp32 fold over the bf16-rounded gradients,
// with no separate widening pass and half the slot memory.
#pragma once

#include "common/proto/messages.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <vector>

namespace ptrain {

// Elements per chunk of the partial norm: each chunk is summed in order in fp64, then the chunk
// sums in chunk order, so the result is independent of the OpenMP thread count.
inline constexpr int64_t kNormChunk = 16384;

struct NormPartial {
  double sum_squares = 0.0;
  int64_t first_nonfinite = -1;  // index into the span, -1 if every element is finite
};

// Pushes by range (a worker's gradient leaves in buckets while its backward runs, cut at shard
// boundaries): each push fills [begin, end) of its worker's slot; a worker counts as having pushed
// (has()) once its pushes cover the whole shard, each element exactly once. A push that overlaps
// what the worker already sent for the step is refused, so a bucket sent twice never counts twice.
// The fold is the same whatever the pieces: per element, the workers' values in worker-id order.
//
// Each worker has a gradient slot, kept across steps: a transport can receive the worker's next
// whole-shard push straight into it (Transport::post_receive), and add() then copies nothing.
class GradientAggregator {
 public:
  // `size` values per push, each carried in `encoding` (a slot holds encoded_size(encoding, size)
  // elements).
  explicit GradientAggregator(int64_t size,
                              proto::FloatEncoding encoding = proto::FloatEncoding::kFp32)
      : size_(size), encoding_(encoding), slot_size_(proto::encoded_size(encoding, size)) {}

  // Keeps worker `worker`'s push (slot_size() elements, in encoding()): copied into its slot,
  // unless `grads` already is that slot.
  // Returns false (and keeps nothing) for a second push from it.
  bool add(int32_t worker, int64_t tokens, std::span<const float> grads);

  enum class RangeResult {
    kPartial,    // kept; the worker's pushes do not cover the shard yet
    kComplete,   // kept; the worker's pushes now cover the whole shard (has() is true)
    kOverlap,    // refused: overlaps a range this worker already pushed for the step
    kTokens,     // refused: another token count than the worker's earlier pieces
  };
  // Keeps values [begin, end) of worker `worker`'s push (offsets within the shard; `grads` holds
  // encoded_size(encoding(), end - begin) elements; with bf16 `begin` may be odd). `tokens` is
  // the worker's token count for the whole step, the same in every piece.
  RangeResult add_range(int32_t worker, int64_t tokens, int64_t begin, int64_t end,
                        std::span<const float> grads);

  bool has(int32_t worker) const {
    auto it = slots_.find(worker);
    return it != slots_.end() && it->second.covered == size_;
  }
  // Values of the shard worker `worker` has pushed for the step.
  int64_t covered(int32_t worker) const {
    auto it = slots_.find(worker);
    return it == slots_.end() ? 0 : it->second.covered;
  }
  // Workers whose pushes cover the shard.
  size_t count() const;
  // The slots that hold no push at all of workers whose last step came as one whole-shard push,
  // where a transport may receive their next one. A worker that pushes in pieces gets none: a
  // piece whose element count happens to equal the slot's (bf16: n - 1 values of an even n)
  // would be received over the pieces already placed there.
  std::vector<std::pair<int32_t, std::span<float>>> free_slots();

  // How mean() divides the fold: by the contributors' total token count (bsp: token-sum
  // gradients), or by the number of contributors (cluster.sync local: each worker's
  // pseudo-gradient counts once, as DiLoCo averages its replicas).
  enum class Divide { kByTokens, kByContributors };
  // The token-weighted mean (or with kByContributors the plain average) over exactly
  // `contributors` (each must have pushed) into `out` (size()). Returns the total token count.
  // With zero tokens (kByTokens) the mean is all zeros.
  int64_t mean(std::span<const int32_t> contributors, std::span<float> out,
               Divide divide = Divide::kByTokens) const;

  // The reduction while the pushes arrive. Once the step's worker set is known (expect()), every
  // block of kNormChunk values that all of its workers have pushed is reduced as soon as its last
  // piece arrives — the mean of the block and its partial norm — while later buckets are still on
  // the wire; when the last push arrives only its own blocks remain. The result is bitwise that
  // of mean() + partial_norm() over the whole shard: the same fold per element, the same
  // per-chunk fp64 sums added in chunk order.
  void expect(std::span<const int32_t> workers, Divide divide);
  // Values already reduced for the expected set.
  int64_t reduced_values() const { return eager_ ? eager_->values_done : 0; }

  struct Reduction {
    int64_t tokens = 0;
    NormPartial norm;
  };
  // The mean over exactly `contributors` (each must have pushed) into reduced(), and its
  // partial norm. When they are the expected set (and `divide` the expected one), the arrivals
  // have reduced every block and only the block norms are added; otherwise the whole shard is
  // reduced now.
  Reduction reduce(std::span<const int32_t> contributors, Divide divide);
  // The last reduce()'s mean (size() values); valid until the next reduce() or clear().
  std::span<const float> reduced() const { return reduced_; }

  // Forgets every push and the expected set (keeps the slots and the reduction buffer).
  void clear();
  int64_t size() const { return size_; }
  proto::FloatEncoding encoding() const { return encoding_; }
  int64_t slot_size() const { return slot_size_; }

 private:
  struct Slot {
    int64_t tokens = 0;
    int64_t covered = 0;               // values received for the step
    std::map<int64_t, int64_t> parts;  // begin → end of each piece received (for overlaps)
    bool whole_last = false;           // the last step was one whole-shard push
    std::vector<float> grads;
  };
  // The expected set's reduction so far, block by block (block b = values [b, b + kNormChunk)).
  struct Eager {
    std::vector<int32_t> workers;  // ascending
    Divide divide = Divide::kByTokens;
    std::vector<int64_t> arrived;  // per block: values the expected workers pushed into it
    std::vector<double> sums;      // per block: the fp64 sum of squares of the reduced values
    std::vector<int64_t> bad;      // per block: the first non-finite index, -1 if none
    int64_t values_done = 0;
  };
  int64_t block_count() const { return (size_ + kNormChunk - 1) / kNormChunk; }
  int64_t block_size(int64_t b) const { return std::min(kNormChunk, size_ - b * kNormChunk); }
  // Counts [begin, end) of an expected worker's push and reduces the blocks it completed.
  void count_arrival(int64_t begin, int64_t end);
  // Reduces blocks `blocks` (each pushed by every expected worker) into reduced_.
  void reduce_blocks(const std::vector<int64_t>& blocks);
  // The denominator of the mean over `ids` (their token total, or their number), and the tokens.
  std::pair<double, int64_t> denominator(std::span<const int32_t> ids, Divide divide) const;

  int64_t size_;
  proto::FloatEncoding encoding_;
  int64_t slot_size_;
  std::map<int32_t, Slot> slots_;
  std::optional<Eager> eager_;
  std::vector<float> reduced_;
};

NormPartial partial_norm(std::span<const float> g);

}  // namespace ptrain
