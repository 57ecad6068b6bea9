// `ptrain prepare`: turns text/JSONL files and folders (plain, gzip or zstd) into sharded train/val
// token files, a tokenizer and a manifest (docs/contracts.md "Command line"; the work is in
// common/data/corpus.cpp). Only parsing here.
#include "cli/commands.hpp"
#include "common/data/corpus.hpp"

#include <cstdio>
#include <memory>

namespace ptrain::cli {

void add_prepare_command(CLI::App& app, Action& action) {
  struct Args {
    std::vector<std::string> inputs;
    std::string tokenizer;
    int64_t vocab_size = 0;
    std::string vocab, merges;
    double val_fraction = kDefaultValFraction;
    std::string doc_separator;
    std::string text_key = "text";
    uint64_t seed = 0;
    int threads = 0;
    int64_t shard_size = kDefaultShardSize;
    int64_t bpe_sample_bytes = kDefaultBpeSampleBytes;
    bool dry_run = false;
    std::string output;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("prepare", "Tokenize text/JSONL files and folders (plain, .gz, .zst) into "
                                            "DIR/{train,val}-NNNNN.tok, DIR/tokenizer.json and DIR/manifest.json");
  sub->add_option("--input", args->inputs,
                  "A text or .jsonl file (optionally gzip or zstd), or a folder read recursively in sorted "
                  "order (repeatable)")
      ->required();
  sub->add_option("--tokenizer", args->tokenizer,
                  "byte (V = 257), bpe (byte-level BPE trained on a sample of the train split) or gpt2 "
                  "(GPT-2's, from --vocab and --merges)")
      ->required()
      ->check(CLI::IsMember({"byte", "bpe", "gpt2"}));
  auto* vocab_size = sub->add_option("--vocab-size", args->vocab_size,
                                     "Total vocabulary incl. <|endoftext|> (bpe: >= 257, default 4096; byte: 257)");
  sub->add_option("--vocab", args->vocab, "gpt2: GPT-2's vocab.json (encoder.json)");
  sub->add_option("--merges", args->merges, "gpt2: GPT-2's merges.txt (vocab.bpe)");
  sub->add_option("--val-fraction", args->val_fraction, "Share of documents held out for validation, in [0, 1)")
      ->capture_default_str();
  auto* sep = sub->add_option("--doc-separator", args->doc_separator,
                              "A line equal to LINE separates documents in text files (fortune files: %)");
  sub->add_option("--text-key", args->text_key, "JSONL: the field holding a document's text")->capture_default_str();
  sub->add_option("--seed", args->seed, "Seed of the train/val split")->capture_default_str();
  sub->add_option("--threads", args->threads, "Encoding threads (0 = every core)")->capture_default_str();
  sub->add_option("--shard-size", args->shard_size, "Most bytes per token file")->capture_default_str();
  sub->add_option("--bpe-sample-bytes", args->bpe_sample_bytes,
                  "bpe: train on the first this many bytes of train documents")
      ->capture_default_str();
  sub->add_flag("--dry-run", args->dry_run, "Read and count the inputs; write nothing");
  sub->add_option("--output", args->output, "Output folder (created if missing)")->required();

  // Errors must surface from the action (main maps ptrain::Error to exit codes), not from parsing.
  sub->callback([&action, args, vocab_size, sep] {
    const bool has_vocab = vocab_size->count() > 0, has_sep = sep->count() > 0;
    action = [args, has_vocab, has_sep] {
      PrepareOptions opt;
      opt.inputs = args->inputs;
      opt.tokenizer = parse_tokenizer_kind(args->tokenizer);
      if (has_vocab) opt.vocab_size = args->vocab_size;
      opt.gpt2_vocab = args->vocab;
      opt.gpt2_merges = args->merges;
      opt.val_fraction = args->val_fraction;
      if (has_sep) opt.doc_separator = args->doc_separator;
      opt.text_key = args->text_key;
      opt.seed = args->seed;
      opt.threads = args->threads;
      opt.shard_size = args->shard_size;
      opt.bpe_sample_bytes = args->bpe_sample_bytes;
      opt.dry_run = args->dry_run;
      opt.output_dir = args->output;
      const PrepareResult r = prepare_corpus(opt);
      if (opt.dry_run) {
        std::printf("dry run: %lld files (%lld skipped, %lld binary), %lld documents: train %lld, val %lld; "
                    "%lld bytes of text; nothing written\n",
                    static_cast<long long>(r.files_read), static_cast<long long>(r.files_skipped),
                    static_cast<long long>(r.binary_skipped),
                    static_cast<long long>(r.train.documents + r.val.documents),
                    static_cast<long long>(r.train.documents), static_cast<long long>(r.val.documents),
                    static_cast<long long>(r.train.bytes));
      }
      return 0;
    };
  });
}

}  // namespace ptrain::cli
