// Corpus preparation, streaming: inputs are read three times at most, never held whole.
//   1. count: every file is read and split into documents (bad JSONL, unreadable files and empty
//      corpora fail here, before the output folder is touched); n documents, so the split rule.
//   2. sample (bpe only): the first --bpe-sample-bytes of train documents train the tokenizer.
//   3. encode: the reading thread cuts documents into batches of a few MiB, a pool of threads
//      encodes them, and the reading thread appends the results, in batch order, to the split's
//      shard writer. At most two batches per thread are in flight, which bounds memory.
// Every choice that affects the output is a function of the inputs, the options and the seed
// (sorted folder walks, a split decided per document index, a deterministic BPE trainer, batches
// written in order), so two runs agree byte for byte whatever --threads is.
#include "common/data/corpus.hpp"

#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"
#include "common/util/hash.hpp"
#include "ptrain/build_config.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <malloc.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cerrno>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <regex>
#include <set>
#include <span>
#include <thread>

namespace ptrain {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr size_t kBatchBytes = size_t{2} << 20;
constexpr int64_t kTokenHeaderBytes = 64;  // a .tok file's fixed header (docs/formats.md)
constexpr int64_t kMinShardSize = 1024;

// ---- pass 1: counting ----

class CountSink final : public DocumentSink {
 public:
  void piece(std::string_view text) override { bytes += static_cast<int64_t>(text.size()); }
  void end_document() override { ++documents; }
  int64_t documents = 0, bytes = 0;
};

// A file's documents counted in pass 1, so that later passes (and ranks) agree on indices.
struct FileCount {
  std::string path;
  int64_t first_document = 0;
  int64_t documents = 0;
  int64_t bytes = 0;
};

// ---- pass 2: the bpe sample ----

class SampleSink final : public DocumentSink {
 public:
  SampleSink(const SplitRule& rule, int64_t first_document, int64_t budget, BpeWordCounter& counter)
      : rule_(rule), next_(first_document), budget_(budget), counter_(counter) {}
  void piece(std::string_view text) override {
    if (!rule_.is_val(next_) && taken < budget_) {
      counter_.add(text);
      taken += static_cast<int64_t>(text.size());
    }
  }
  void end_document() override { ++next_; }
  bool done() const override { return taken >= budget_; }
  int64_t taken = 0;

 private:
  const SplitRule& rule_;
  int64_t next_;
  int64_t budget_;
  BpeWordCounter& counter_;
};

// ---- pass 3: encoding ----

struct Batch {
  struct Item {
    size_t offset, length;  // into text; length 0 = just an eot
    uint8_t split;          // 0 train, 1 val
    bool eot;               // append <|endoftext|> after it
  };
  std::string text;
  std::vector<Item> items;
  std::vector<uint32_t> out[2];
  std::exception_ptr error;
  bool done = false;
};

// Encodes batches on `threads` threads; results are taken back in submission order.
class EncodePool {
 public:
  EncodePool(const Tokenizer& tok, int threads) : tok_(tok) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
  }
  ~EncodePool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_work_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void submit(std::shared_ptr<Batch> b) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(b);
      order_.push_back(std::move(b));
    }
    cv_work_.notify_one();
  }
  size_t in_flight() const { return order_.size(); }
  // The oldest batch, once encoded (rethrows its error).
  std::shared_ptr<Batch> take() {
    std::unique_lock lock(mu_);
    cv_done_.wait(lock, [&] { return order_.front()->done; });
    std::shared_ptr<Batch> b = std::move(order_.front());
    order_.pop_front();
    if (b->error) std::rethrow_exception(b->error);
    return b;
  }

 private:
  void run() {
    for (;;) {
      std::shared_ptr<Batch> b;
      {
        std::unique_lock lock(mu_);
        cv_work_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        b = std::move(queue_.front());
        queue_.pop_front();
      }
      try {
        const auto eot = static_cast<uint32_t>(tok_.eot());
        for (const auto& it : b->items) {
          auto& out = b->out[it.split];
          if (it.length > 0) {
            for (int32_t id : tok_.encode(std::string_view(b->text).substr(it.offset, it.length))) {
              out.push_back(static_cast<uint32_t>(id));
            }
          }
          if (it.eot) out.push_back(eot);
        }
      } catch (...) {
        b->error = std::current_exception();
      }
      {
        std::lock_guard lock(mu_);
        b->done = true;
      }
      cv_done_.notify_all();
    }
  }

  const Tokenizer& tok_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  std::deque<std::shared_ptr<Batch>> queue_, order_;
  bool stop_ = false;
};

struct ShardInfo {
  std::string file;
  int64_t tokens = 0, bytes = 0;
  uint32_t crc = 0;
};

// One split's token stream cut into shards of at most shard_size bytes: concatenated, the shards
// are exactly the stream a single file would hold. With `one_file`, the stream goes to the one
// file DIR/NAME.tok whatever its size (a rank's part of a distributed prepare).
class ShardedWriter {
 public:
  ShardedWriter(std::string dir, std::string name, int64_t vocab, std::string hash, int64_t shard_size,
                bool one_file = false)
      : dir_(std::move(dir)), name_(std::move(name)), vocab_(vocab), hash_(std::move(hash)), one_file_(one_file),
        capacity_(one_file ? INT64_MAX : (shard_size - kTokenHeaderBytes) / TokenFileWriter::token_width(vocab)) {}

  void append(std::span<const uint32_t> t) {
    while (!t.empty()) {
      if (!cur_) open_next();
      const auto n = static_cast<size_t>(std::min<int64_t>(capacity_ - cur_->tokens(), static_cast<int64_t>(t.size())));
      cur_->append(t.first(n));
      t = t.subspan(n);
      if (cur_->tokens() == capacity_) close();
    }
  }
  void finish() {
    if (!cur_ && shards_.empty()) open_next();  // an empty split still has one (empty) shard
    if (cur_) close();
  }
  const std::vector<ShardInfo>& shards() const { return shards_; }
  int64_t tokens() const { return total_ + (cur_ ? cur_->tokens() : 0); }

