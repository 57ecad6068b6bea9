// `ptrain bench attention`: forward+backward time of the backend's attention op (flash-style:
// tiles, online softmax, only the rows' log-sum-exp kept for backward) against the materialised
// version it replaced (the (B,NH,T,T) probabilities kept between forward and backward, computed
// with OpenBLAS on the CPU, lower triangle only when causal), at a list of sequence lengths, with
// the memory each keeps between the two passes and the largest difference of their results.
// The materialised baseline runs on the host only; on a device backend it is skipped (reported
// as such) and only the backend's op is timed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain {

struct BenchAttentionOptions {
  std::vector<int64_t> seq_lens{1024, 4096};  // T values
  int64_t batch = 1;                          // B
  int64_t heads = 12;                         // NH
  int64_t channels = 768;                     // C (head size C/NH)
  bool bidirectional = false;                 // BERT's attention instead of causal
  int reps = 3;                               // timed repetitions (after one warm-up)
  int threads = 0;                            // CPU threads; 0 = all cores
  std::string device = "cpu";
  bool json = false;
};

// Prints the report on stdout. Throws UsageError for bad sizes and what the device factory throws.
int run_bench_attention(const BenchAttentionOptions& options);

}  // namespace ptrain
