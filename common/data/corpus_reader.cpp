// Streaming corpus reading (corpus_reader.hpp): the input walk, plain/gzip/zstd byte sources and
// the document splitter. Nothing here holds a whole file: bytes come in 1 MiB reads, lines and
// documents are cut from a rolling buffer.
#include "common/data/corpus_reader.hpp"

#include "common/error.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <unordered_map>

namespace ptrain {
namespace fs = std::filesystem;
namespace {

constexpr size_t kBinaryProbeBytes = 8192;
constexpr size_t kReadBytes = size_t{1} << 20;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

bool is_blank(std::string_view s) { return std::all_of(s.begin(), s.end(), is_space); }

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


// ---- byte sources ----

class Fd {
 public:
  explicit Fd(const std::string& path) : path_(path), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw IoError(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
  }
  ~Fd() { ::close(fd_); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  size_t read(char* buf, size_t cap) {
    for (;;) {
      const ssize_t n = ::read(fd_, buf, cap);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno != EINTR) throw IoError(fmt::format("cannot read {}: {}", path_, std::strerror(errno)));
    }
  }
  int get() const { return fd_; }

 private:
  std::string path_;
  int fd_;
};

class PlainSource final : public ByteSource {
 public:
  explicit PlainSource(const std::string& path) : fd_(path) {}
  size_t read(char* buf, size_t cap) override { return fd_.read(buf, cap); }

 private:
  Fd fd_;
};

class GzipSource final : public ByteSource {
 public:
  explicit GzipSource(const std::string& path) : path_(path) {
    gz_ = ::gzopen(path.c_str(), "rb");
    if (gz_ == nullptr) throw IoError(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
    ::gzbuffer(gz_, 1 << 18);
  }
  ~GzipSource() override { ::gzclose(gz_); }
  size_t read(char* buf, size_t cap) override {
    const int n = ::gzread(gz_, buf, static_cast<unsigned>(std::min<size_t>(cap, 1u << 30)));
    int code = Z_OK;
    const char* msg = ::gzerror(gz_, &code);
    // A truncated stream ends with 0 bytes and Z_BUF_ERROR ("unexpected end of file").
    if (n < 0 || (n == 0 && code != Z_OK)) {
      throw IoError(fmt::format("cannot decompress {} (gzip): {}", path_, msg ? msg : "error"));
    }
    return static_cast<size_t>(n);
  }

 private:
  std::string path_;
  gzFile gz_ = nullptr;
};

class ZstdSource final : public ByteSource {
 public:
  explicit ZstdSource(const std::string& path) : path_(path), fd_(path), in_buf_(ZSTD_DStreamInSize()) {
    ds_ = ZSTD_createDStream();
    if (ds_ == nullptr) throw IoError(fmt::format("cannot decompress {} (zstd): out of memory", path));
  }
  ~ZstdSource() override { ZSTD_freeDStream(ds_); }
  size_t read(char* buf, size_t cap) override {
    ZSTD_outBuffer out{buf, cap, 0};
    while (out.pos == 0) {
      if (in_.pos == in_.size) {
        const size_t n = fd_.read(in_buf_.data(), in_buf_.size());
        if (n == 0) {
          if (!frame_done_) throw IoError(fmt::format("cannot decompress {} (zstd): truncated frame", path_));
          return 0;
        }
        in_ = ZSTD_inBuffer{in_buf_.data(), n, 0};
      }
      const size_t r = ZSTD_decompressStream(ds_, &out, &in_);
      if (ZSTD_isError(r)) {
        throw IoError(fmt::format("cannot decompress {} (zstd): {}", path_, ZSTD_getErrorName(r)));
      }
      frame_done_ = r == 0;
    }
    return out.pos;
  }

 private:
  std::string path_;
  Fd fd_;
  std::vector<char> in_buf_;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  ZSTD_DStream* ds_ = nullptr;
  bool frame_done_ = true;
};

// ---- the document splitter ----

// Rolls a document through a buffer, handing full pieces to the sink (see DocumentSink).
class DocBuffer {
 public:
  DocBuffer(DocumentSink& sink, FileReadResult& r) : sink_(sink), r_(r) {}

  void append(std::string_view s) {
    buf_.append(s);
    if (buf_.size() >= kPieceBytes) flush_safe();
  }
  void end() {
    if (!started_ && is_blank(buf_)) {
      ++r_.empty_documents;
    } else {
      if (!buf_.empty()) sink_.piece(buf_);
      sink_.end_document();
      ++r_.documents;
    }
    buf_.clear();
    started_ = false;
  }

 private:
  void flush_safe() {
    // The last newline followed by a non-whitespace byte.
    size_t cut = 0;
    for (size_t p = buf_.size() - 1; p > 0; --p) {
      if (buf_[p - 1] == '\n' && !is_space(buf_[p])) {
        cut = p;
        break;
      }
    }
    if (cut == 0) {
      if (buf_.size() < kForcedCutBytes) return;
      cut = buf_.size();
      if (!warned_) {
        spdlog::warn("a document has {} MiB without a line break before a word: cut there, which may change "
                     "the tokens at the cut", kForcedCutBytes >> 20);
        warned_ = true;
      }
    }
    sink_.piece(std::string_view(buf_).substr(0, cut));
    started_ = true;
    buf_.erase(0, cut);
  }