 private:
  void open_next() {
    const std::string file = one_file_ ? name_ + ".tok" : fmt::format("{}-{:05d}.tok", name_, shards_.size());
    cur_ = std::make_unique<TokenFileWriter>((fs::path(dir_) / file).string(), vocab_, hash_);
    shards_.push_back({file, 0, 0, 0});
  }
  void close() {
    cur_->commit();
    shards_.back().tokens = cur_->tokens();
    shards_.back().bytes = cur_->bytes();
    shards_.back().crc = cur_->tokens_crc32c();
    total_ += cur_->tokens();
    cur_.reset();
  }

  std::string dir_, name_;
  int64_t vocab_;
  std::string hash_;
  bool one_file_;
  int64_t capacity_;
  std::unique_ptr<TokenFileWriter> cur_;
  std::vector<ShardInfo> shards_;
  int64_t total_ = 0;
};

// Cuts documents into batches for the pool and writes finished batches in order.
class EncodeSink final : public DocumentSink {
 public:
  EncodeSink(const SplitRule& rule, EncodePool& pool, size_t max_in_flight, ShardedWriter* writers[2])
      : rule_(rule), pool_(pool), max_in_flight_(max_in_flight), writers_{writers[0], writers[1]} {}

  void start_file(int64_t first_document) {
    next_ = first_document;
    file_counted_[0] = file_counted_[1] = false;
  }
  void piece(std::string_view text) override {
    if (!in_doc_) begin_doc();
    if (!batch_) batch_ = std::make_shared<Batch>();
    batch_->items.push_back({batch_->text.size(), text.size(), split_, false});
    batch_->text.append(text);
    stats[split_].bytes += static_cast<int64_t>(text.size());
    if (batch_->text.size() >= kBatchBytes) flush();  // a long document spans batches
  }
  void end_document() override {
    if (!in_doc_) begin_doc();
    if (!batch_) batch_ = std::make_shared<Batch>();
    batch_->items.push_back({batch_->text.size(), 0, split_, true});
    ++stats[split_].documents;
    in_doc_ = false;
    ++next_;
    if (batch_->text.size() >= kBatchBytes) flush();
  }
  void finish() {
    if (batch_ && !batch_->items.empty()) flush();
    while (pool_.in_flight() > 0) write(pool_.take());
  }

  SplitStats stats[2];

 private:
  void begin_doc() {
    in_doc_ = true;
    split_ = rule_.is_val(next_) ? 1 : 0;
    if (!file_counted_[split_]) {
      file_counted_[split_] = true;
      ++stats[split_].files;
    }
  }
  void flush() {
    pool_.submit(std::move(batch_));
    batch_.reset();
    while (pool_.in_flight() >= max_in_flight_) write(pool_.take());
  }
  void write(const std::shared_ptr<Batch>& b) {
    for (int s = 0; s < 2; ++s) writers_[s]->append(b->out[s]);
  }

  const SplitRule& rule_;
  EncodePool& pool_;
  size_t max_in_flight_;
  ShardedWriter* writers_[2];
  std::shared_ptr<Batch> batch_;
  int64_t next_ = 0;
  bool in_doc_ = false;
  uint8_t split_ = 0;
  bool file_counted_[2] = {false, false};
};

class CollectSink final : public DocumentSink {
 public:
  explicit CollectSink(Corpus& c) : c_(c) {}
  void piece(std::string_view text) override { cur_.append(text); }
  void end_document() override {
    c_.documents.push_back({c_.storage.emplace_back(std::move(cur_)), static_cast<int32_t>(c_.files.size())});
    cur_.clear();
  }

 private:
  Corpus& c_;
  std::string cur_;
};

// ---- the output folder ----
//
// While a prepare writes DIR, DIR/prepare.incomplete exists (kPrepareIncompleteFile): it is made
// before the old manifest is removed and removed after the new manifest is written, so whenever a
// prepare is killed, the folder holds the marker (readers refuse it, naming it) or a complete
// output. Shards appear under their names only once complete (TokenFileWriter's .partial).

std::string in_dir(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// Marks DIR as being written, then removes its manifest. Safe to call from several ranks at once
// (the marker is created, never replaced). `warn_if_interrupted`: a marker already there is an
// earlier prepare that did not finish, said so before starting over.
void begin_output(const std::string& dir, bool warn_if_interrupted) {
  make_dirs(dir);
  const std::string marker = in_dir(dir, kPrepareIncompleteFile);
  std::error_code ec;
  if (warn_if_interrupted && fs::exists(marker, ec)) {
    spdlog::warn("{}: an earlier `ptrain prepare` into this folder did not finish ({} is there); starting it "
                 "over", dir, marker);
  }
  const int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError(fmt::format("cannot create {}: {}", marker, std::strerror(errno)));
  static constexpr std::string_view kText =
      "A `ptrain prepare` is writing this folder: while this file exists, its contents are incomplete.\n";
  const bool ok = ::write(fd, kText.data(), kText.size()) == static_cast<ssize_t>(kText.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) throw IoError(fmt::format("cannot write {}: {}", marker, std::strerror(errno)));
  fsync_path(dir);
  fs::remove(in_dir(dir, "manifest.json"), ec);
  if (ec) throw IoError(fmt::format("cannot remove {}/manifest.json: {}", dir, ec.message()));
  fsync_path(dir);
}

// Removes the shards (and partial shards) an earlier prepare left in DIR.
void clear_shards(const std::string& dir) {
  static const std::regex kOurs(R"((train|val)-[0-9]{5,}\.tok(\.partial)?)");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (std::regex_match(e.path().filename().string(), kOurs)) fs::remove(e.path(), ec);
  }
}

// Writes tokenizer.json and the manifest (last, atomically), then removes the marker.
void end_output(const std::string& dir, const std::string& tokenizer_json, const std::string& manifest) {
  write_file_atomic(in_dir(dir, "tokenizer.json"), tokenizer_json);
  write_file_atomic(in_dir(dir, "manifest.json"), manifest);
  std::error_code ec;
  fs::remove(in_dir(dir, kPrepareIncompleteFile), ec);
  if (ec) throw IoError(fmt::format("cannot remove {}/{}: {}", dir, kPrepareIncompleteFile, ec.message()));
  fsync_path(dir);
}

