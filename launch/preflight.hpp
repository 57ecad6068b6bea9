// Checks a job's inputs before any role starts, so that a mistake fails the job in well under a
// second with a message naming the key or file, rather than after every role started (or at the
// first checkpoint, or when a bad window is first used):
//   - memory: an estimate per role (weights, AdamW moments, gradients, activations, buffers) for
//     every role this machine runs, against run.max_memory (auto = the machine's available
//     memory), naming the keys that drive the largest part;
//   - data: each token file opens (header, checksum, every id below its header's vocabulary), was
//     made with data.tokenizer (its hash) and its vocabulary fits the model's, with at least one
//     window of model.seq_len + 1 tokens;
//   - resume: the checkpoint that checkpoint.resume picks reads, has this model's layout, and
//     data.train / data.val were made with its tokenizer;
//   - directories: run.dir and run.dir/checkpoints can be written.
// Used by both launches (threads and processes).
#pragma once

#include "common/config/config.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain {

struct RoleMemory {
  std::string role;   // "coordinator", "each server", "each worker"
  int64_t count = 1;  // how many of them run on this machine
  double bytes = 0;   // each
  std::string driven_by;  // the keys behind the largest term, e.g. "train.micro_batch x model.seq_len ..."
};

struct MemoryEstimate {
  std::vector<RoleMemory> roles;
  double total_bytes = 0;  // every role on this machine
};

// The estimate for `config` with a tokenizer of `tokenizer_vocab` tokens. Pure arithmetic in
// doubles: an absurd config gives a huge number, never an overflow or an allocation.
MemoryEstimate estimate_memory(const Config& config, int64_t tokenizer_vocab);

// The machine's available memory (MemAvailable in /proc/meminfo), in bytes; 0 when unknown.
int64_t available_memory();

// Every check above. Throws ConfigError (memory), DataError / IoError (data, directories),
// CheckpointError (resume) naming the key or file.
void preflight_job(const Config& config, bool allow_config_change = false);

}  // namespace ptrain
