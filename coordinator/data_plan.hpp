// The data plan (docs/contracts.md "Data"): which windows of data.train each step uses.
//
// Data epoch e has its own permutation of the N window indices: Fisher–Yates (from the last
// position down, swapping i with j uniform in [0, i]) over a SplitMix64 generator whose state
// starts at mix64(mix64(run.seed) + e) (mix64 = SplitMix64's output function); j is drawn by
// rejection (r ≥ 2^64 mod (i+1), then r mod (i+1)), so it is unbiased. Not std::shuffle, whose
// algorithm differs between standard libraries.
//
// The stream of positions is the concatenation of the epochs' permutations: the plan keeps one
// cursor (epoch, position) and step t takes the next B positions — positions [t·B, (t+1)·B) of
// that stream. A step that runs past the end of epoch e's permutation takes the rest from the
// start of epoch e+1's: no window is dropped and none is used twice within an epoch, and a batch
// may straddle two epochs (B > N simply spans several). The cursor is what a checkpoint stores
// (/data: seed, epoch, position), so a resumed run takes exactly the windows the uninterrupted
// run would have.
//
// Windows given back (give_back: the worker that had them was lost, left or missed the step's
// deadline, so their gradients were not applied) wait in a pool, oldest first, and are handed out
// again before any new position — each keeps the data epoch it was drawn in. So in every data
// epoch each window is applied exactly once, whatever happens to the workers; the pool is part of
// the cursor a checkpoint stores (/data/returned).
//
// The B windows of a step are split among W workers in worker-id order as contiguous chunks,
// the first B mod W workers taking one more: the run uses the same windows whatever W is.
#pragma once

#include "common/io/checkpoint_format.hpp"

#include <cstdint>
#include <utility>
#include <vector>

namespace ptrain {

// SplitMix64 (Steele, Lea, Flood 2014; the generator of java.util.SplittableRandom).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t next();
  // Uniform in [0, bound) without modulo bias; bound >= 1.
  uint64_t uniform(uint64_t bound);
  static uint64_t mix64(uint64_t z);

 private:
  uint64_t state_;
};

// Epoch e's permutation of [0, n).
std::vector<int64_t> window_permutation(uint64_t seed, int64_t epoch, int64_t n);

// [begin, end) offsets into a step's B windows for each of W workers (contiguous, worker-id
// order, the first B mod W get one more).
std::vector<std::pair<int64_t, int64_t>> split_batch(int64_t B, int64_t W);

class DataPlan {
 public:
  // `num_windows` windows of data.train; `start` = where a checkpoint left off ({seed, 0, 0} for a
  // fresh run). Throws DataError when num_windows < 1.
  DataPlan(int64_t num_windows, DataState start);

  // The next step's B windows: the returned pool first (oldest first), then new positions in
  // order; advances the cursor.
  std::vector<DataWindow> take(int64_t B);
  // take(B) without the epochs.
  std::vector<int64_t> next_step(int64_t B);
  // Windows handed out whose gradients were not applied: handed out again by the next take().
  void give_back(const std::vector<DataWindow>& windows);

  // The cursor: the next position to hand out (position < num_windows always).
  const DataState& state() const { return state_; }
  int64_t num_windows() const { return n_; }

 private:
  int64_t n_;
  DataState state_;
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace ptrain