// ---- pass 1 ----

struct Counted {
  std::vector<FileCount> files;
  std::vector<SkippedPath> skipped;
  int64_t n = 0, n_val = 0;
  int64_t text_bytes = 0;  // document bytes
  int64_t file_bytes = 0;  // decompressed file bytes
  int64_t empty_documents = 0, binary = 0;
};

Counted count_inputs(const PrepareOptions& opt, const DocumentRules& rules, Clock::time_point t_start) {
  Counted c;
  const std::vector<std::string> paths = list_input_files(opt.inputs, opt.output_dir, c.skipped);
  for (const std::string& path : paths) {
    CountSink sink;
    const FileReadResult r = read_documents(path, rules, sink);
    if (r.binary) {
      spdlog::warn("skipping {}: binary (a NUL byte in its first 8 KiB)", path);
      c.skipped.push_back({path, "binary (a NUL byte in its first 8 KiB)"});
      ++c.binary;
      continue;
    }
    c.files.push_back({path, c.n, r.documents, r.bytes});
    c.n += r.documents;
    c.text_bytes += sink.bytes;
    c.file_bytes += r.bytes;
    c.empty_documents += r.empty_documents;
  }
  if (c.n == 0) {
    throw DataError(fmt::format("no documents found in {} ({} files read, {} skipped{})",
                                fmt::join(opt.inputs, ", "), c.files.size(), c.skipped.size(),
                                c.empty_documents > 0
                                    ? fmt::format(", {} empty documents dropped", c.empty_documents)
                                    : ""));
  }
  c.n_val = static_cast<int64_t>(std::llround(static_cast<double>(c.n) * opt.val_fraction));
  if (opt.val_fraction > 0 && c.n_val == 0) {
    throw DataError(fmt::format("val split is empty: {} documents with --val-fraction {}; raise "
                                "--val-fraction or add data", c.n, opt.val_fraction));
  }
  if (c.n_val >= c.n) {
    throw DataError(fmt::format("train split is empty: {} documents with --val-fraction {}; lower "
                                "--val-fraction or add data", c.n, opt.val_fraction));
  }
  spdlog::info("counted {} documents ({} bytes) in {} files in {:.2f} s{}", c.n, c.text_bytes, c.files.size(),
               seconds_since(t_start), c.binary > 0 ? fmt::format("; {} binary files skipped", c.binary) : "");
  return c;
}

using ojson = nlohmann::ordered_json;

// Pass 1's result as stored in a rank's part (so that the final step needs no input).
ojson counted_json(const Counted& c) {
  ojson files = ojson::array();
  for (const auto& f : c.files) files.push_back(ojson::array({f.path, f.first_document, f.documents, f.bytes}));
  ojson skipped = ojson::array();
  for (const auto& s : c.skipped) skipped.push_back(ojson::array({s.path, s.reason}));
  return {{"n", c.n}, {"n_val", c.n_val}, {"text_bytes", c.text_bytes}, {"file_bytes", c.file_bytes},
          {"empty_documents", c.empty_documents}, {"binary", c.binary}, {"files", std::move(files)},
          {"skipped", std::move(skipped)}};
}

Counted counted_from_json(const nlohmann::json& j) {
  Counted c;
  c.n = j.at("n");
  c.n_val = j.at("n_val");
  c.text_bytes = j.at("text_bytes");
  c.file_bytes = j.at("file_bytes");
  c.empty_documents = j.at("empty_documents");
  c.binary = j.at("binary");
  for (const auto& f : j.at("files")) {
    c.files.push_back({f.at(0).get<std::string>(), f.at(1).get<int64_t>(), f.at(2).get<int64_t>(),
                       f.at(3).get<int64_t>()});
  }
  for (const auto& s : j.at("skipped")) c.skipped.push_back({s.at(0).get<std::string>(), s.at(1).get<std::string>()});
  return c;
}

// ---- pass 2 ----

std::unique_ptr<Tokenizer> make_tokenizer(const PrepareOptions& opt, const DocumentRules& rules,
                                          const Counted& c, const SplitRule& rule) {
  if (opt.tokenizer == TokenizerKind::kByte) return make_byte_tokenizer();
  if (opt.tokenizer == TokenizerKind::kGpt2) return load_gpt2_tokenizer(opt.gpt2_vocab, opt.gpt2_merges);
  const auto t = Clock::now();
  BpeWordCounter counter;
  int64_t taken = 0;
  for (const FileCount& f : c.files) {
    SampleSink sink(rule, f.first_document, opt.bpe_sample_bytes - taken, counter);
    read_documents(f.path, rules, sink);
    taken += sink.taken;
    if (taken >= opt.bpe_sample_bytes) break;
  }
  auto tok = counter.train(opt.vocab_size.value_or(kDefaultBpeVocabSize));
  spdlog::info("trained bpe on {} bytes of train documents: vocabulary {} in {:.2f} s", taken, tok->vocab_size(),
               seconds_since(t));
  return tok;
}

// ---- pass 3 ----

