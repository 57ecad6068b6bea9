// Corpus preparation (`ptrain prepare`): stream files and folders of text/JSONL (plain, gzip or
// zstd) as documents, split them into train/val by whole documents, train or pick a tokenizer,
// encode on several threads and write sharded token files DIR/{train,val}-%05d.tok,
// DIR/tokenizer.json and DIR/manifest.json. Memory stays bounded whatever the corpus size. Rules
// are in docs/contracts.md ("Command line: prepare") and docs/formats.md. Not here: reading token
// files back (common/io/token_file.hpp); reading inputs (corpus_reader.hpp).
#pragma once

#include "common/data/corpus_reader.hpp"

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ptrain {

enum class TokenizerKind { kByte, kBpe, kGpt2 };

// "byte" / "bpe" / "gpt2"; UsageError otherwise.
TokenizerKind parse_tokenizer_kind(const std::string& s);

inline constexpr int64_t kDefaultBpeVocabSize = 4096;
inline constexpr double kDefaultValFraction = 0.05;
inline constexpr int64_t kDefaultShardSize = int64_t{256} << 20;       // bytes per token file
inline constexpr int64_t kDefaultBpeSampleBytes = int64_t{128} << 20;  // text the BPE trainer sees

struct PrepareOptions {
  std::vector<std::string> inputs;          // files and folders, read in this order
  TokenizerKind tokenizer = TokenizerKind::kByte;
  std::optional<int64_t> vocab_size;        // total V; bpe default kDefaultBpeVocabSize, byte 257 only
  std::string gpt2_vocab, gpt2_merges;      // gpt2: vocab.json and merges.txt
  double val_fraction = kDefaultValFraction;  // [0, 1); 0 writes an empty val split on purpose
  std::optional<std::string> doc_separator; // a line equal to this separates documents in text files
  std::string text_key = "text";            // JSONL: the field holding a document's text
  uint64_t seed = 0;
  int threads = 0;                          // encoding threads; 0 = every core
  int64_t shard_size = kDefaultShardSize;   // most bytes per token file (header included)
  int64_t bpe_sample_bytes = kDefaultBpeSampleBytes;  // bpe: train on the first this many bytes of train
  bool dry_run = false;                     // count and report; write nothing
  std::string output_dir;
  // Distributed prepare (docs/commands.md "prepare"): with ranks > 1, this process is rank `rank`
  // and encodes only its share of the input files into DIR/parts; rank 0 with `wait_for_parts`
  // (under mpirun/srun, where all ranks run at once) then waits for the others' parts and writes
  // the shards and manifest. `finalize`: only that last step (after a job array), with the options
  // the ranks ran with. The shards and manifest are byte-identical to a one-process run.
  int rank = 0;
  int ranks = 1;
  bool wait_for_parts = false;
  bool finalize = false;
};

// Throws UsageError naming the option at fault (DataError for --val-fraction outside [0, 1), in
// line with the empty-split errors).
void validate(const PrepareOptions& opt);

// ---- reading into memory (small corpora and tests) ----

struct Document {
  std::string_view text;  // points into Corpus::storage
  int32_t file;           // index into Corpus::files
};

struct SourceFile {
  std::string path;
  int64_t documents = 0;
  int64_t bytes = 0;  // decompressed
};

// Move-only: documents point into `storage`.
struct Corpus {
  Corpus() = default;
  Corpus(Corpus&&) = default;
  Corpus& operator=(Corpus&&) = default;
  Corpus(const Corpus&) = delete;
  Corpus& operator=(const Corpus&) = delete;

  std::deque<std::string> storage;   // document texts (stable addresses)
  std::vector<SourceFile> files;     // files read, in reading order
  std::vector<Document> documents;   // non-empty documents, in reading order
  std::vector<SkippedPath> skipped;  // with a warning logged for each
  int64_t empty_documents = 0;       // dropped (empty or whitespace only)
};

// Reads `inputs` into memory as prepare would see them (list_input_files + read_documents).
Corpus read_corpus(const std::vector<std::string>& inputs, const std::optional<std::string>& doc_separator,
                   const std::string& exclude_dir = "", const std::string& text_key = "text");

// The train/val rule: document k (reading order, counting non-empty documents from 0) of n goes to
// val when P(k) < n_val, P a seeded permutation of [0, n): a 4-round Feistel network over splitmix64
// round keys, cycle-walked into [0, n). Exactly n_val documents go to val, any one document's side
// is known without the others (constant memory, any order, any rank), and the same (n, seed) gives
// the same split everywhere.
class SplitRule {
 public:
  SplitRule(int64_t n, int64_t n_val, uint64_t seed);
  int64_t permute(int64_t k) const;  // P(k)
  bool is_val(int64_t k) const { return permute(k) < n_val_; }

 private:
  int64_t n_, n_val_;
  int half_bits_;
  uint64_t keys_[4];
};

// ---- the whole command ----

struct SplitStats {
  int64_t files = 0;      // files with at least one document in the split
  int64_t documents = 0;
  int64_t bytes = 0;      // document bytes (eot not counted)
  int64_t tokens = 0;     // including one eot per document
  int64_t shards = 0;
};

struct PrepareResult {
  std::string tokenizer_kind;
  int64_t vocab_size = 0;
  std::string tokenizer_hash;
  SplitStats train, val;
  int64_t files_read = 0;
  int64_t files_skipped = 0;
  int64_t binary_skipped = 0;
  std::string manifest_json;  // what was written to DIR/manifest.json ("" on a dry run)
  double seconds = 0, encode_seconds = 0;
};

// Runs the whole preparation (or one rank's share of it, or the final step of a distributed one).
// Inputs are read (and checked) in full before DIR is touched; then DIR/prepare.incomplete
// (kPrepareIncompleteFile) is created, DIR/manifest.json removed, the shards written (each under
// its name only once complete), the manifest written and the marker removed last: a run killed at
// any point leaves the marker, which readers refuse (naming it) and the next prepare into DIR
// reports and starts over.
PrepareResult prepare_corpus(const PrepareOptions& opt);

}  // namespace ptrain
