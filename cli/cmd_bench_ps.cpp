#include "cli/cmd_bench_ps.hpp"

#include "common/error.hpp"
#include "bench/bench_ps.hpp"

#include <memory>

namespace ptrain::cli {

void add_bench_ps_commands(CLI::App* bench, Action& action) {
  auto a = std::make_shared<BenchPsOptions>();
  auto* ps = bench->add_subcommand(
      "ps", "Push+pull throughput of a GPT-2-124M-sized fp32 vector through the TCP transport "
            "(1-4 server and 1-4 worker processes on loopback) or the MPI one, each beside a "
            "plain copy of the same bytes (a TCP socket; MPI_Send/MPI_Recv)");
  ps->add_option("--servers", a->servers, "Server counts to try, e.g. 1,2,4 (default)")
      ->delimiter(',');
  ps->add_option("--workers", a->workers, "Worker counts to try, e.g. 1,2,4 (default)")
      ->delimiter(',');
  ps->add_option("--floats", a->floats, "Vector length in floats (default 124439808, GPT-2 124M)");
  ps->add_option("--rounds", a->rounds, "Push+pull rounds per configuration (default 1)");
  ps->add_option("--transport", a->transports,
                 "Data planes to measure in the same run: tcp (default), mpi, or tcp,mpi")
      ->delimiter(',');
  ps->add_option("--wire-dtype", a->wire_dtypes,
                 "Encodings of the pushed and pulled floats, each measured in the same run: fp32 "
                 "(default), bf16 (cluster.wire_dtype: packed, half the bytes; the rounding and "
                 "widening are timed), or fp32,bf16")
      ->delimiter(',');
  ps->add_flag("--json", a->json, "Print one JSON object on stdout");
  ps->callback([&action, a] { action = [a] { return run_bench_ps(*a); }; });

  auto p = std::make_shared<BenchPsPeerOptions>();
  auto* peer = bench->add_subcommand("ps-peer", "");  // hidden: a helper process of `bench ps`
  peer->group("");
  peer->add_option("--role", p->role)->required();
  peer->add_option("--id", p->id);
  peer->add_option("--servers", p->servers);
  peer->add_option("--workers", p->workers);
  peer->add_option("--floats", p->floats);
  peer->add_option("--rounds", p->rounds);
  peer->add_option("--secret-file", p->secret_file);
  peer->add_option("--server-addrs", p->server_addrs);
  peer->add_option("--raw-addr", p->raw_addr);
  peer->add_option("--raw-bytes", p->raw_bytes);
  peer->add_option("--wire-dtype", p->wire_dtype);
  peer->callback([&action, p] { action = [p] { return run_bench_ps_peer(*p); }; });
}

std::shared_ptr<CompareLaunchFlags> add_compare_launch_flag(CLI::App* train) {
  auto f = std::make_shared<CompareLaunchFlags>();
  train->add_flag("--compare-launch", f->on,
                  "Instead: run the config's model as a 2-server job with cluster.launch threads, "
                  "then processes (random tokens, temporary run folders), and print the mean step "
                  "seconds, wait and pull phases and tokens/s of each and their ratio");
  train->add_option("--repeats", f->repeats,
                    "With --compare-launch: rounds of runs, interleaved (default 1)");
  train->add_option("--launch-workers", f->workers,
                    "With --compare-launch: worker counts to run, e.g. 1,2 (default 2); tokens/s "
                    "per worker is compared with the first")
      ->delimiter(',');
  return f;
}

int run_compare_launch(const std::string& config, const std::vector<std::string>& sets,
                       int64_t steps, int64_t warmup, bool json, const CompareLaunchFlags& flags) {
  return run_bench_compare_launch({config, sets, steps, warmup, json, flags.repeats,
                                   flags.workers});
}

}  // namespace ptrain::cli
