// `ptrain bench train` and `ptrain bench sgemm`: their options, parsed here and handed to
// bench/bench_train.hpp and bench/bench_sgemm.hpp; `bench ps` and `bench train --compare-launch`
// are registered by cmd_bench_ps.cpp. What each measures: docs/benchmarks.md.
#include "cli/commands.hpp"
#include "cli/cmd_bench_ps.hpp"
#include "bench/bench_aggregate.hpp"
#include "bench/bench_attention.hpp"
#include "bench/bench_sgemm.hpp"
#include "bench/bench_train.hpp"
#include "common/error.hpp"

#include <memory>

namespace ptrain::cli {

void add_bench_command(CLI::App& app, Action& action) {
  auto* bench = app.add_subcommand("bench", "Benchmarks: the training step of a config's model (train; --compare-launch: processes vs threads), the data plane vs raw TCP (ps), a server's reduction (aggregate), attention (flash vs materialised), sgemm");
  bench->require_subcommand(1);

  auto targs = std::make_shared<BenchTrainOptions>();
  auto* train = bench->add_subcommand(
      "train", "Time training steps of CONFIG's model computed by the job's own code (a worker's "
               "forward+backward, a server's aggregation, norm, clip and AdamW with the LR "
               "schedule) in this process, on random tokens unless --tokens is given");
  train->add_option("CONFIG", targs->config, "YAML config file")->required();
  add_set_option(train, targs->sets);
  train->add_option("--steps", targs->steps, "Timed steps (default 5)");
  train->add_option("--warmup", targs->warmup, "Untimed steps first (default 2)");
  train->add_option("--tokens", targs->tokens,
                    "Train on this token file (.tok), windows chosen by the job's data plan, "
                    "instead of random tokens");
  train->add_flag("--json", targs->json, "Print one JSON object on stdout");
  train->add_flag("--profile", targs->profile, "Log the time of each backend op (stderr)");
  add_device_option(train, targs->device);
  auto compare = add_compare_launch_flag(train);  // cmd_bench_ps.cpp
  train->callback([&action, targs, compare] {
    action = [targs, compare] {
      if (compare->on && !targs->device.empty()) {
        throw UsageError("bench train: --device sets the device of bench train's own step; the "
                         "jobs of --compare-launch take device.type (use --set device.type=...)");
      }
      if (compare->on && (!targs->tokens.empty() || targs->profile)) {
        throw UsageError("bench train: --tokens and --profile belong to bench train's own step; "
                         "--compare-launch runs jobs on random tokens (data.train is replaced)");
      }
      return compare->on ? run_compare_launch(targs->config, targs->sets, targs->steps,
                                              targs->warmup, targs->json, *compare)
                         : run_bench_train(*targs);
    };
  });

  auto sargs = std::make_shared<BenchSgemmOptions>();
  auto* sgemm = bench->add_subcommand("sgemm", "OpenBLAS sgemm GFLOP/s at SIZE^3 (the yardstick)");
  sgemm->add_option("--size", sargs->size, "Matrix size (default 2048)");
  sgemm->add_option("--threads", sargs->threads, "Threads; 0 = all cores (default)");
  sgemm->add_option("--reps", sargs->reps, "Timed repetitions (default 5)");
  sgemm->add_flag("--json", sargs->json, "Print one JSON object on stdout");
  sgemm->callback([&action, sargs] { action = [sargs] { return run_bench_sgemm(*sargs); }; });

  auto aargs = std::make_shared<BenchAttentionOptions>();
  auto* att = bench->add_subcommand(
      "attention", "Attention forward+backward: the backend's flash-style op against the "
                   "materialised (T,T) version, time and memory kept, at each --seq-len");
  att->add_option("--seq-len", aargs->seq_lens, "Sequence lengths T (default 1024 4096)")
      ->expected(1, 64);
  att->add_option("--batch", aargs->batch, "B (default 1)");
  att->add_option("--heads", aargs->heads, "NH (default 12)");
  att->add_option("--channels", aargs->channels, "C, a multiple of --heads (default 768)");
  att->add_flag("--bidirectional", aargs->bidirectional,
                "BERT's bidirectional attention instead of causal");
  att->add_option("--reps", aargs->reps, "Timed repetitions (default 3)");
  att->add_option("--threads", aargs->threads, "CPU threads; 0 = all cores (default)");
  att->add_option("--device", aargs->device, "Compute device (default cpu)");
  att->add_flag("--json", aargs->json, "Print one JSON object on stdout");
  att->callback([&action, aargs] { action = [aargs] { return run_bench_attention(*aargs); }; });

  auto gargs = std::make_shared<BenchAggregateOptions>();
  auto* agg = bench->add_subcommand(
      "aggregate", "A server's reduction of one step's bucketed pushes: block by block as they "
                   "arrive beside the whole shard after the last one (the time left after the "
                   "last push)");
  agg->add_option("--floats", gargs->floats,
                  "Shard length in floats (default 62219904: GPT-2 124M over 2 servers)");
  agg->add_option("--workers", gargs->workers, "Workers pushing (default 2)");
  agg->add_option("--bucket-mb", gargs->bucket_mb, "Bucket size, as cluster.bucket_mb (default 25)");
  agg->add_option("--reps", gargs->reps, "Timed repetitions of each, interleaved (default 3)");
  agg->add_option("--threads", gargs->threads, "OpenMP threads; 0 = all cores (default)");
  agg->add_flag("--json", gargs->json, "Print one JSON object on stdout");
  agg->callback([&action, gargs] { action = [gargs] { return run_bench_aggregate(*gargs); }; });

  add_bench_ps_commands(bench, action);  // `bench ps` and its hidden helper (cmd_bench_ps.cpp)
}

}  // namespace ptrain::cli
