// `ptrain finetune CONFIG`: sequence classification from a pretrained BERT checkpoint, as Hugging
// Face BertForSequenceClassification: the checkpoint's encoder, a new pooler (dense + tanh on the
// [CLS] row) and a K-way classifier (both N(0, 0.02), seeded by run.seed), trained on JSONL records
// {"text", "label"} with AdamW and the LR schedule of the servers (paramserver/update_rule.hpp,
// optim.* keys; train.steps is epochs · batches), global-norm clipping as the coordinator does;
// accuracy on the held-out JSONL after every epoch, against the majority-class baseline. One
// process, one backend: the fine-tuning sets are small. No dropout (as in pretraining).
// Writes RUN_DIR/finetune.jsonl: one object per epoch {"epoch", "step", "train_loss",
// "val_loss", "val_accuracy", "majority_accuracy"}; at the end the fine-tuned checkpoint
// RUN_DIR/finetuned.h5 (Hugging Face BertForSequenceClassification names: bert.* encoder,
// bert.pooler.dense.*, classifier.*; config with model.num_labels K; AdamW moments) and
// RUN_DIR/finetuned.labels.json {"num_labels": K, "id2label": {"0": label, ...}}.
#pragma once

#include "common/config/config.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain {

struct FinetuneResult {
  std::vector<std::string> labels;  // class k's label (sorted, as JSON text for non-strings)
  int64_t train_examples = 0, val_examples = 0;
  int64_t steps = 0;
  double train_loss = 0.0;         // mean loss of the last epoch
  double val_loss = 0.0;           // after the last epoch
  double val_accuracy = 0.0;       // after the last epoch
  double majority_accuracy = 0.0;  // predicting train's most frequent label on the val split
  std::string checkpoint;          // RUN_DIR/finetuned.h5
  std::string labels_file;         // RUN_DIR/finetuned.labels.json
};

// Throws ConfigError (keys unset, a GPT checkpoint), IoError / DataError naming file:line for the
// JSONL, CheckpointError for the checkpoint.
FinetuneResult run_finetune(const Config& config);

}  // namespace ptrain
