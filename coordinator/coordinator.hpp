// The coordinator role (bsp): owns the step clock. For every step it hands each worker of the
// membership its windows (DataPlan), and drives the step's state machine (StepMachine: waits
// until every worker's push reached every server, fixes the contributor set, gathers the
// servers' partial norms, computes the clip coefficient, commits the step), then logs,
// evaluates and checkpoints when due. The loop is a thin driver: receive → machine → send.
// Membership changes (net::Membership) are drained while it waits; a lost member goes to the
// machine, which holds the job's policy (docs/elastic.md): a lost or leaving worker does not stop
// the job — the step completes with the gradients that reached every server, the windows of a
// worker dropped from it go back to the data plan's pool — while a lost server stops the job
// (PeerLost naming it and the phase; `ptrain run` restarts it from the latest checkpoint). A
// worker that joins (or a Shutdown from a worker: it leaves) takes effect at the next step
// boundary. Below cluster.min_workers the job waits, and after cluster.wait_timeout_s writes a
// checkpoint and stops. Every applied step's windows, and every join, leave, loss and resume, go
// to RUN_DIR/ledger.jsonl (common/io/ledger.hpp). A checkpoint is sharded: with
// the next step held (a consistent cut), every server writes its shard-K.h5 into the checkpoint's
// temp folder in parallel and acks; the coordinator then verifies the shards, writes the index
// checkpoint.h5 and publishes (finish_sharded_checkpoint). Starts the servers from a
// fresh initialisation or a checkpoint (StartState: the servers initialise or read their own
// slices; LoadShard names the seed or the file), plans validation, which the workers run
// (EvalBegin/EvalDone), and stops everyone at the end. It runs no model and holds no weights.
//
// A NaN/Inf in the loss or in a gradient stops the job with NumericError naming the step and the
// tensor, before that step is applied; no checkpoint is written for it, so the last good one
// stays `latest`.
#pragma once

#include "common/config/config.hpp"
#include "common/net/membership.hpp"
#include "common/net/transport.hpp"
#include "common/proto/messages.hpp"
#include "common/tensor/param_layout.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ptrain {

class StatusService;

struct CoordinatorOptions {
  Config config;                               // resolved and validated
  std::vector<proto::KeyRange> server_ranges;  // server k's slice
  std::string tokenizer_json;                  // stored in checkpoints
  // Longest wait for any single message (a peer that went silent).
  std::chrono::milliseconds timeout{std::chrono::hours(1)};
  // Asked after every applied step (argument: steps applied); true = stop now, as on SIGINT or
  // SIGTERM: a checkpoint of that step is written and the run returns with `interrupted` set.
  // Empty = never.
  std::function<bool(int64_t)> stop_requested;
  // Where the figures of the status endpoint go (owned by the caller, who serves them); null =
  // none. Updated after every step and checkpoint (see docs/status.md for each figure).
  StatusService* status = nullptr;
  // Sends the job's Welcome to a worker that joined after the start (the processes launch);
  // empty = nobody joins after the start (a fixed membership).
  std::function<void(const net::Member&)> welcome;
  // Resume even when the checkpoint's config differs in keys that change the training
  // (load_start_state); `--allow-config-change`.
  bool allow_config_change = false;
};

struct RunSummary {
  int64_t start_step = 0;   // steps applied when this run started
  int64_t final_step = 0;   // steps applied when it ended
  int64_t tokens_seen = 0;
  double final_loss = 0.0;  // loss of the last step run here (NaN if none)
  std::optional<double> final_val_loss;
  std::string last_checkpoint;  // directory published last by this run ("" if none)
  double elapsed_s = 0.0;
  double mean_step_s = 0.0;     // wall time per step of this run
  double tokens_per_s = 0.0;
  bool interrupted = false;     // stopped early by stop_requested (with a checkpoint)
};

// Runs the job to config.train.steps. The servers and workers are `membership`'s members
// (server k owns server_ranges[k]; each step takes the workers that are members at its start),
// reached through `transport`.
RunSummary run_coordinator(const CoordinatorOptions& options, const ParamLayout& layout,
                           net::Transport& transport, net::Membership& membership);

// "transformer.h.0.attn.c_attn.weight[3, 17]" for a flat index.
std::string describe_element(const ParamLayout& layout, int64_t flat_index);

}  // namespace ptrain