  DocumentSink& sink_;
  FileReadResult& r_;
  std::string buf_;
  bool started_ = false;  // a piece went out: the document is not blank
  bool warned_ = false;
};

}  // namespace

std::unique_ptr<ByteSource> ByteSource::open(const std::string& path) {
  const std::string kind = compression_of(path);
  if (kind == "gzip") return std::make_unique<GzipSource>(path);
  if (kind == "zstd") return std::make_unique<ZstdSource>(path);
  return std::make_unique<PlainSource>(path);
}

std::string compression_of(const std::string& path) {
  Fd fd(path);
  unsigned char m[4] = {};
  size_t have = 0;
  while (have < 4) {
    const size_t n = fd.read(reinterpret_cast<char*>(m) + have, 4 - have);
    if (n == 0) break;
    have += n;
  }
  if (have >= 2 && m[0] == 0x1f && m[1] == 0x8b) return "gzip";
  if (have >= 4 && m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd) return "zstd";
  return "plain";
}

bool is_jsonl_path(const std::string& path) {
  fs::path p(path);
  if (p.extension() == ".gz" || p.extension() == ".zst" || p.extension() == ".zstd") p = p.stem();
  return p.extension() == ".jsonl";
}

FileReadResult read_documents(const std::string& path, const DocumentRules& rules, DocumentSink& sink) {
  FileReadResult r;
  auto src = ByteSource::open(path);
  const bool jsonl = is_jsonl_path(path);
  std::string pending;  // bytes read and not yet consumed (a partial line at most, once split)
  std::vector<char> chunk(kReadBytes);
  bool eof = false;
  auto fill = [&] {
    const size_t n = src->read(chunk.data(), chunk.size());
    if (n == 0) {
      eof = true;
    } else {
      pending.append(chunk.data(), n);
      r.bytes += static_cast<int64_t>(n);
    }
  };
  while (!eof && pending.size() < kBinaryProbeBytes) fill();
  if (!jsonl && std::memchr(pending.data(), '\0', std::min(pending.size(), kBinaryProbeBytes)) != nullptr) {
    r.binary = true;
    return r;
  }

  DocBuffer doc(sink, r);
  if (!jsonl && !rules.doc_separator) {  // the whole file is one document
    for (;;) {
      doc.append(pending);
      pending.clear();
      if (eof || sink.done()) break;
      fill();
    }
    doc.end();
    return r;
  }

  int64_t line_no = 0;
  // Calls f(line) for each complete line in `pending` (with its "\n"), then keeps the rest.
  auto for_lines = [&](bool last, auto&& f) {
    size_t begin = 0;
    while (begin < pending.size()) {
      const size_t nl = pending.find('\n', begin);
      if (nl == std::string::npos && !last) break;
      const size_t end = nl == std::string::npos ? pending.size() : nl + 1;
      f(std::string_view(pending).substr(begin, end - begin));
      begin = end;
      if (sink.done()) break;
    }
    pending.erase(0, begin);
  };
  auto strip = [](std::string_view line) {
    if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return line;
  };
  auto on_line = [&](std::string_view line) {
    ++line_no;
    if (!jsonl) {
      if (strip(line) == *rules.doc_separator) {
        doc.end();
      } else {
        doc.append(line);
      }
      return;
    }
    const std::string_view body = strip(line);
    if (is_blank(body)) return;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(body);
    } catch (const nlohmann::json::exception& e) {
      throw DataError(fmt::format("{}:{}: not valid JSON: {}", path, line_no, json_message(e)));
    }
    if (!j.is_object() || !j.contains(rules.text_key) || !j[rules.text_key].is_string()) {
      throw DataError(fmt::format("{}:{}: expected an object with a string \"{}\", got {}", path, line_no,
                                  rules.text_key, shorten(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))));
    }
    doc.append(j[rules.text_key].get_ref<const std::string&>());
    doc.end();
  };
  for (;;) {
    for_lines(eof, on_line);
    if (eof || sink.done()) break;
    fill();
  }
  if (!jsonl) doc.end();  // the text after the last separator
  return r;
}

std::vector<std::string> list_input_files(const std::vector<std::string>& inputs, const std::string& exclude_dir,
                                          std::vector<SkippedPath>& skipped) {
  Walker walker(exclude_dir, skipped);
  for (const auto& in : inputs) walker.add_input(in);
  const std::vector<Candidate> found = walker.take();
  // The same file reached twice (a symlink beside its target, or named twice) is read once: as its
  // first plain occurrence if it has one, else as its first occurrence.
  std::unordered_map<std::string, size_t> reader;
  for (size_t k = 0; k < found.size(); ++k) {
    auto [it, fresh] = reader.emplace(found[k].canonical, k);
    if (!fresh && found[it->second].via_symlink && !found[k].via_symlink) it->second = k;
  }
  std::vector<std::string> files;
  int64_t duplicates = 0;
  for (size_t k = 0; k < found.size(); ++k) {
    const size_t chosen = reader.at(found[k].canonical);
    if (chosen != k) {
      skipped.push_back({found[k].path, fmt::format("{} a file already read ({})",
                                                    found[k].via_symlink ? "symlink to" : "repeats",
                                                    found[chosen].path)});
      spdlog::debug("skipping {}: {}", found[k].path, skipped.back().reason);
      ++duplicates;
      continue;
    }
    files.push_back(found[k].path);
  }
  if (duplicates > 0) {
    spdlog::info("skipped {} symlink(s) or repeated path(s) to files already read (listed in the manifest)",
                 duplicates);
  }
  return files;
}

}  // namespace ptrain
