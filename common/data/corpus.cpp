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
#include "ptrain/build_config.hpp"

#include <fmt/format.h>
#include <malloc.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <regex>
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
// are exactly the stream a single file would hold.
class ShardedWriter {
 public:
  ShardedWriter(std::string dir, std::string name, int64_t vocab, std::string hash, int64_t shard_size)
      : dir_(std::move(dir)), name_(std::move(name)), vocab_(vocab), hash_(std::move(hash)),
        capacity_((shard_size - 64) / TokenFileWriter::token_width(vocab)) {}

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
    const std::string file = fmt::format("{}-{:05d}.tok", name_, shards_.size());
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

// Removes what an earlier prepare into `dir` left: its manifest first (the folder no longer
// reads as complete), then its shards and any partial files.
void clear_previous_output(const std::string& dir) {
  std::error_code ec;
  fs::remove(fs::path(dir) / "manifest.json", ec);
  if (ec) throw IoError(fmt::format("cannot remove {}/manifest.json: {}", dir, ec.message()));
  fsync_path(dir);
  static const std::regex kOurs(R"((train|val)-[0-9]{5,}\.tok(\.partial)?)");
  for (const auto& e : fs::directory_iterator(dir)) {
    if (std::regex_match(e.path().filename().string(), kOurs)) fs::remove(e.path(), ec);
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

PrepareResult prepare_corpus(const PrepareOptions& opt) {
  validate(opt);
  // Batches are MiB-sized buffers freed by another thread than the one that filled them. glibc's
  // default raises its mmap threshold after such frees and then keeps them in per-thread arenas
  // that do not shrink: a fixed threshold returns them to the system, so what prepare holds is
  // what is in flight (measured: 9 MiB kept instead of 64 MiB per thread).
  ::mallopt(M_MMAP_THRESHOLD, 1 << 20);
  const auto t_start = Clock::now();
  const DocumentRules rules{opt.doc_separator, opt.text_key};

  // Pass 1: count.
  std::vector<SkippedPath> skipped;
  const std::vector<std::string> paths = list_input_files(opt.inputs, opt.output_dir, skipped);
  std::vector<FileCount> files;
  int64_t n = 0, total_bytes = 0, file_bytes = 0, empty_documents = 0, binary = 0;
  for (const std::string& path : paths) {
    CountSink sink;
    const FileReadResult r = read_documents(path, rules, sink);
    if (r.binary) {
      spdlog::warn("skipping {}: binary (a NUL byte in its first 8 KiB)", path);
      skipped.push_back({path, "binary (a NUL byte in its first 8 KiB)"});
      ++binary;
      continue;
    }
    files.push_back({path, n, r.documents, r.bytes});
    n += r.documents;
    total_bytes += sink.bytes;
    file_bytes += r.bytes;
    empty_documents += r.empty_documents;
  }
  if (n == 0) {
    throw DataError(fmt::format("no documents found in {} ({} files read, {} skipped{})",
                                fmt::join(opt.inputs, ", "), files.size(), skipped.size(),
                                empty_documents > 0 ? fmt::format(", {} empty documents dropped", empty_documents)
                                                    : ""));
  }
  const int64_t n_val = static_cast<int64_t>(std::llround(static_cast<double>(n) * opt.val_fraction));
  if (opt.val_fraction > 0 && n_val == 0) {
    throw DataError(fmt::format("val split is empty: {} documents with --val-fraction {}; raise "
                                "--val-fraction or add data", n, opt.val_fraction));
  }
  if (n_val >= n) {
    throw DataError(fmt::format("train split is empty: {} documents with --val-fraction {}; lower "
                                "--val-fraction or add data", n, opt.val_fraction));
  }
  spdlog::info("counted {} documents ({} bytes) in {} files in {:.2f} s{}", n, total_bytes, files.size(),
               seconds_since(t_start), binary > 0 ? fmt::format("; {} binary files skipped", binary) : "");
  const SplitRule rule(n, n_val, opt.seed);

  PrepareResult result;
  result.files_read = static_cast<int64_t>(files.size());
  result.files_skipped = static_cast<int64_t>(skipped.size());
  result.binary_skipped = binary;
  if (opt.dry_run) {
    result.train.documents = n - n_val;
    result.val.documents = n_val;
    result.train.bytes = total_bytes;  // both splits together: per-split bytes need a read per document
    result.seconds = seconds_since(t_start);
    return result;
  }
  if (n_val == 0) spdlog::warn("--val-fraction 0: the val split will hold no tokens (nothing to evaluate on)");

  // Pass 2: the tokenizer.
  std::unique_ptr<Tokenizer> tok;
  if (opt.tokenizer == TokenizerKind::kByte) {
    tok = make_byte_tokenizer();
  } else if (opt.tokenizer == TokenizerKind::kGpt2) {
    tok = load_gpt2_tokenizer(opt.gpt2_vocab, opt.gpt2_merges);
  } else {
    const auto t = Clock::now();
    BpeWordCounter counter;
    int64_t taken = 0;
    for (const FileCount& f : files) {
      SampleSink sink(rule, f.first_document, opt.bpe_sample_bytes - taken, counter);
      read_documents(f.path, rules, sink);
      taken += sink.taken;
      if (taken >= opt.bpe_sample_bytes) break;
    }
    tok = counter.train(opt.vocab_size.value_or(kDefaultBpeVocabSize));
    spdlog::info("trained bpe on {} bytes of train documents: vocabulary {} in {:.2f} s", taken,
                 tok->vocab_size(), seconds_since(t));
  }
  const std::string hash = tokenizer_hash(*tok);

  // Pass 3: encode and write.
  make_dirs(opt.output_dir);
  clear_previous_output(opt.output_dir);
  const auto t_enc = Clock::now();
  const int threads = opt.threads > 0 ? opt.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  ShardedWriter train_w(opt.output_dir, "train", tok->vocab_size(), hash, opt.shard_size);
  ShardedWriter val_w(opt.output_dir, "val", tok->vocab_size(), hash, opt.shard_size);
  ShardedWriter* writers[2] = {&train_w, &val_w};
  SplitStats stats[2];
  {
    EncodePool pool(*tok, threads);
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
  train_w.finish();
  val_w.finish();
  for (int s = 0; s < 2; ++s) {
    stats[s].tokens = writers[s]->tokens();
    stats[s].shards = static_cast<int64_t>(writers[s]->shards().size());
  }
  result.encode_seconds = seconds_since(t_enc);
  PTRAIN_ENFORCE(stats[0].documents + stats[1].documents == n && stats[1].documents == n_val,
                 "encoded {} + {} documents, counted {} ({} val): did an input change during prepare?",
                 stats[0].documents, stats[1].documents, n, n_val);
  result.tokenizer_kind = tok->kind();
  result.vocab_size = tok->vocab_size();
  result.tokenizer_hash = hash;
  result.train = stats[0];
  result.val = stats[1];

  // No timestamps or timings: the same inputs and seed give a byte-identical manifest.
  using ojson = nlohmann::ordered_json;
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
  m["tokenizer"] = {{"file", "tokenizer.json"}, {"kind", tok->kind()}, {"vocab_size", tok->vocab_size()},
                    {"eot", tok->eot()}, {"hash", hash}};
  if (opt.tokenizer == TokenizerKind::kBpe) {
    m["tokenizer"]["requested_vocab_size"] = opt.vocab_size.value_or(kDefaultBpeVocabSize);
    m["tokenizer"]["sample_bytes"] = opt.bpe_sample_bytes;
  }
  m["files_read"] = result.files_read;
  m["files_skipped"] = result.files_skipped;
  m["binary_files_skipped"] = binary;
  m["documents"] = n;
  m["empty_documents_dropped"] = empty_documents;
  m["splits"] = {{"train", split_json(stats[0], train_w)}, {"val", split_json(stats[1], val_w)}};
  ojson fj = ojson::array();
  for (const auto& f : files) fj.push_back({{"path", f.path}, {"documents", f.documents}, {"bytes", f.bytes}});
  m["files"] = std::move(fj);
  ojson sj = ojson::array();
  for (const auto& s : skipped) sj.push_back({{"path", s.path}, {"reason", s.reason}});
  m["skipped"] = std::move(sj);
  // Paths come from the file system and may hold invalid UTF-8: replace rather than fail.
  result.manifest_json = m.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  write_file_atomic((fs::path(opt.output_dir) / "tokenizer.json").string(), tok->to_json());
  write_file_atomic((fs::path(opt.output_dir) / "manifest.json").string(), result.manifest_json);  // last
  result.seconds = seconds_since(t_start);

  spdlog::info("wrote {}: train {} docs, {} tokens in {} shard(s) ({:.3f} bytes/token); val {} docs, {} tokens in "
               "{} shard(s); {} tokenizer, V = {}; encoded {:.1f} MB in {:.2f} s on {} thread(s); {:.2f} s in all",
               opt.output_dir, stats[0].documents, stats[0].tokens, stats[0].shards,
               stats[0].tokens ? static_cast<double>(stats[0].bytes) / static_cast<double>(stats[0].tokens) : 0.0,
               stats[1].documents, stats[1].tokens, stats[1].shards, tok->kind(), tok->vocab_size(),
               total_bytes / 1e6, result.encode_seconds, threads, result.seconds);
  return result;
}

}  // namespace ptrain
