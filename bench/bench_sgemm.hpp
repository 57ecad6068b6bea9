// `ptrain bench sgemm`: the yardstick docs/benchmarks.md compares the model's GFLOP/s with — a
// plain OpenBLAS cblas_sgemm of S×S×S (threaded by OpenBLAS itself) beside the CPU backend's own
// gemm (one single-threaded block per thread), best and mean of R timed runs after one warm-up.
#pragma once

#include <cstdint>

namespace ptrain {

struct BenchSgemmOptions {
  int64_t size = 2048;  // S
  int threads = 0;      // 0 = all cores
  int reps = 5;         // timed repetitions
  bool json = false;    // one JSON object on stdout instead of the text report
};

// Prints the report on stdout. Throws UsageError for size or reps < 1 or threads < 0.
int run_bench_sgemm(const BenchSgemmOptions& options);

}  // namespace ptrain
