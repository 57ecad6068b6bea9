// `ptrain eval`'s work: the mean cross-entropy of a checkpoint over every complete window of a
// token file (file order, T = model.seq_len, batches of train.micro_batch windows, summed as
// common/data/val_loss.hpp says, so the in-run val_loss at the checkpoint's step is this number),
// and its perplexity, on a chosen device (default: the stored device.type). For BERT the same over
// the masked positions, plus the masked-token accuracy ("accuracy" in the JSON).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ptrain::tools {

struct EvalOptions {
  std::string checkpoint;  // checkpoint .h5 or its directory
  std::string data;        // .tok file
  std::string device;      // "" = the checkpoint's device.type; else a device name already checked
  bool json = false;       // print_eval: one JSON object instead of the text line
  std::optional<int> threads;  // compute threads (--threads; 0 = all cores); nullopt = run.threads
};

struct EvalResult {
  double loss = 0.0;        // mean cross-entropy per target token
  double perplexity = 0.0;  // exp(loss)
  int64_t windows = 0;      // complete windows of T+1 tokens evaluated
  int64_t tokens = 0;       // targets summed over
  int64_t step = 0;         // the checkpoint's step
  // BERT (masked LM): loss, perplexity and tokens are over the predicted positions of the fixed
  // evaluation masks (common/data/mlm.hpp); accuracy = argmax hits among them. -1 for GPT.
  double accuracy = -1.0;
};

// Evaluates and logs the run (file, step, windows, tokens, seconds) on stderr. Throws IoError /
// CheckpointError for the checkpoint, DataError for a token file of another vocabulary, with no
// complete window or holding an id outside the vocabulary.
EvalResult evaluate(const EvalOptions& o);

// The result on stdout: one JSON object {"loss", "perplexity", "windows", "tokens", "step"} when
// `json`, else one text line.
void print_eval(const EvalResult& r, bool json);

}  // namespace ptrain::tools
