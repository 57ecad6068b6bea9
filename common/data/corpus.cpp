// Corpus preparation: inputs -> documents -> seeded train/val split -> tokenizer -> token files and
// manifest. Every choice that affects the output is a function of the inputs, the options and the
// seed (sorted folder walks, a stable split, a deterministic BPE trainer), so two runs agree byte
// for byte.
#include "common/data/corpus.hpp"

#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"
#include "ptrain/build_config.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <unordered_map>

namespace ptrain {
namespace fs = std::filesystem;
namespace {

constexpr size_t kBinaryProbeBytes = 8192;

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
  });
}

std::string shorten(std::string s, size_t max = 80) {
  if (s.size() > max) s = s.substr(0, max) + "...";
  return s;
}

std::string json_message(const nlohmann::json::exception& e) {
  std::string m = e.what();
  if (!m.empty() && m[0] == '[') {
    if (auto p = m.find("] "); p != std::string::npos) m.erase(0, p + 2);
  }
  // We parse one JSONL line at a time and report FILE:LINE ourselves; "line 1" would mislead.
  if (auto p = m.find("at line 1, column "); p != std::string::npos) m.replace(p, 18, "at column ");
  return m;
}

// A file found while walking the inputs, before duplicates are resolved.
struct Candidate {
  std::string path;
  std::string canonical;
  bool via_symlink;
};

class Walker {
 public:
  Walker(const std::string& exclude_dir, std::vector<SkippedPath>& skipped) : skipped_(skipped) {
    std::error_code ec;
    if (!exclude_dir.empty() && fs::is_directory(exclude_dir, ec)) exclude_ = fs::canonical(exclude_dir, ec).string();
  }

  void add_input(const std::string& path) {
    std::error_code ec;
    const fs::file_status lst = fs::symlink_status(path, ec);
    if (ec && ec != std::errc::no_such_file_or_directory) {
      throw IoError(fmt::format("cannot access input {}: {}", path, ec.message()));
    }
    if (!fs::exists(lst)) throw IoError(fmt::format("input not found: {}", path));
    const fs::file_status st = fs::status(path, ec);
    if (ec == std::errc::too_many_symbolic_link_levels) {
      throw IoError(fmt::format("input {} is a symlink loop ({})", path, ec.message()));
    }
    if (ec && ec != std::errc::no_such_file_or_directory) {
      throw IoError(fmt::format("cannot access input {}: {}", path, ec.message()));
    }
    if (!fs::exists(st)) throw IoError(fmt::format("input {} is a broken symlink", path));
    if (fs::is_directory(st)) {
      walk(path);
    } else if (fs::is_regular_file(st)) {
      add_file(path, fs::is_symlink(lst));
    } else {
      throw IoError(fmt::format("input {} is neither a regular file nor a folder", path));
    }
  }

  std::vector<Candidate> take() { return std::move(files_); }

 private:
  void walk(const std::string& dir) {
    std::error_code ec;
    const std::string canon = fs::canonical(dir, ec).string();
    if (ec) throw IoError(fmt::format("cannot read folder {}: {}", dir, ec.message()));
    if (canon == exclude_) {
      skip(dir, "the output folder");
      return;
    }
    if (!dirs_seen_.insert(canon).second) {
      skip(dir, "a folder already read (symlink loop or duplicate)");
      return;
    }
    std::vector<fs::path> entries;
    fs::directory_iterator it(dir, ec);
    if (ec) throw IoError(fmt::format("cannot read folder {}: {}", dir, ec.message()));
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      if (ec) break;
      entries.push_back(it->path());
    }
    if (ec) throw IoError(fmt::format("cannot read folder {}: {}", dir, ec.message()));
    // Byte order of names, not the file system's: the same corpus gives the same document order.
    std::sort(entries.begin(), entries.end(),
              [](const fs::path& a, const fs::path& b) { return a.filename().string() < b.filename().string(); });
    for (const fs::path& p : entries) {
      const std::string ps = p.string();
      const fs::file_status lst = fs::symlink_status(p, ec);
      if (ec) throw IoError(fmt::format("cannot access {}: {}", ps, ec.message()));
      const fs::file_status st = fs::is_symlink(lst) ? fs::status(p, ec) : lst;
      if (fs::is_symlink(lst) && (ec || !fs::exists(st))) {
        skip(ps, ec == std::errc::too_many_symbolic_link_levels ? "symlink loop" : "broken symlink");
      } else if (fs::is_directory(st)) {
        walk(ps);
      } else if (fs::is_regular_file(st)) {
        add_file(ps, fs::is_symlink(lst));
      } else {
        skip(ps, "not a regular file");
      }
    }
  }

  void add_file(const std::string& path, bool via_symlink) {
    std::error_code ec;
    std::string canon = fs::canonical(path, ec).string();
    if (ec) throw IoError(fmt::format("cannot access {}: {}", path, ec.message()));
    files_.push_back({path, std::move(canon), via_symlink});
  }

  void skip(const std::string& path, const std::string& reason) {
    spdlog::warn("skipping {}: {}", path, reason);
    skipped_.push_back({path, reason});
  }

  std::vector<SkippedPath>& skipped_;
  std::string exclude_;
  std::set<std::string> dirs_seen_;
  std::vector<Candidate> files_;
};

