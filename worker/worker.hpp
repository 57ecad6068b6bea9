// The worker role's loop (bsp): wait for the coordinator's StepBegin, pull the weights of that
// version from every server, run the step's windows through TrainStep (train_step.hpp: micro-
// batches on the backend, gradients as token SUMS, each micro-batch's gradient computed from zero
// and folded into the step's sum in fp32, in window order — the fold the servers apply to
// workers' pushes), push each server its slice with the token count, report the loss to the
// coordinator. Repeats until Shutdown. With cluster.sync local (WorkerOptions::local) the part
// between pull and push is H inner AdamW steps and the push carries the pseudo-gradient
// (worker/local_steps.hpp). With cluster.sync ssp or async (WorkerOptions::leased) the compute
// comes first: LeaseGrant{windows, min_version} → pull the newest weights (min_version or later)
// → gradient → PushReady to the coordinator; the push waits for the StepBegin that names the same
// windows (its turn), then goes out with the report as in bsp (docs/sync_modes.md).
// Validation: on EvalBegin{version, windows of data.val, batch} it pulls that version and
// answers EvalDone with the forward pass's loss sum of each batch (the coordinator combines them
// in a fixed order: common/data/val_loss.hpp).
// Leaving (SIGTERM to `ptrain worker`): once leave_requested() is true, the worker finishes the
// step it is in (push and report), then — at the step boundary — says goodbye to the coordinator
// (a Shutdown from a worker is its leave) and returns; the job goes on without it.
// The model never sees the network: it fills a gradient buffer; this loop decides what to send.
#pragma once

#include "common/config/config.hpp"
#include "common/net/transport.hpp"
#include "common/proto/messages.hpp"
#include "common/tensor/param_layout.hpp"
#include "worker/local_steps.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ptrain {

class Backend;

struct WorkerOptions {
  int32_t worker_id = 0;
  std::string train_path;    // data.train (.tok)
  std::string val_path;      // data.val (.tok); "" = none (an EvalBegin is then an error)
  int64_t micro_batch = 1;   // sequences per forward/backward
  uint64_t seed = 0;         // run.seed: keys BERT's masks (common/data/mlm.hpp)
  int threads = 1;           // OpenMP/OpenBLAS threads of this worker (set in its thread)
  std::string device = "cpu";  // compute device (worker/backend/backend_factory.hpp)
  DeviceConfig device_config;  // the config's device section: precision, allow_tf32 (not type)
  // How pushes and pulls carry their floats (cluster.wire_dtype).
  proto::FloatEncoding wire_encoding = proto::FloatEncoding::kFp32;
  // bf16 pushes carry their rounding error into the next push (cluster.wire_error_feedback).
  bool wire_error_feedback = false;
  // cluster.bucket_mb: gradient bucket and weight piece size (worker/overlap.hpp); 0 = no overlap.
  double bucket_mb = 25.0;
  // Longest wait for the coordinator's next message or for weights (a peer that is gone).
  std::chrono::milliseconds timeout{std::chrono::hours(1)};
  // cluster.sync local (local_steps_options(config)): each StepBegin runs H inner AdamW steps
  // and pushes the pseudo-gradient (worker/local_steps.hpp). nullopt = bsp.
  std::optional<LocalStepsOptions> local;
  // cluster.sync ssp or async: work comes as leases, computed before the step's turn (above).
  bool leased = false;
  // Test hook: builds the compute backend instead of `device` (e.g. a fake device backend);
  // empty = make_backend(device, backend_options(device_config, threads)).
  std::function<std::unique_ptr<Backend>(int threads)> make_backend;
  // Polled between messages; true = leave the job at the next step boundary. Empty = never.
  std::function<bool()> leave_requested;
  // TEST ONLY (fault injection, `PTRAIN_TEST_WORKER_FAULT=PHASE:STEP` on `ptrain worker`): at
  // its first step numbered `fault_step` (1-based) or later the worker kills itself with SIGKILL at `fault_phase`:
  // "before-push" (gradients computed, nothing pushed), "mid-push" (pushed to server 0 only),
  // "after-push" (pushed everywhere, not reported; with cluster.bucket_mb > 0 "mid-push" dies
  // once its first gradient message is written: one bucket's piece to one server, and the
  // other phases run that step without overlap); "inner-save" (cluster.sync local: asked to
  // save its inner optimizer state into the checkpoint of step `fault_step` or later, before
  // writing anything); or, a straggler, "delay-push": from step
  // `fault_step` on, every step sleeps `fault_delay_s` seconds before pushing (heartbeats go on,
  // so only cluster.step_deadline_s can leave it behind). Empty = none.
  std::string fault_phase;
  int64_t fault_step = 0;
  double fault_delay_s = 0.0;
};

// Runs until Shutdown (or until it left). On an error it sends a Failure to the coordinator (if it can) and
// rethrows; throws TransportClosed when the job is stopping.
void run_worker(const WorkerOptions& options, const ParamLayout& layout,
                std::vector<proto::KeyRange> server_ranges, net::Transport& transport);

}  // namespace ptrain
