// `ptrain prepare`: turns text/JSONL files and folders (plain, gzip or zstd) into sharded train/val
// token files, a tokenizer and a manifest (docs/contracts.md "Command line"; the work is in
// common/data/corpus.cpp). Only parsing here.
#include "cli/commands.hpp"
#include "common/data/corpus.hpp"
#include "common/error.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>

namespace ptrain::cli {
namespace {

// This process's rank of a distributed prepare, from the launcher's environment: mpirun (Open MPI:
// OMPI_COMM_WORLD_RANK/SIZE; MPICH, Intel MPI: PMI_RANK/PMI_SIZE) or srun (SLURM_PROCID of
// SLURM_STEP_NUM_TASKS), whose ranks all run at once, so rank 0 waits for the others and writes
// the manifest; else a SLURM job array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, in steps of
// SLURM_ARRAY_TASK_STEP, of SLURM_ARRAY_TASK_COUNT), whose tasks need not run at once, so a final
// `--finalize` step writes it. Nothing found: one process.
struct LauncherRank {
  int rank = 0, ranks = 1;
  bool concurrent = false;
  std::string source;
};

std::optional<int> env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  try {
    size_t used = 0;
    const int x = std::stoi(v, &used);
    if (used == std::strlen(v)) return x;
  } catch (const std::exception&) {
  }
  throw UsageError(fmt::format("the environment variable {}=\"{}\" is not an integer", name, v));
}

LauncherRank launcher_rank() {
  const std::pair<const char*, const char*> launchers[] = {
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, {"PMI_RANK", "PMI_SIZE"}, {"SLURM_PROCID", "SLURM_STEP_NUM_TASKS"}};
  for (const auto& [r, n] : launchers) {
    const auto rank = env_int(r), size = env_int(n);
    if (rank && size && *size > 1) return {*rank, *size, true, fmt::format("{}/{}", r, n)};
  }
  const auto id = env_int("SLURM_ARRAY_TASK_ID"), count = env_int("SLURM_ARRAY_TASK_COUNT");
  if (id && count && *count > 1) {
    const int min = env_int("SLURM_ARRAY_TASK_MIN").value_or(0), step = env_int("SLURM_ARRAY_TASK_STEP").value_or(1);
    const int rank = step > 0 ? (*id - min) / step : -1;
    if (rank < 0 || rank >= *count || (*id - min) % std::max(1, step) != 0) {
      throw UsageError(fmt::format("SLURM_ARRAY_TASK_ID {} does not map to one of {} ranks (array from {} in steps "
                                   "of {}): use an array 0-{} (or pass --rank and --ranks)",
                                   *id, *count, min, step, *count - 1));
    }
    return {rank, *count, false, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"};
  }
  return {};
}

}  // namespace

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
    int rank = 0, ranks = 1;
    bool finalize = false;
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
  auto* rank = sub->add_option("--rank", args->rank,
                               "Distributed prepare: this process's rank (default: from mpirun, srun or a SLURM "
                               "job array)");
  auto* ranks = sub->add_option("--ranks", args->ranks,
                                "Distributed prepare: the number of ranks (1 = one process, whatever the launcher)");
  rank->needs(ranks);
  ranks->needs(rank);
  sub->add_flag("--finalize", args->finalize,
                "Distributed prepare: write the shards and manifest from every rank's part in OUTPUT/parts "
                "(after a job array; same options as the ranks)");

  // Errors must surface from the action (main maps ptrain::Error to exit codes), not from parsing.
  sub->callback([&action, args, vocab_size, sep, ranks] {
    const bool has_vocab = vocab_size->count() > 0, has_sep = sep->count() > 0, has_ranks = ranks->count() > 0;
    action = [args, has_vocab, has_sep, has_ranks] {
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
      opt.finalize = args->finalize;
      if (has_ranks) {
        opt.rank = args->rank;
        opt.ranks = args->ranks;
      } else if (!opt.finalize && !opt.dry_run) {
        const LauncherRank lr = launcher_rank();
        opt.rank = lr.rank;
        opt.ranks = lr.ranks;
        opt.wait_for_parts = lr.concurrent;
        if (lr.ranks > 1) spdlog::info("distributed prepare: rank {} of {} (from {})", lr.rank, lr.ranks, lr.source);
      }
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