class CorpusBuilder {
 public:
  CorpusBuilder(Corpus& c, const std::optional<std::string>& sep) : c_(c), sep_(sep) {}

  void read(const std::string& path) {
    std::string bytes = read_file(path);  // IoError naming the path when unreadable
    const bool jsonl = fs::path(path).extension() == ".jsonl";
    if (!jsonl && std::memchr(bytes.data(), '\0', std::min(bytes.size(), kBinaryProbeBytes)) != nullptr) {
      spdlog::warn("skipping {}: binary (a NUL byte in its first 8 KiB)", path);
      c_.skipped.push_back({path, "binary (a NUL byte in its first 8 KiB)"});
      return;
    }
    file_ = static_cast<int32_t>(c_.files.size());
    c_.files.push_back({path, 0, static_cast<int64_t>(bytes.size())});
    const std::string& text = c_.storage.emplace_back(std::move(bytes));
    if (jsonl) {
      read_jsonl(path, text);
    } else {
      read_text(text);
    }
  }

 private:
  void add(std::string_view doc) {
    if (is_blank(doc)) {
      ++c_.empty_documents;
      return;
    }
    c_.documents.push_back({doc, file_});
    ++c_.files[file_].documents;
  }

  // Calls f(line, begin, end) for each line; `line` has its "\n" (and a trailing "\r") removed.
  template <typename F>
  static void for_each_line(std::string_view s, F&& f) {
    size_t begin = 0;
    while (begin < s.size()) {
      size_t nl = s.find('\n', begin);
      const size_t end = nl == std::string_view::npos ? s.size() : nl + 1;
      std::string_view line = s.substr(begin, (nl == std::string_view::npos ? s.size() : nl) - begin);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      f(line, begin, end);
      begin = end;
    }
  }

  void read_text(std::string_view text) {
    if (!sep_) {
      add(text);
      return;
    }
    size_t doc_begin = 0;
    for_each_line(text, [&](std::string_view line, size_t begin, size_t end) {
      if (line == *sep_) {
        add(text.substr(doc_begin, begin - doc_begin));
        doc_begin = end;
      }
    });
    add(text.substr(doc_begin));
  }

  void read_jsonl(const std::string& path, std::string_view text) {
    int64_t line_no = 0;
    for_each_line(text, [&](std::string_view line, size_t, size_t) {
      ++line_no;
      if (is_blank(line)) return;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw DataError(fmt::format("{}:{}: not valid JSON: {}", path, line_no, json_message(e)));
      }
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
        throw DataError(fmt::format("{}:{}: expected an object with a string \"text\", got {}", path, line_no,
                                    shorten(j.dump())));
      }
      add(c_.storage.emplace_back(j["text"].get<std::string>()));
    });
  }

  Corpus& c_;
  const std::optional<std::string>& sep_;
  int32_t file_ = -1;
};

// splitmix64 (Steele, Lea, Flood 2014): tiny, fully specified, the same everywhere.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound), by rejection so that no value is favoured.
  uint64_t below(uint64_t bound) {
    const uint64_t threshold = (0 - bound) % bound;
    for (;;) {
      const uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }

 private:
  uint64_t s_;
};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Writes the outputs under temporary names, then renames them all into place: a failure before the
// renames leaves the folder untouched.
class Staging {
 public:
  explicit Staging(std::string dir) : dir_(std::move(dir)) {}
  ~Staging() {
    for (const auto& [tmp, final_path] : files_) {
      std::error_code ec;
      fs::remove(tmp, ec);
    }
  }
  std::string stage(const std::string& name) {
    std::string tmp = (fs::path(dir_) / fmt::format(".{}.staging.{}", name, ::getpid())).string();
    files_.emplace_back(tmp, (fs::path(dir_) / name).string());
    return tmp;
  }
  void commit() {
    for (const auto& [tmp, final_path] : files_) {
      std::error_code ec;
      fs::rename(tmp, final_path, ec);
      if (ec) throw IoError(fmt::format("cannot rename {} to {}: {}", tmp, final_path, ec.message()));
    }
    files_.clear();
    fsync_path(dir_);
  }

