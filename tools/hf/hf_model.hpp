// `ptrain export-hf` and `ptrain import-hf`: a checkpoint as a Hugging Face GPT-2 directory (what
// GPT2LMHeadModel.from_pretrained and GPT2TokenizerFast.from_pretrained load), and such a directory
// back as a step-0 checkpoint. ptrain's tensors already carry HF GPT-2's names and shapes
// (Conv1D weights (in, out)), so the export copies them: the padded vocabulary rows of wte are cut,
// the tied LM head is left out as save_pretrained leaves it out. Export then import gives the same
// weights, bit for bit, and the same tokenizer.
#pragma once

#include <string>
#include <vector>

namespace ptrain::tools::hf {

struct ExportOptions {
  std::string checkpoint;  // .h5 or its directory
  std::string out_dir;     // created if missing; files in it are replaced
};

// Writes model.safetensors, config.json, generation_config.json and the tokenizer files
// (hf_tokenizer.hpp) into out_dir; logs on stderr what was written and where tokenization can
// differ. Throws CheckpointError / IoError / DataError naming the file.
void export_hf(const ExportOptions& o);

struct ImportOptions {
  std::string hf_dir;  // config.json, model.safetensors, tokenizer.json
  std::string out;     // checkpoint file to write (e.g. gpt2.h5)
};

struct ImportResult {
  std::string checkpoint, tokenizer, config;  // the files written
};

// Writes OUT (a step-0 checkpoint: the weights, zero AdamW moments, a config with the model's
// dimensions), OUT's stem + ".tokenizer.json" (the ptrain tokenizer) and OUT's stem + ".yaml" (that
// config, to edit: data.train must name the token files to train on) beside it. Refuses, naming the
// file and key or tensor, a config.json that is not GPT-2 as ptrain computes it (activation, layer
// norm epsilon, inner size, untied head...), a missing, misshapen or unexpected tensor.
ImportResult import_hf(const ImportOptions& o);

}  // namespace ptrain::tools::hf
