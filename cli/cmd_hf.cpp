// `ptrain export-hf CKPT OUT_DIR` and `ptrain import-hf HF_DIR --out CKPT`: a checkpoint as a
// Hugging Face GPT-2 directory and back (tools/hf/hf_model.hpp does the work).
#include "cli/commands.hpp"
#include "tools/hf/hf_model.hpp"

#include <memory>

namespace ptrain::cli {

void add_hf_commands(CLI::App& app, Action& action) {
  auto ex = std::make_shared<tools::hf::ExportOptions>();
  auto* sub = app.add_subcommand(
      "export-hf", "Write a checkpoint as a Hugging Face GPT-2 folder (model.safetensors, config.json, tokenizer)");
  sub->add_option("CKPT", ex->checkpoint, "Checkpoint .h5 file or its directory")->required();
  sub->add_option("OUT_DIR", ex->out_dir, "Folder to write (created; its files are replaced)")->required();
  sub->callback([&action, ex] {
    action = [ex] {
      tools::hf::export_hf(*ex);
      return 0;
    };
  });

  auto im = std::make_shared<tools::hf::ImportOptions>();
  sub = app.add_subcommand(
      "import-hf", "Read a Hugging Face GPT-2 folder (safetensors) into a step-0 checkpoint, a ptrain "
                   "tokenizer and a config beside it");
  sub->add_option("HF_DIR", im->hf_dir, "Folder with config.json, model.safetensors and tokenizer.json")->required();
  sub->add_option("--out", im->out, "Checkpoint file to write (HDF5; replaced if it exists)")->required();
  sub->callback([&action, im] {
    action = [im] {
      tools::hf::import_hf(*im);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