 private:
  std::string dir_;
  std::vector<std::pair<std::string, std::string>> files_;
};

}  // namespace

TokenizerKind parse_tokenizer_kind(const std::string& s) {
  if (s == "byte") return TokenizerKind::kByte;
  if (s == "bpe") return TokenizerKind::kBpe;
  throw UsageError(fmt::format("--tokenizer must be \"byte\" or \"bpe\", got \"{}\"", s));
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
}

Corpus read_corpus(const std::vector<std::string>& inputs, const std::optional<std::string>& doc_separator,
                   const std::string& exclude_dir) {
  Corpus corpus;
  Walker walker(exclude_dir, corpus.skipped);
  for (const auto& in : inputs) walker.add_input(in);
  const std::vector<Candidate> found = walker.take();

  // The same file reached twice (a symlink beside its target, or named twice) is read once: as its
  // first plain occurrence if it has one, else as its first occurrence.
  std::unordered_map<std::string, size_t> reader;
  for (size_t k = 0; k < found.size(); ++k) {
    auto [it, fresh] = reader.emplace(found[k].canonical, k);
    if (!fresh && found[it->second].via_symlink && !found[k].via_symlink) it->second = k;
  }
  CorpusBuilder builder(corpus, doc_separator);
  int64_t duplicates = 0;
  for (size_t k = 0; k < found.size(); ++k) {
    const size_t chosen = reader.at(found[k].canonical);
    if (chosen != k) {
      corpus.skipped.push_back({found[k].path, fmt::format("{} a file already read ({})",
                                                           found[k].via_symlink ? "symlink to" : "repeats",
                                                           found[chosen].path)});
      spdlog::debug("skipping {}: {}", found[k].path, corpus.skipped.back().reason);
      ++duplicates;
      continue;
    }
    builder.read(found[k].path);
  }
  if (duplicates > 0) {
    spdlog::info("skipped {} symlink(s) or repeated path(s) to files already read (listed in the manifest)",
                 duplicates);
  }
  return corpus;
}

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  SplitMix64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(p[i], p[j]);
  }
  return p;
}

