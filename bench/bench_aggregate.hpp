// `ptrain bench aggregate`: a server's reduction of one step's pushes, with the buckets arriving
// as a bsp step sends them (each worker's gradient in `bucket_mb` pieces, last range first, the
// workers' pieces interleaved), reduced the way the server does now — block by block as soon as
// every worker's values of a block arrived — beside the whole shard reduced after the last push.
// What matters is the tail: the work left after the last piece arrives, which the step waits for
// before the servers' norms can leave; the rest overlaps the wire and the workers' backward.
#pragma once

#include <cstdint>

namespace ptrain {

struct BenchAggregateOptions {
  int64_t floats = 62'219'904;  // one shard of GPT-2 124M over 2 servers
  int workers = 2;
  double bucket_mb = 25.0;      // cluster.bucket_mb
  int reps = 3;                 // timed repetitions of each way, interleaved
  int threads = 0;              // OpenMP threads; 0 = all cores
  bool json = false;
};

// Prints the report on stdout; throws UsageError for bad sizes and Error(kInternal) if the two
// reductions differ in any bit.
int run_bench_aggregate(const BenchAggregateOptions& options);

}  // namespace ptrain
