// `ptrain bench train CONFIG`: times training steps computed by the code a job runs, in this
// process and on this thread, with no transport. A step is the job's own message exchange,
// carried in memory between the coordinator's StepMachine, one worker (TrainStep) and one
// parameter server (RequestHandler holding the whole flat vector):
//   StepBegin → PullRequest / PullReply: the weights of version t into the worker's pinned buffer
//   → TrainStep::compute: upload, forward/backward over train.micro_batch-sized micro-batches
//     folded on the backend, download of the token-sum gradient
//   → GradPush + WorkerStepDone → (the step's StepWorkers set complete) the server's
//     token-weighted mean gradient and its partial norm → NormReport → the coordinator's global
//     norm and clip coefficient
//   → StepCommit → UpdateRule::apply (the config's LR schedule, AdamW, decay segments) → StepApplied.
// Nothing of the step is computed by the benchmark itself: it only moves the messages and reads
// the clock. The start is the coordinator's fresh start state (GPT-2 initialisation from
// run.seed, zero moments).
//
// Tokens: random (the default; the same B windows every step, drawn from run.seed below the
// vocabulary V = model.vocab_size when set, else the tokenizer's size; no data file is read), or
// a token file (`tokens`), whose windows the coordinator's data plan picks as in a job (the
// layout then takes the tokenizer's vocabulary, as a job does). With a token file, a config's
// run is bitwise the run of a threads job with one worker and one server on that file (tests/bench).
//
// Reported: ms/step (mean and best), the pull / forward+backward / server-update shares, process
// CPU time per step, tokens/s, GFLOP/s with FLOPs/token = 6·N + 12·L·T·C (N = the layout's
// parameter count, the tied head counted once).
#pragma once

#include "common/config/config.hpp"
#include "common/tensor/param_layout.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace ptrain {

class Backend;

struct BenchTrainOptions {
  std::string config;              // YAML config file
  std::vector<std::string> sets;   // --set overrides (section.key=value)
  std::string device;              // "" = device.type
  std::string tokens;              // "" = random tokens; else a token file (.tok)
  int64_t steps = 5;               // timed steps (>= 1)
  int64_t warmup = 2;              // untimed steps first (>= 0)
  bool json = false;               // one JSON object on stdout instead of the text report
  bool profile = false;            // log each backend op's time per step (stderr)
};

// Runs the benchmark and prints its report on stdout. Throws UsageError for bad options, and what
// loading the config, the tokenizer, the token file or the device throws.
int run_bench_train(const BenchTrainOptions& options);

// One step's outcome as the coordinator sees it, and where its time went (seconds).
struct LocalStepResult {
  int64_t step = 0;         // 0-based; the weights are at version step + 1 afterwards
  double loss = 0.0;        // mean token loss of the step
  int64_t tokens = 0;       // targets of the step
  double grad_norm = 0.0;   // global norm of the step's mean gradient, before clipping
  float clip_coef = 1.0f;   // what the update scaled the gradient by
  double lr = 0.0;          // learning rate the server used
  double pull_s = 0.0;      // PullRequest → the weights in the worker's pinned buffer
  double compute_s = 0.0;   // TrainStep::compute (upload, forward/backward, download)
  double update_s = 0.0;    // GradPush to StepApplied: aggregation, norm, clip, AdamW
  double total_s = 0.0;
};

// The coordinator's StepMachine, one worker's TrainStep and one server's RequestHandler (range =
// the whole vector) on this thread, exchanging the job's messages in memory; see the file comment.
// `layout` and `backend` must outlive it. Not thread-safe.
class LocalJob {
 public:
  // `config`: the resolved config (run.seed, train.*, optim.*). `token_file` empty: random
  // tokens below layout.dims().V; else that token file through the data plan (DataError when
  // its vocabulary exceeds the layout's V or it has no complete window).
  LocalJob(const Config& config, const ParamLayout& layout, Backend& backend,
           const std::string& token_file);
  ~LocalJob();
  LocalJob(const LocalJob&) = delete;
  LocalJob& operator=(const LocalJob&) = delete;

  // Runs the next step (0, 1, ...). Throws NumericError for a non-finite loss or gradient (the
  // step is not applied) and ProtocolError / InternalError if a role refuses a message.
  LocalStepResult run_step();

  // The server's state: the version (steps applied) and its weights and AdamW moments.
  int64_t version() const;
  std::span<const float> weights() const;
  std::span<const float> m() const;
  std::span<const float> v() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ptrain
