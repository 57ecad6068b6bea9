// `ptrain grad`'s work: one gradient of a checkpoint, for comparisons with other implementations
// (PyTorch). Takes the first B windows of a token file in file order (T = model.seq_len), computes
// the mean cross-entropy over the B·T targets and its gradient (grad_scale 1/(B·T), micro-batches
// of train.micro_batch sequences folded in fp32 as a worker folds them,
// worker/model/gpt_state.hpp), and writes an HDF5 file
//   /inputs       int32 (B, T+1)   the windows
//   /loss         float32 scalar   mean loss
//   /grad/<name>  float32, each tensor at full shape (attr crc32c like a checkpoint's)
// For BERT (masked LM): window b becomes [CLS] … [SEP] with the fixed evaluation masks of window b
// (common/data/mlm.hpp), and the file holds /inputs int32 (B, T) (the masked ids), /labels int32
// (B, T) (-100 = not predicted), /loss (mean over predicted positions), /grad/<name>, attr arch.
// Root attributes name the checkpoint, data file, step, batch size, seq_len and layout
// hash. Everything is checked before the output is written, and it is written atomically (no file
// on failure).
#pragma once

#include <cstdint>
#include <string>

namespace ptrain::tools {

// The caller checks batch_size >= 1 and the device name, naming its flags.
struct GradOptions {
  std::string checkpoint;  // checkpoint .h5 or its directory
  std::string data;        // .tok file; its first batch_size windows are used
  std::string out;         // HDF5 file to write
  std::string device;      // "" = the checkpoint's device.type
  int64_t batch_size = 0;  // B
};

struct GradResult {
  float loss = 0.0f;  // the mean loss written to /loss
};

// Computes, writes `out` and logs it on stderr. Throws IoError / CheckpointError for the
// checkpoint, DataError for a token file of another vocabulary, with fewer than B windows or
// holding an id outside the vocabulary.
GradResult write_grad(const GradOptions& o);

}  // namespace ptrain::tools
