// Corpus preparation (`ptrain prepare`): read files and folders into documents, split them into
// train/val by whole documents, train or pick a tokenizer, write DIR/{train,val}.tok,
// DIR/tokenizer.json and DIR/manifest.json. Rules are in docs/contracts.md ("Command line: prepare")
// and docs/formats.md. Not here: reading token files back (common/io/token_file.hpp).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ptrain {

enum class TokenizerKind { kByte, kBpe };

// "byte" / "bpe"; UsageError otherwise.
TokenizerKind parse_tokenizer_kind(const std::string& s);

inline constexpr int64_t kDefaultBpeVocabSize = 4096;
inline constexpr double kDefaultValFraction = 0.05;

struct PrepareOptions {
  std::vector<std::string> inputs;          // files and folders, read in this order
  TokenizerKind tokenizer = TokenizerKind::kByte;
  std::optional<int64_t> vocab_size;        // total V; bpe default kDefaultBpeVocabSize, byte 257 only
  double val_fraction = kDefaultValFraction;  // [0, 1); 0 writes an empty val.tok on purpose
  std::optional<std::string> doc_separator; // a line equal to this separates documents in text files
  uint64_t seed = 0;
  std::string output_dir;
};

// Throws UsageError naming the option at fault (DataError for --val-fraction outside [0, 1), in
// line with the empty-split errors).
void validate(const PrepareOptions& opt);

// ---- reading ----

struct Document {
  std::string_view text;  // points into Corpus::storage
  int32_t file;           // index into Corpus::files
};

struct SourceFile {
  std::string path;
  int64_t documents = 0;
  int64_t bytes = 0;
};

struct SkippedPath {
  std::string path;
  std::string reason;
};

// Move-only: documents point into `storage`.
struct Corpus {
  Corpus() = default;
  Corpus(Corpus&&) = default;
  Corpus& operator=(Corpus&&) = default;
  Corpus(const Corpus&) = delete;
  Corpus& operator=(const Corpus&) = delete;

  std::deque<std::string> storage;   // file contents and decoded JSONL texts (stable addresses)
  std::vector<SourceFile> files;     // files read, in reading order
  std::vector<Document> documents;   // non-empty documents, in reading order
  std::vector<SkippedPath> skipped;  // with a warning logged for each
  int64_t empty_documents = 0;       // dropped (empty or whitespace only)
};

// Reads `inputs` (files, folders recursed in byte-sorted name order) into documents. `exclude_dir`
// (the output folder) is skipped if met. Throws IoError for a missing or unreadable path and
// DataError for a bad JSONL line (FILE:LINE). An empty result is not an error here.
Corpus read_corpus(const std::vector<std::string>& inputs, const std::optional<std::string>& doc_separator,
                   const std::string& exclude_dir = "");

// Positions [0, n) shuffled by Fisher–Yates over splitmix64(seed); the same on every platform.
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed);

// ---- the whole command ----

struct SplitStats {
  int64_t files = 0;      // files with at least one document in the split
  int64_t documents = 0;
  int64_t bytes = 0;      // document bytes (eot not counted)
  int64_t tokens = 0;     // including one eot per document
};

struct PrepareResult {
  std::string tokenizer_kind;
  int64_t vocab_size = 0;
  SplitStats train, val;
  int64_t files_read = 0;
  int64_t files_skipped = 0;
  std::string manifest_json;  // what was written to DIR/manifest.json
};

// Runs the whole preparation. Outputs are staged beside their final names and renamed into place
// only after everything succeeded, so a failure leaves DIR as it was.
PrepareResult prepare_corpus(const PrepareOptions& opt);

}  // namespace ptrain
