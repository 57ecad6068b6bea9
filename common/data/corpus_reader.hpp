// Streaming corpus reading for `ptrain prepare`: the input walk (files and folders in a stable
// order, duplicates and symlinks resolved), byte sources (plain, gzip, zstd, told apart by their
// magic bytes) and the document splitter (a text file, a JSONL record, or text between separator
// lines), all with memory bounded by a few MiB whatever the size of a file or a document.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ptrain {

struct SkippedPath {
  std::string path;
  std::string reason;
};

// The regular files `inputs` name, in reading order: folders recursed in byte-sorted name order,
// a file reached twice read once (its first plain occurrence, else its first), `exclude_dir` (the
// output folder) not entered. Skipped paths are appended to `skipped` with a warning. Throws
// IoError for a missing or unreadable input.
std::vector<std::string> list_input_files(const std::vector<std::string>& inputs, const std::string& exclude_dir,
                                          std::vector<SkippedPath>& skipped);

// Decompressed bytes of one file: gzip (1f 8b, concatenated members too) or zstd (28 b5 2f fd,
// concatenated frames too) by magic, else the bytes as they are.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Up to `cap` bytes into `buf`; 0 at the end. Throws IoError / DataError naming the file.
  virtual size_t read(char* buf, size_t cap) = 0;
  static std::unique_ptr<ByteSource> open(const std::string& path);
};

// "plain", "gzip" or "zstd": what ByteSource::open will read `path` as.
std::string compression_of(const std::string& path);

// Whether `path` is JSONL: its name ends in .jsonl, .jsonl.gz or .jsonl.zst.
bool is_jsonl_path(const std::string& path);

struct DocumentRules {
  std::optional<std::string> doc_separator;  // text files: a line equal to this ends a document
  std::string text_key = "text";             // JSONL: the string field holding a document
};

// Receives the documents of the files read, in order. A long document comes in several pieces,
// cut only just after a newline that a non-whitespace byte follows (a place where every
// tokenizer's pre-tokenizer starts a new word, so encoding the pieces one by one gives the tokens
// of the whole); one longer than kForcedCutBytes without such a place is cut there anyway.
// Empty and whitespace-only documents never reach the sink.
class DocumentSink {
 public:
  virtual ~DocumentSink() = default;
  virtual void piece(std::string_view text) = 0;  // next bytes of the current document
  virtual void end_document() = 0;                // the current document is complete
  virtual bool done() const { return false; }     // true: stop reading (a bounded sample is full)
};

inline constexpr size_t kPieceBytes = size_t{4} << 20;
inline constexpr size_t kForcedCutBytes = size_t{64} << 20;

struct FileReadResult {
  bool binary = false;            // not read: a NUL byte in its first 8 KiB (not for JSONL)
  int64_t bytes = 0;              // decompressed bytes read
  int64_t documents = 0;          // non-empty documents
  int64_t empty_documents = 0;    // dropped
};

// Reads one file's documents into `sink`. Throws IoError (unreadable, corrupt compression) or
// DataError (a bad JSONL line, FILE:LINE) naming the file.
FileReadResult read_documents(const std::string& path, const DocumentRules& rules, DocumentSink& sink);

}  // namespace ptrain
