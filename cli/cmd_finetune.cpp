// `ptrain finetune CONFIG [--set k=v]... [--json]`: sequence classification from a pretrained BERT
// checkpoint (finetune.* keys, docs/config.md); the work is launch/finetune.hpp's. --json prints
// one object {"labels", "train_examples", "val_examples", "steps", "train_loss", "val_loss",
// "val_accuracy", "majority_accuracy", "checkpoint", "labels_file"} on stdout (the fine-tuned
// checkpoint and its class names); logs go to stderr.
#include "cli/commands.hpp"
#include "launch/finetune.hpp"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>

namespace ptrain::cli {

void add_finetune_command(CLI::App& app, Action& action) {
  struct Args {
    std::string config;
    std::vector<std::string> sets;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "finetune", "Train a sequence-classification head on a BERT checkpoint (JSONL text/label) "
                  "and report held-out accuracy");
  sub->add_option("CONFIG", args->config, "YAML config file (finetune.* keys)")->required();
  add_set_option(sub, args->sets);
  sub->add_flag("--json", args->json, "Print one JSON object on stdout");
  sub->callback([&action, args] {
    action = [args] {
      const FinetuneResult r = run_finetune(load_config_with_sets(args->config, args->sets));
      if (args->json) {
        const nlohmann::json j = {{"labels", r.labels},          {"train_examples", r.train_examples},
                                  {"val_examples", r.val_examples}, {"steps", r.steps},
                                  {"train_loss", r.train_loss},   {"val_loss", r.val_loss},
                                  {"val_accuracy", r.val_accuracy},
                                  {"majority_accuracy", r.majority_accuracy},
                                  {"checkpoint", r.checkpoint}, {"labels_file", r.labels_file}};
        std::printf("%s\n", j.dump().c_str());
      } else {
        std::printf("val accuracy %.4f (majority class %.4f) over %lld examples, %zu classes\n",
                    r.val_accuracy, r.majority_accuracy, static_cast<long long>(r.val_examples),
                    r.labels.size());
        std::printf("fine-tuned checkpoint: %s (labels: %s)\n", r.checkpoint.c_str(),
                    r.labels_file.c_str());
      }
      return 0;
    };
  });
}

}  // namespace ptrain::cli