PrepareResult prepare_corpus(const PrepareOptions& opt) {
  validate(opt);
  const auto t_start = Clock::now();

  Corpus corpus = read_corpus(opt.inputs, opt.doc_separator, opt.output_dir);
  const auto n = static_cast<int64_t>(corpus.documents.size());
  if (n == 0) {
    throw DataError(fmt::format("no documents found in {} ({} files read, {} skipped{})",
                                fmt::join(opt.inputs, ", "), corpus.files.size(), corpus.skipped.size(),
                                corpus.empty_documents > 0
                                    ? fmt::format(", {} empty documents dropped", corpus.empty_documents) : ""));
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
  if (n_val == 0) spdlog::warn("--val-fraction 0: val.tok will hold no tokens (nothing to evaluate on)");
  int64_t total_bytes = 0;
  for (const auto& d : corpus.documents) total_bytes += static_cast<int64_t>(d.text.size());
  spdlog::info("read {} documents ({} bytes) from {} files in {:.2f} s", n, total_bytes, corpus.files.size(),
               seconds_since(t_start));

  // Whole documents go to val by a seeded shuffle; each split keeps reading order, so files stay
  // contiguous in the token stream (training permutes windows anyway).
  std::vector<char> is_val(static_cast<size_t>(n), 0);
  const std::vector<int64_t> perm = seeded_permutation(n, opt.seed);
  for (int64_t k = 0; k < n_val; ++k) is_val[perm[k]] = 1;
  std::vector<std::string_view> train_texts;
  train_texts.reserve(static_cast<size_t>(n - n_val));
  for (int64_t i = 0; i < n; ++i) {
    if (!is_val[i]) train_texts.push_back(corpus.documents[i].text);
  }

  std::unique_ptr<Tokenizer> tok;
  if (opt.tokenizer == TokenizerKind::kByte) {
    tok = make_byte_tokenizer();
  } else {
    const auto t = Clock::now();
    tok = train_bpe_tokenizer(train_texts, opt.vocab_size.value_or(kDefaultBpeVocabSize));
    spdlog::info("trained bpe: vocabulary {} in {:.2f} s", tok->vocab_size(), seconds_since(t));
  }

  const auto t_enc = Clock::now();
  std::vector<uint32_t> tokens[2];  // [0] train, [1] val
  SplitStats stats[2];
  std::vector<std::set<int32_t>> files_in(2);
  for (int64_t i = 0; i < n; ++i) {
    const Document& d = corpus.documents[i];
    const int s = is_val[i];
    for (int32_t id : tok->encode(d.text)) tokens[s].push_back(static_cast<uint32_t>(id));
    tokens[s].push_back(static_cast<uint32_t>(tok->eot()));
    ++stats[s].documents;
    stats[s].bytes += static_cast<int64_t>(d.text.size());
    files_in[s].insert(d.file);
  }
  for (int s = 0; s < 2; ++s) {
    stats[s].tokens = static_cast<int64_t>(tokens[s].size());
    stats[s].files = static_cast<int64_t>(files_in[s].size());
  }
  spdlog::info("encoded {} + {} tokens in {:.2f} s", stats[0].tokens, stats[1].tokens, seconds_since(t_enc));

  PrepareResult result;
  result.tokenizer_kind = tok->kind();
  result.vocab_size = tok->vocab_size();
  result.train = stats[0];
  result.val = stats[1];
  result.files_read = static_cast<int64_t>(corpus.files.size());
  result.files_skipped = static_cast<int64_t>(corpus.skipped.size());

  // No timestamps or timings: the same inputs and seed give a byte-identical manifest.
  using ojson = nlohmann::ordered_json;
  auto split_json = [](const SplitStats& s, const char* file) {
    return ojson{{"file", file},
                 {"files", s.files},
                 {"documents", s.documents},
                 {"bytes", s.bytes},
                 {"tokens", s.tokens},
                 {"bytes_per_token", s.tokens > 0 ? static_cast<double>(s.bytes) / static_cast<double>(s.tokens) : 0.0}};
  };
  ojson m;
  m["format"] = "ptrain-manifest";
  m["version"] = 1;
  m["ptrain_version"] = PTRAIN_VERSION;
  m["inputs"] = opt.inputs;
  m["doc_separator"] = opt.doc_separator ? ojson(*opt.doc_separator) : ojson(nullptr);
  m["seed"] = opt.seed;
  m["val_fraction"] = opt.val_fraction;
  m["tokenizer"] = {{"file", "tokenizer.json"}, {"kind", tok->kind()}, {"vocab_size", tok->vocab_size()},
                    {"eot", tok->eot()}};
  if (opt.tokenizer == TokenizerKind::kBpe) {
    m["tokenizer"]["requested_vocab_size"] = opt.vocab_size.value_or(kDefaultBpeVocabSize);
  }
  m["files_read"] = result.files_read;
  m["files_skipped"] = result.files_skipped;
  m["documents"] = n;
  m["empty_documents_dropped"] = corpus.empty_documents;
  m["splits"] = {{"train", split_json(stats[0], "train.tok")}, {"val", split_json(stats[1], "val.tok")}};
  ojson files = ojson::array();
  for (const auto& f : corpus.files) files.push_back({{"path", f.path}, {"documents", f.documents}, {"bytes", f.bytes}});
  m["files"] = std::move(files);
  ojson skipped = ojson::array();
  for (const auto& s : corpus.skipped) skipped.push_back({{"path", s.path}, {"reason", s.reason}});
  m["skipped"] = std::move(skipped);
  // Paths come from the file system and may hold invalid UTF-8: replace rather than fail.
  result.manifest_json = m.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";

  make_dirs(opt.output_dir);
  Staging staging(opt.output_dir);
  write_token_file(staging.stage("train.tok"), tok->vocab_size(), tokens[0]);
  write_token_file(staging.stage("val.tok"), tok->vocab_size(), tokens[1]);
  write_file_atomic(staging.stage("tokenizer.json"), tok->to_json());
  write_file_atomic(staging.stage("manifest.json"), result.manifest_json);
  staging.commit();

  spdlog::info("wrote {}/{{train,val}}.tok: train {} docs, {} tokens ({:.3f} bytes/token); val {} docs, {} "
               "tokens; {} tokenizer, V = {}; {:.2f} s in all",
               opt.output_dir, stats[0].documents, stats[0].tokens,
               stats[0].tokens ? static_cast<double>(stats[0].bytes) / static_cast<double>(stats[0].tokens) : 0.0,
               stats[1].documents, stats[1].tokens, tok->kind(), tok->vocab_size(), seconds_since(t_start));
  return result;
}

}  // namespace ptrain
