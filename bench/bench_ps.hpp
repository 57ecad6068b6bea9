// `ptrain bench ps`: push+pull throughput of a flat fp32 vector over loopback through the real TCP
// transport (TcpNode/TcpTransport, HMAC handshake, GradPush / PullRequest / PullReply frames),
// with S server processes and W worker processes, beside a raw TCP copy of the same bytes between
// two processes (plain blocking sockets, large writes) measured in the same run.
//
// Every peer is a separate process: the orchestrator fork+execs `ptrain bench ps-peer --role ...`
// (PR_SET_PDEATHSIG(SIGKILL), stdin/stdout pipes for "ready"/"go"/results, stderr to a log in a
// temporary folder that is printed when a peer fails). Per round each worker pushes its gradient
// slice of every server's range (GradPush) and then pulls the weights of every range back
// (PullRequest → PullReply, answered once all W pushes of that round reached the server). As in
// a real job, nothing is copied on the way: pushes and replies borrow the sender's floats, a
// reply is received straight into the worker's full weight vector and a push into the server's
// gradient slot for that worker. Servers only count what they receive (no aggregation, no
// optimizer): this measures the transport.
//
// bytes = W · rounds · 2 · N · 4 (payload floats pushed + pulled; frame headers not counted).
// With --wire-dtype bf16 (cluster.wire_dtype) the floats travel packed, two bf16 per 4 bytes
// (common/proto/bf16.hpp): bytes = W · rounds · 2 · ceil(N/2) · 4, and the time includes what a
// real job pays for it — the worker rounds each push and widens each reply, the server rounds
// its weights once per round — so the bf16 row's seconds compare directly with the fp32 row's.
// seconds = from the common "go" to the last worker's last reply (CLOCK_MONOTONIC, shared by
// the processes of one machine). The raw baseline moves the same byte count sender → receiver.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain {

inline constexpr int64_t kGpt2SmallFloats = 124'439'808;  // GPT-2 124M (tied head, V 50257)

struct BenchPsOptions {
  std::vector<int> servers{1, 2, 4};
  std::vector<int> workers{1, 2, 4};
  int64_t floats = kGpt2SmallFloats;
  int rounds = 1;
  bool json = false;
  std::string ptrain_binary = "/proc/self/exe";
  // Data planes to measure, each in the same run: "tcp" (peer processes over loopback TCP) and
  // "mpi" (the same peers as the ranks of one mpirun job, over the MPI transport). Each row is
  // compared with a plain copy of its bytes over the same medium: a loopback TCP socket, or
  // MPI_Send / MPI_Recv between two ranks.
  std::vector<std::string> transports{"tcp"};
  // Encodings of the pushed and pulled floats, each measured in the same run: "fp32", "bf16".
  std::vector<std::string> wire_dtypes{"fp32"};
};

// Prints a table (or one JSON object with --json) on stdout. Returns 0; throws UsageError for
// bad options and IoError when a peer cannot be started or fails (its log is included).
int run_bench_ps(const BenchPsOptions& options);

// One hidden helper process (`ptrain bench ps-peer`).
struct BenchPsPeerOptions {
  std::string role;  // "server", "worker", "raw-send", "raw-recv", "mpi" (a rank), "mpi-raw"
  int id = 0;
  int servers = 1;
  int workers = 1;
  int64_t floats = 0;
  int rounds = 1;
  std::string secret_file;   // server/worker
  std::string server_addrs;  // worker: comma-separated HOST:PORT of servers 0..S-1
  std::string raw_addr;      // raw-send: HOST:PORT of the receiver
  int64_t raw_bytes = 0;     // raw-send / raw-recv
  std::string wire_dtype = "fp32";  // server/worker/mpi: "fp32" or "bf16"
};
int run_bench_ps_peer(const BenchPsPeerOptions& options);

// `ptrain bench train CONFIG --compare-launch`: the same 2-server job on random tokens (written to
// a temporary token file) with cluster.launch threads and then processes, through
// run_threads_job / run_processes_job into temporary run folders, for each worker count and round
// (interleaved: every pair runs back to back); prints each run's mean step seconds, wait and pull
// phases and tokens/s (from RUN_DIR/train.jsonl, after `warmup` steps), processes ÷ threads per
// round, and tokens/s per worker against the first worker count's.
struct CompareLaunchOptions {
  std::string config;
  std::vector<std::string> sets;
  int64_t steps = 5;
  int64_t warmup = 2;
  bool json = false;
  // Rounds of runs, interleaved (threads, processes, threads, ...), so both see the same load.
  int64_t repeats = 1;
  // Worker counts to run (2 servers each); per-worker tokens/s compares them.
  std::vector<int64_t> workers = {2};
};
int run_bench_compare_launch(const CompareLaunchOptions& options);

}  // namespace ptrain
