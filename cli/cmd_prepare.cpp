// `ptrain prepare`: turns text/JSONL files and folders into train/val token files, a tokenizer and a
// manifest (docs/contracts.md "Command line"; the work is in common/data/corpus.cpp). Only parsing here.
#include "cli/commands.hpp"
#include "common/data/corpus.hpp"

#include <memory>

namespace ptrain::cli {

void add_prepare_command(CLI::App& app, Action& action) {
  struct Args {
    std::vector<std::string> inputs;
    std::string tokenizer;
    int64_t vocab_size = 0;
    double val_fraction = kDefaultValFraction;
    std::string doc_separator;
    uint64_t seed = 0;
    std::string output;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("prepare", "Tokenize text/JSONL files and folders into DIR/{train,val}.tok, "
                                            "DIR/tokenizer.json and DIR/manifest.json");
  sub->add_option("--input", args->inputs,
                  "A text or .jsonl file, or a folder read recursively in sorted order (repeatable)")
      ->required();
  sub->add_option("--tokenizer", args->tokenizer, "byte (V = 257) or bpe (byte-level BPE trained on the train split)")
      ->required()
      ->check(CLI::IsMember({"byte", "bpe"}));
  auto* vocab = sub->add_option("--vocab-size", args->vocab_size,
                                "Total vocabulary incl. <|endoftext|> (bpe: >= 257, default 4096; byte: 257)");
  sub->add_option("--val-fraction", args->val_fraction, "Share of documents held out for validation, in [0, 1)")
      ->capture_default_str();
  auto* sep = sub->add_option("--doc-separator", args->doc_separator,
                              "A line equal to LINE separates documents in text files (fortune files: %)");
  sub->add_option("--seed", args->seed, "Seed of the train/val split")->capture_default_str();
  sub->add_option("--output", args->output, "Output folder (created if missing)")->required();

  // Errors must surface from the action (main maps ptrain::Error to exit codes), not from parsing.
  sub->callback([&action, args, vocab, sep] {
    const bool has_vocab = vocab->count() > 0, has_sep = sep->count() > 0;
    action = [args, has_vocab, has_sep] {
      PrepareOptions opt;
      opt.inputs = args->inputs;
      opt.tokenizer = parse_tokenizer_kind(args->tokenizer);
      if (has_vocab) opt.vocab_size = args->vocab_size;
      opt.val_fraction = args->val_fraction;
      if (has_sep) opt.doc_separator = args->doc_separator;
      opt.seed = args->seed;
      opt.output_dir = args->output;
      prepare_corpus(opt);
      return 0;
    };
  });
}

}  // namespace ptrain::cli