int encode_threads(const PrepareOptions& opt) {
  return opt.threads > 0 ? opt.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

// Encodes `files` (in order) into the two writers; returns per-split files, documents and bytes.
void encode_files(const PrepareOptions& opt, const DocumentRules& rules, const Tokenizer& tok,
                  const SplitRule& rule, std::span<const FileCount> files, ShardedWriter* writers[2],
                  SplitStats stats[2]) {
  const int threads = encode_threads(opt);
  int64_t file_bytes = 0;
  for (const FileCount& f : files) file_bytes += f.bytes;
  const auto t_enc = Clock::now();
  EncodePool pool(tok, threads);
  EncodeSink sink(rule, pool, 2 * static_cast<size_t>(threads), writers);
  auto t_log = Clock::now();
  int64_t read = 0;
  for (const FileCount& f : files) {
    sink.start_file(f.first_document);
    read_documents(f.path, rules, sink);
    read += f.bytes;
    if (seconds_since(t_log) > 10) {
      spdlog::info("encoded {:.1f} of {:.1f} MB ({:.1f} MB/s)", read / 1e6, file_bytes / 1e6,
                   read / 1e6 / seconds_since(t_enc));
      t_log = Clock::now();
    }
  }
  sink.finish();
  stats[0] = sink.stats[0];
  stats[1] = sink.stats[1];
}

// ---- the manifest ----

// The options that shape the output (not --threads, --output or --dry-run): recorded in each
// rank's part so that the final step refuses parts made with other options.
ojson output_options_json(const PrepareOptions& opt) {
  static const char* const kKinds[] = {"byte", "bpe", "gpt2"};
  return {{"inputs", opt.inputs},
          {"tokenizer", kKinds[static_cast<int>(opt.tokenizer)]},
          {"vocab_size", opt.vocab_size ? ojson(*opt.vocab_size) : ojson(nullptr)},
          {"vocab", opt.gpt2_vocab},
          {"merges", opt.gpt2_merges},
          {"val_fraction", opt.val_fraction},
          {"doc_separator", opt.doc_separator ? ojson(*opt.doc_separator) : ojson(nullptr)},
          {"text_key", opt.text_key},
          {"seed", opt.seed},
          {"shard_size", opt.shard_size},
          {"bpe_sample_bytes", opt.bpe_sample_bytes}};
}

// No timestamps, timings or rank counts: the same inputs and seed give a byte-identical manifest.
std::string manifest_text(const PrepareOptions& opt, const Tokenizer& tok, const std::string& hash,
                          const Counted& c, const SplitStats stats[2], ShardedWriter* writers[2]) {
  auto split_json = [](const SplitStats& s, const ShardedWriter& w) {
    ojson shards = ojson::array();
    for (const auto& sh : w.shards()) {
      shards.push_back({{"file", sh.file}, {"tokens", sh.tokens}, {"bytes", sh.bytes},
                        {"crc32c", fmt::format("{:08x}", sh.crc)}});
    }
    return ojson{{"files", s.files},
                 {"documents", s.documents},
                 {"bytes", s.bytes},
                 {"tokens", s.tokens},
                 {"bytes_per_token", s.tokens > 0 ? static_cast<double>(s.bytes) / static_cast<double>(s.tokens) : 0.0},
                 {"shards", std::move(shards)}};
  };
  ojson m;
  m["format"] = "ptrain-manifest";
  m["version"] = 2;
  m["ptrain_version"] = PTRAIN_VERSION;
  m["inputs"] = opt.inputs;
  m["doc_separator"] = opt.doc_separator ? ojson(*opt.doc_separator) : ojson(nullptr);
  m["text_key"] = opt.text_key;
  m["seed"] = opt.seed;
  m["val_fraction"] = opt.val_fraction;
  m["split_rule"] = "feistel-v1: document k of n (reading order, non-empty documents from 0) is in val when "
                    "P(k) < round(n * val_fraction), P the seeded permutation of docs/formats.md";
  m["shard_size"] = opt.shard_size;
  m["tokenizer"] = {{"file", "tokenizer.json"}, {"kind", tok.kind()}, {"vocab_size", tok.vocab_size()},
                    {"eot", tok.eot()}, {"hash", hash}};
  if (opt.tokenizer == TokenizerKind::kBpe) {
    m["tokenizer"]["requested_vocab_size"] = opt.vocab_size.value_or(kDefaultBpeVocabSize);
    m["tokenizer"]["sample_bytes"] = opt.bpe_sample_bytes;
  }
  m["files_read"] = static_cast<int64_t>(c.files.size());
  m["files_skipped"] = static_cast<int64_t>(c.skipped.size());
  m["binary_files_skipped"] = c.binary;
  m["documents"] = c.n;
  m["empty_documents_dropped"] = c.empty_documents;
  m["splits"] = {{"train", split_json(stats[0], *writers[0])}, {"val", split_json(stats[1], *writers[1])}};
  ojson fj = ojson::array();
  for (const auto& f : c.files) fj.push_back({{"path", f.path}, {"documents", f.documents}, {"bytes", f.bytes}});
  m["files"] = std::move(fj);
  ojson sj = ojson::array();
  for (const auto& s : c.skipped) sj.push_back({{"path", s.path}, {"reason", s.reason}});
  m["skipped"] = std::move(sj);
  // Paths come from the file system and may hold invalid UTF-8: replace rather than fail.
  return m.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// ---- distributed prepare: parts ----
//
// Rank r of P encodes a contiguous run of the input files (balanced by bytes) into
// DIR/parts/part-R-of-P.{train,val}.tok and describes it in part-R-of-P.json (written last); the
// final step (rank 0 under a launcher, or `--finalize`) cuts the concatenated parts into shards
// exactly as one process would have written them.

constexpr const char* kPartsDir = "parts";

std::string part_name(int rank, int ranks) { return fmt::format("part-{:05d}-of-{:05d}", rank, ranks); }

// The files of rank `rank`: file i goes to the rank whose 1/P of the input bytes holds its first
// byte, so each rank's files follow the previous rank's.
std::span<const FileCount> rank_files(const Counted& c, int rank, int ranks) {
  size_t first = c.files.size(), last = c.files.size();
  __int128 at = 0;
  for (size_t i = 0; i < c.files.size(); ++i) {
    const int owner = std::min(ranks - 1, static_cast<int>(at * ranks / std::max<int64_t>(1, c.file_bytes)));
    if (owner == rank && first == c.files.size()) first = i;
    if (owner > rank) {
      last = i;
      break;
    }
    at += c.files[i].bytes;
  }
  if (first > last) first = last;
  return std::span<const FileCount>(c.files).subspan(first, last - first);
}

ojson stats_json(const SplitStats& s) {
  return {{"files", s.files}, {"documents", s.documents}, {"bytes", s.bytes}, {"tokens", s.tokens}};
}

SplitStats stats_from_json(const nlohmann::json& j) {
  SplitStats s;
  s.files = j.at("files");
  s.documents = j.at("documents");
  s.bytes = j.at("bytes");
  s.tokens = j.at("tokens");
  return s;
}

// Appends the tokens of part file `path` to `w`, checking its header (vocabulary, tokenizer,
// token count) and checksum on the way.
void append_part(const std::string& path, int64_t tokens, int64_t vocab, const std::string& hash, ShardedWriter& w) {
  const TokenFileHeader h = read_token_file_header(path);
  if (h.vocab_size != vocab || h.tokens != tokens || hash.compare(0, h.tokenizer_hash.size(), h.tokenizer_hash) != 0) {
    throw DataError(fmt::format("{}: holds {} tokens of vocabulary {} (tokenizer {}), its part description says {} "
                                "of {} (tokenizer {}): the parts folder mixes two runs; run the ranks again",
                                path, h.tokens, h.vocab_size, h.tokenizer_hash, tokens, vocab, hash));
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  const int64_t width = TokenFileWriter::token_width(vocab);
  constexpr int64_t kChunk = int64_t{1} << 20;  // tokens per read
  std::vector<unsigned char> raw(static_cast<size_t>(kChunk * width));
  std::vector<uint32_t> ids(static_cast<size_t>(kChunk));
  uint32_t crc = 0;
  try {
    for (int64_t done = 0; done < tokens;) {
      const int64_t k = std::min(kChunk, tokens - done);
      const auto want = static_cast<size_t>(k * width);
      size_t got = 0;
      while (got < want) {
        const ssize_t r = ::pread(fd, raw.data() + got, want - got, kTokenHeaderBytes + done * width + static_cast<int64_t>(got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) throw IoError(fmt::format("cannot read {}: {}", path, r < 0 ? std::strerror(errno) : "truncated"));
        got += static_cast<size_t>(r);
      }
      crc = crc32c(raw.data(), want, crc);
      for (int64_t i = 0; i < k; ++i) {  // little-endian on disk
        uint32_t v = 0;
        for (int64_t b = width - 1; b >= 0; --b) v = (v << 8) | raw[static_cast<size_t>(i * width + b)];
        ids[static_cast<size_t>(i)] = v;
      }
      w.append(std::span<const uint32_t>(ids.data(), static_cast<size_t>(k)));
      done += k;
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  if (crc != h.tokens_crc32c) {
    throw DataError(fmt::format("{}: checksum mismatch (tokens CRC32C {:08x}, header says {:08x}): the part is "
                                "damaged; run its rank again", path, crc, h.tokens_crc32c));
  }
}
}  // namespace

TokenizerKind parse_tokenizer_kind(const std::string& s) {
  if (s == "byte") return TokenizerKind::kByte;
  if (s == "bpe") return TokenizerKind::kBpe;
  if (s == "gpt2") return TokenizerKind::kGpt2;
  throw UsageError(fmt::format("--tokenizer must be \"byte\", \"bpe\" or \"gpt2\", got \"{}\"", s));
}

void validate(const PrepareOptions& opt) {
  if (opt.inputs.empty()) throw UsageError("prepare: no --input given (a file or folder of text or JSONL)");
  if (opt.output_dir.empty()) throw UsageError("prepare: no --output folder given");
  if (!std::isfinite(opt.val_fraction) || opt.val_fraction < 0.0 || opt.val_fraction >= 1.0) {
    // A DataError like the empty-split errors it generalises: no split can be made from it.
    throw DataError(fmt::format("--val-fraction must be in [0, 1), got {}", opt.val_fraction));
  }
  if (opt.vocab_size) {
    const int64_t v = *opt.vocab_size;
    if (opt.tokenizer == TokenizerKind::kByte && v != 257) {
      throw UsageError(fmt::format("--vocab-size {} does not fit --tokenizer byte, whose vocabulary is "
                                   "always 257 (256 bytes + <|endoftext|>); drop it or use --tokenizer bpe", v));
    }
    if (opt.tokenizer == TokenizerKind::kBpe && (v < 257 || v > INT32_MAX)) {
      throw UsageError(fmt::format("--vocab-size must be at least 257 for --tokenizer bpe (256 bytes + "
                                   "<|endoftext|> + merges), got {}", v));
    }
  }
  if (opt.doc_separator && opt.doc_separator->find('\n') != std::string::npos) {
    throw UsageError("--doc-separator is one line and cannot contain a newline");
  }
  if (opt.text_key.empty()) throw UsageError("--text-key must name a JSONL field, got \"\"");
  if (opt.threads < 0 || opt.threads > 1024) {
    throw UsageError(fmt::format("--threads must be in [0, 1024] (0 = every core), got {}", opt.threads));
  }
  if (opt.shard_size < kMinShardSize) {
    throw UsageError(fmt::format("--shard-size must be at least {} bytes, got {}", kMinShardSize, opt.shard_size));
  }
  if (opt.bpe_sample_bytes < 1) {
    throw UsageError(fmt::format("--bpe-sample-bytes must be at least 1, got {}", opt.bpe_sample_bytes));
  }
  const bool gpt2 = opt.tokenizer == TokenizerKind::kGpt2;
  if (gpt2 && (opt.gpt2_vocab.empty() || opt.gpt2_merges.empty())) {
    throw UsageError("--tokenizer gpt2 needs --vocab vocab.json and --merges merges.txt (GPT-2's files)");
  }
  if (!gpt2 && (!opt.gpt2_vocab.empty() || !opt.gpt2_merges.empty())) {
    throw UsageError("--vocab and --merges are for --tokenizer gpt2 only");
  }
  if (gpt2 && opt.vocab_size) {
    throw UsageError("--vocab-size does not fit --tokenizer gpt2, whose vocabulary comes from --vocab");
  }
  if (opt.ranks < 1 || opt.ranks > 99999 || opt.rank < 0 || opt.rank >= opt.ranks) {
    throw UsageError(fmt::format("--rank {} of --ranks {}: ranks must be in [1, 99999] and the rank in [0, ranks)",
                                 opt.rank, opt.ranks));
  }
  if (opt.finalize && (opt.ranks > 1 || opt.dry_run)) {
    throw UsageError(opt.dry_run ? "--finalize writes the output: it does not go with --dry-run"
                                 : "--finalize assembles the parts of every rank: run it once, as one process "
                                   "(no --rank/--ranks, not under mpirun/srun or in the job array)");
  }
}


Corpus read_corpus(const std::vector<std::string>& inputs, const std::optional<std::string>& doc_separator,
                   const std::string& exclude_dir, const std::string& text_key) {
  Corpus corpus;
  const DocumentRules rules{doc_separator, text_key};
  for (const std::string& path : list_input_files(inputs, exclude_dir, corpus.skipped)) {
    CollectSink sink(corpus);
    const size_t before = corpus.documents.size();
    const FileReadResult r = read_documents(path, rules, sink);
    if (r.binary) {
      spdlog::warn("skipping {}: binary (a NUL byte in its first 8 KiB)", path);
      corpus.skipped.push_back({path, "binary (a NUL byte in its first 8 KiB)"});
      continue;
    }
    corpus.files.push_back({path, static_cast<int64_t>(corpus.documents.size() - before), r.bytes});
    corpus.empty_documents += r.empty_documents;
  }
  return corpus;
}

SplitRule::SplitRule(int64_t n, int64_t n_val, uint64_t seed) : n_(n), n_val_(n_val) {
  PTRAIN_ENFORCE(n >= 0 && n_val >= 0 && n_val <= n, "split of {} documents with {} in val", n, n_val);
  int bits = 2;
  while (bits < 62 && (int64_t{1} << bits) < n) bits += 2;
  half_bits_ = bits / 2;
  uint64_t s = mix64(seed ^ 0x5350'4C49'5452'554Cull);  // "SPLITRUL"
  for (auto& k : keys_) k = mix64(s += 0x9E3779B97F4A7C15ull);
}

int64_t SplitRule::permute(int64_t k) const {
  PTRAIN_ENFORCE(k >= 0 && k < n_, "document {} outside [0, {})", k, n_);
  const uint64_t mask = (uint64_t{1} << half_bits_) - 1;
  auto x = static_cast<uint64_t>(k);
  do {  // cycle walking: a bijection on [0, 4^h) restricted to [0, n) stays a bijection
    uint64_t l = x >> half_bits_, r = x & mask;
    for (uint64_t key : keys_) {
      const uint64_t f = mix64(r ^ key) & mask;
      const uint64_t nl = r;
      r = l ^ f;
      l = nl;
    }
    x = (l << half_bits_) | r;
  } while (x >= static_cast<uint64_t>(n_));
  return static_cast<int64_t>(x);
}

namespace {

void log_written(const PrepareOptions& opt, const PrepareResult& r, int threads) {
  const SplitStats* s = &r.train;
  spdlog::info("wrote {}: train {} docs, {} tokens in {} shard(s) ({:.3f} bytes/token); val {} docs, {} tokens in "
               "{} shard(s); {} tokenizer, V = {}; encoded {:.1f} MB in {:.2f} s{}; {:.2f} s in all",
               opt.output_dir, s->documents, s->tokens, s->shards,
               s->tokens ? static_cast<double>(s->bytes) / static_cast<double>(s->tokens) : 0.0, r.val.documents,
               r.val.tokens, r.val.shards, r.tokenizer_kind, r.vocab_size, (r.train.bytes + r.val.bytes) / 1e6,
               r.encode_seconds, threads > 0 ? fmt::format(" on {} thread(s)", threads) : "", r.seconds);
}

PrepareResult result_of(const Counted& c, const Tokenizer& tok, const std::string& hash) {
  PrepareResult r;
  r.tokenizer_kind = tok.kind();
  r.vocab_size = tok.vocab_size();
  r.tokenizer_hash = hash;
  r.files_read = static_cast<int64_t>(c.files.size());
  r.files_skipped = static_cast<int64_t>(c.skipped.size());
  r.binary_skipped = c.binary;
  return r;
}

// The final step of a distributed prepare: DIR/parts/part-*-of-P.* (every rank's) → the shards,
// tokenizer.json and manifest one process would have written; then the parts are removed.
PrepareResult finalize_parts(const PrepareOptions& opt, Clock::time_point t_start) {
  const std::string parts = in_dir(opt.output_dir, kPartsDir);
  std::error_code ec;
  if (!fs::is_directory(parts, ec)) {
    throw DataError(fmt::format("--finalize: {} does not exist: no rank of a distributed prepare has written its "
                                "part into {} (run the same `ptrain prepare` under mpirun/srun or as a job array "
                                "first)", parts, opt.output_dir));
  }
  static const std::regex kPart(R"(part-([0-9]{5})-of-([0-9]{5})\.json)");
  std::set<int> sizes;
  for (const auto& e : fs::directory_iterator(parts)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, kPart)) sizes.insert(std::stoi(m[2].str()));
  }
  if (sizes.empty()) {
    throw DataError(fmt::format("--finalize: {} holds no finished part (part-RRRRR-of-PPPPP.json): no rank has "
                                "finished yet", parts));
  }
  if (sizes.size() > 1) {
    throw DataError(fmt::format("--finalize: {} holds parts of runs over {} ranks: remove the folder and run the "
                                "ranks again", parts, fmt::join(sizes, " and ")));
  }
  const int ranks = *sizes.begin();
  const nlohmann::json want_options = nlohmann::json::parse(output_options_json(opt).dump());
  std::vector<nlohmann::json> descs;
  for (int r = 0; r < ranks; ++r) {
    const std::string base = in_dir(parts, part_name(r, ranks));
    if (fs::exists(base + ".failed", ec)) {
      throw DataError(fmt::format("--finalize: rank {} of {} failed: {}", r, ranks, read_file(base + ".failed")));
    }
    if (!fs::exists(base + ".json", ec)) {
      throw DataError(fmt::format("--finalize: the part of rank {} of {} is missing ({}.json): that rank has not "
                                  "finished or was killed; run it again (SLURM_ARRAY_TASK_ID={}, or --rank {} "
                                  "--ranks {})", r, ranks, base, r, r, ranks));
    }
    nlohmann::json d = nlohmann::json::parse(read_file(base + ".json"));
    const nlohmann::json& got = d.at("options");
    for (const auto& [key, value] : want_options.items()) {
      if (!got.contains(key) || got[key] != value) {
        throw DataError(fmt::format("--finalize: {}.json was made with {} = {}, this command has {}: finalize with "
                                    "the options the ranks ran with", base, key,
                                    got.contains(key) ? got[key].dump() : "(none)", value.dump()));
      }
    }
    if (r > 0 && (d.at("tokenizer_hash") != descs[0].at("tokenizer_hash") ||
                  d.at("count_hash") != descs[0].at("count_hash"))) {
      throw DataError(fmt::format("--finalize: rank {} of {} saw other inputs or trained another tokenizer than rank "
                                  "0 (an input changed while the ranks ran?): run them again", r, ranks));
    }
    descs.push_back(std::move(d));
  }
  const Counted c = counted_from_json(descs[0].at("count"));
  const std::string tok_file = in_dir(parts, "tokenizer.json");
  const std::string tok_json = read_file(tok_file);
  const std::unique_ptr<Tokenizer> tok = tokenizer_from_json(tok_json, tok_file);
  const std::string hash = tokenizer_hash(*tok);
  if (hash != descs[0].at("tokenizer_hash").get<std::string>()) {
    throw DataError(fmt::format("--finalize: {} has hash {}, the parts were encoded with {}: run the ranks again",
                                tok_file, hash, descs[0].at("tokenizer_hash").get<std::string>()));
  }

  begin_output(opt.output_dir, false);
  clear_shards(opt.output_dir);
  const auto t_copy = Clock::now();
  ShardedWriter train_w(opt.output_dir, "train", tok->vocab_size(), hash, opt.shard_size);
  ShardedWriter val_w(opt.output_dir, "val", tok->vocab_size(), hash, opt.shard_size);
  ShardedWriter* writers[2] = {&train_w, &val_w};
  SplitStats stats[2];
  const char* const names[2] = {"train", "val"};
  for (int s = 0; s < 2; ++s) {
    for (int r = 0; r < ranks; ++r) {
      const SplitStats p = stats_from_json(descs[r].at("splits").at(names[s]));
      append_part(in_dir(parts, part_name(r, ranks) + "." + names[s] + ".tok"), p.tokens, tok->vocab_size(), hash,
                  *writers[s]);
      stats[s].files += p.files;
      stats[s].documents += p.documents;
      stats[s].bytes += p.bytes;
    }
    writers[s]->finish();
    stats[s].tokens = writers[s]->tokens();
    stats[s].shards = static_cast<int64_t>(writers[s]->shards().size());
  }
  if (stats[0].documents + stats[1].documents != c.n || stats[1].documents != c.n_val) {
    throw DataError(fmt::format("--finalize: the {} parts hold {} + {} documents, the inputs {} ({} val): a part "
                                "is missing or stale; run the ranks again", ranks, stats[0].documents,
                                stats[1].documents, c.n, c.n_val));
  }
  PrepareResult result = result_of(c, *tok, hash);
  result.train = stats[0];
  result.val = stats[1];
  result.manifest_json = manifest_text(opt, *tok, hash, c, stats, writers);
  end_output(opt.output_dir, tok_json, result.manifest_json);
  fs::remove_all(parts, ec);
  result.encode_seconds = seconds_since(t_copy);
  result.seconds = seconds_since(t_start);
  spdlog::info("assembled the parts of {} ranks in {:.2f} s", ranks, result.encode_seconds);
  log_written(opt, result, 0);
  return result;
}

// Rank 0 under a launcher: waits for every other rank's part (or its .failed note).
void wait_for_parts(const PrepareOptions& opt, double own_seconds) {
  const std::string parts = in_dir(opt.output_dir, kPartsDir);
  // Ranks have equal shares: a rank slower than twice rank 0 (plus ten minutes) is lost.
  const double limit = std::max(600.0, 2 * own_seconds);
  const auto t = Clock::now();
  auto t_log = t;
  for (;;) {
    std::vector<int> missing;
    std::error_code ec;
    for (int r = 1; r < opt.ranks; ++r) {
      const std::string base = in_dir(parts, part_name(r, opt.ranks));
      if (fs::exists(base + ".failed", ec)) {
        throw DataError(fmt::format("rank {} of {} failed: {}", r, opt.ranks, read_file(base + ".failed")));
      }
      if (!fs::exists(base + ".json", ec)) missing.push_back(r);
    }
    if (missing.empty()) return;
    if (seconds_since(t) > limit) {
      throw IoError(fmt::format("gave up after {:.0f} s waiting for the parts of ranks {} of {} in {}; once they are "
                                "there, the same `ptrain prepare` with --finalize assembles them", seconds_since(t),
                                fmt::join(missing, ", "), opt.ranks, parts));
    }
    if (seconds_since(t_log) > 30) {
      spdlog::info("waiting for the parts of ranks {} of {}", fmt::join(missing, ", "), opt.ranks);
      t_log = Clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// One rank's share: its files into DIR/parts/part-R-of-P.*; rank 0 under a launcher then waits
// and assembles. A part already complete for these options, inputs and tokenizer is kept (a
// job array task that is run again after its part was written does no work).
PrepareResult prepare_part(const PrepareOptions& opt, const DocumentRules& rules, const Counted& c,
                           const SplitRule& rule, const Tokenizer& tok, const std::string& hash,
                           Clock::time_point t_start) {
  const std::string parts = in_dir(opt.output_dir, kPartsDir);
  const std::string base = in_dir(parts, part_name(opt.rank, opt.ranks));
  const std::span<const FileCount> mine = rank_files(c, opt.rank, opt.ranks);
  const std::string count_hash = sha256_hex(counted_json(c).dump());
  PrepareResult result = result_of(c, tok, hash);
  try {
    begin_output(opt.output_dir, false);
    make_dirs(parts);
    std::error_code ec;
    fs::remove(base + ".failed", ec);
    bool kept = false;
    if (fs::exists(base + ".json", ec)) {
      const auto d = nlohmann::json::parse(read_file(base + ".json"), nullptr, false);
      kept = !d.is_discarded() && d.contains("options") &&
             d["options"] == nlohmann::json::parse(output_options_json(opt).dump()) &&
             d.value("tokenizer_hash", "") == hash && d.value("count_hash", "") == count_hash;
      if (kept) {
        spdlog::info("{}.json: this rank's part is already complete for these options and inputs; kept", base);
        result.train = stats_from_json(d.at("splits").at("train"));
        result.val = stats_from_json(d.at("splits").at("val"));
      }
    }
    if (!kept) {
      fs::remove(base + ".json", ec);
      write_file_atomic(in_dir(parts, "tokenizer.json"), tok.to_json());  // the same bytes from every rank
      spdlog::info("rank {} of {}: {} of {} files", opt.rank, opt.ranks, mine.size(), c.files.size());
      const auto t_enc = Clock::now();
      ShardedWriter train_w(parts, part_name(opt.rank, opt.ranks) + ".train", tok.vocab_size(), hash, opt.shard_size,
                            true);
      ShardedWriter val_w(parts, part_name(opt.rank, opt.ranks) + ".val", tok.vocab_size(), hash, opt.shard_size,
                          true);
      ShardedWriter* writers[2] = {&train_w, &val_w};
      SplitStats stats[2];
      encode_files(opt, rules, tok, rule, mine, writers, stats);
      train_w.finish();
      val_w.finish();
      stats[0].tokens = train_w.tokens();
      stats[1].tokens = val_w.tokens();
      result.encode_seconds = seconds_since(t_enc);
      result.train = stats[0];
      result.val = stats[1];
      ojson d{{"format", "ptrain-prepare-part"},
              {"rank", opt.rank},
              {"ranks", opt.ranks},
              {"options", output_options_json(opt)},
              {"tokenizer_hash", hash},
              {"count_hash", count_hash},
              {"files", static_cast<int64_t>(mine.size())},
              {"splits", {{"train", stats_json(stats[0])}, {"val", stats_json(stats[1])}}}};
      if (opt.rank == 0) d["count"] = counted_json(c);
      write_file_atomic(base + ".json", d.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
      spdlog::info("rank {} of {}: part written ({} + {} tokens) in {:.2f} s", opt.rank, opt.ranks, stats[0].tokens,
                   stats[1].tokens, result.encode_seconds);
    }
    if (opt.rank == 0 && opt.wait_for_parts) {
      wait_for_parts(opt, seconds_since(t_start));
      return finalize_parts(opt, t_start);
    }
  } catch (const std::exception& e) {
    // Tell rank 0 (or --finalize) why, rather than let it wait for a part that never comes.
    try {
      make_dirs(parts);
      write_file_atomic(base + ".failed", e.what());
    } catch (...) {
    }
    throw;
  }
  if (opt.rank != 0 || !opt.wait_for_parts) {
    spdlog::info("rank {} of {} done; once every rank's part is in {}, the same `ptrain prepare` with --finalize "
                 "writes the shards and manifest", opt.rank, opt.ranks, parts);
  }
  result.seconds = seconds_since(t_start);
  return result;
}

}  // namespace

PrepareResult prepare_corpus(const PrepareOptions& opt) {
  validate(opt);
  // Batches are MiB-sized buffers freed by another thread than the one that filled them. glibc's
  // default raises its mmap threshold after such frees and then keeps them in per-thread arenas
  // that do not shrink: a fixed threshold returns them to the system, so what prepare holds is
  // what is in flight (measured: 9 MiB kept instead of 64 MiB per thread).
  ::mallopt(M_MMAP_THRESHOLD, 1 << 20);
  const auto t_start = Clock::now();
  if (opt.finalize) return finalize_parts(opt, t_start);
  const DocumentRules rules{opt.doc_separator, opt.text_key};

  // Pass 1: count (every rank counts every file: the split of a document depends on its index).
  const Counted c = count_inputs(opt, rules, t_start);
  const SplitRule rule(c.n, c.n_val, opt.seed);
  if (opt.dry_run) {
    PrepareResult result;
    result.files_read = static_cast<int64_t>(c.files.size());
    result.files_skipped = static_cast<int64_t>(c.skipped.size());
    result.binary_skipped = c.binary;
    result.train.documents = c.n - c.n_val;
    result.val.documents = c.n_val;
    result.train.bytes = c.text_bytes;  // both splits together: per-split bytes need a read per document
    result.seconds = seconds_since(t_start);
    return result;
  }
  if (c.n_val == 0) spdlog::warn("--val-fraction 0: the val split will hold no tokens (nothing to evaluate on)");

  // Pass 2: the tokenizer (deterministic: every rank trains the same one).
  const std::unique_ptr<Tokenizer> tok = make_tokenizer(opt, rules, c, rule);
  const std::string hash = tokenizer_hash(*tok);
  if (opt.ranks > 1) return prepare_part(opt, rules, c, rule, *tok, hash, t_start);

  // Pass 3: encode and write.
  begin_output(opt.output_dir, true);
  clear_shards(opt.output_dir);
  std::error_code ec;
  fs::remove_all(in_dir(opt.output_dir, kPartsDir), ec);  // a distributed run's leftovers
  const auto t_enc = Clock::now();
  ShardedWriter train_w(opt.output_dir, "train", tok->vocab_size(), hash, opt.shard_size);
  ShardedWriter val_w(opt.output_dir, "val", tok->vocab_size(), hash, opt.shard_size);
  ShardedWriter* writers[2] = {&train_w, &val_w};
  SplitStats stats[2];
  encode_files(opt, rules, *tok, rule, c.files, writers, stats);
  train_w.finish();
  val_w.finish();
  for (int s = 0; s < 2; ++s) {
    stats[s].tokens = writers[s]->tokens();
    stats[s].shards = static_cast<int64_t>(writers[s]->shards().size());
  }
  PrepareResult result = result_of(c, *tok, hash);
  result.encode_seconds = seconds_since(t_enc);
  PTRAIN_ENFORCE(stats[0].documents + stats[1].documents == c.n && stats[1].documents == c.n_val,
                 "encoded {} + {} documents, counted {} ({} val): did an input change during prepare?",
                 stats[0].documents, stats[1].documents, c.n, c.n_val);
  result.train = stats[0];
  result.val = stats[1];
  result.manifest_json = manifest_text(opt, *tok, hash, c, stats, writers);
  end_output(opt.output_dir, tok->to_json(), result.manifest_json);
  result.seconds = seconds_since(t_start);
  log_written(opt, result, encode_threads(opt));
  return result;
}

}  // namespace ptrain
