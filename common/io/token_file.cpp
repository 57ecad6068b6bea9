// Token files (.tok) and the sharded token data of a manifest. Layout (docs/formats.md, "Token file
// (.tok)"), all integers little-endian:
//   0  char[8]  magic "PTRTOKEN"
//   8  uint32   format version (2; version 1 files are still read)
//  12  uint32   dtype code: 1 = uint16 tokens, 2 = uint32 tokens
//  16  uint64   vocab size
//  24  uint64   token count
//  32  uint32   CRC32C of the token bytes (exactly as stored)
//  36  uint32   CRC32C of header bytes 0..35 then (version 2) 40..63
//  40  byte[16] version 2: tokenizer hash (first 16 bytes of the SHA-256 of the tokenizer's JSON;
//               all zero = unknown); version 1: reserved, zero
//  56  byte[8]  reserved, zero
//  64  tokens
// A single file is checked whole before anyone reads a token: a bad file fails at start-up, naming
// itself. A manifest's shards are checked by header at open and by content on first use, so a job
// over hundreds of GB does not read them all to start.
#include "common/io/token_file.hpp"

#include "common/error.hpp"
#include "common/util/fs.hpp"
#include "common/util/hash.hpp"

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <vector>

namespace ptrain {
namespace {

static_assert(std::endian::native == std::endian::little,
              "token files store little-endian tokens and are read in place");

constexpr char kMagic[8] = {'P', 'T', 'R', 'T', 'O', 'K', 'E', 'N'};
constexpr uint32_t kVersion = 2;
constexpr uint32_t kDtypeU16 = 1;
constexpr uint32_t kDtypeU32 = 2;
constexpr size_t kHeaderBytes = 64;
constexpr size_t kHeaderCrcSpan = 36;
constexpr size_t kHashAt = 40, kHashBytes = 16;

template <typename T>
T load_le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
void store_le(unsigned char* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

uint32_t header_crc(const unsigned char* h, uint32_t version) {
  uint32_t c = crc32c(h, kHeaderCrcSpan);
  if (version >= 2) c = crc32c(h + 40, kHeaderBytes - 40, c);
  return c;
}

std::string hash_hex(const unsigned char* p) {
  if (std::all_of(p, p + kHashBytes, [](unsigned char b) { return b == 0; })) return "";
  std::string s;
  for (size_t k = 0; k < kHashBytes; ++k) s += fmt::format("{:02x}", p[k]);
  return s;
}

// Parses and checks a 64-byte header; `file_bytes` is the file's size. Throws DataError via `bad`.
template <typename Bad>
TokenFileHeader parse_header(const unsigned char* h, size_t file_bytes, uint32_t* dtype, Bad&& bad) {
  if (std::memcmp(h, kMagic, sizeof kMagic) != 0) {
    throw bad("bad magic (not a ptrain token file; expected it to start with \"PTRTOKEN\")");
  }
  TokenFileHeader out;
  out.version = load_le<uint32_t>(h + 8);
  if (out.version != 1 && out.version != kVersion) {
    throw bad(fmt::format("format version {} is not supported (this ptrain reads versions 1 and {}); "
                          "re-run `ptrain prepare`", out.version, kVersion));
  }
  if (const uint32_t want = load_le<uint32_t>(h + 36), got = header_crc(h, out.version); want != got) {
    throw bad(fmt::format("header checksum mismatch (stored {:08x}, computed {:08x}): the header is corrupt",
                          want, got));
  }
  for (size_t k = out.version >= 2 ? kHashAt + kHashBytes : kHashAt; k < kHeaderBytes; ++k) {
    if (h[k] != 0) throw bad(fmt::format("reserved header byte {} is not zero", k));
  }
  if (out.version >= 2) out.tokenizer_hash = hash_hex(h + kHashAt);
  *dtype = load_le<uint32_t>(h + 12);
  if (*dtype != kDtypeU16 && *dtype != kDtypeU32) {
    throw bad(fmt::format("unknown dtype code {} (1 = uint16, 2 = uint32)", *dtype));
  }
  const auto vocab = load_le<uint64_t>(h + 16);
  const auto count = load_le<uint64_t>(h + 24);
  if (vocab == 0 || vocab > (uint64_t{1} << 31)) {
    throw bad(fmt::format("vocab size {} is out of range [1, 2^31]", vocab));
  }
  const size_t width = *dtype == kDtypeU16 ? 2 : 4;
  const size_t payload = file_bytes - kHeaderBytes;
  if (count > payload / width) {
    throw bad(fmt::format("truncated: the header promises {} tokens ({} bytes) but only {} bytes follow it",
                          count, count * width, payload));
  }
  if (count * width != payload) {
    throw bad(fmt::format("{} trailing bytes after the {} tokens the header promises", payload - count * width,
                          count));
  }
  out.vocab_size = static_cast<int64_t>(vocab);
  out.tokens = static_cast<int64_t>(count);
  out.tokens_crc32c = load_le<uint32_t>(h + 32);
  return out;
}

// One mapped .tok file.
struct Shard {
  std::string path;
  void* map = nullptr;
  size_t map_bytes = 0;
  const unsigned char* tokens = nullptr;
  uint32_t dtype = 0;
  TokenFileHeader header;
  int64_t begin = 0;  // index of its first token in the whole stream
  std::once_flag verified;

  ~Shard() {
    if (map != nullptr) ::munmap(map, map_bytes);
  }
  int32_t get(int64_t i) const {
    return dtype == kDtypeU16 ? load_le<uint16_t>(tokens + 2 * i)
                              : static_cast<int32_t>(load_le<uint32_t>(tokens + 4 * i));
  }
  DataError bad(const std::string& what) const { return DataError(fmt::format("token file {}: {}", path, what)); }

  // Maps the file and checks its header (not its tokens).
  void open() {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw IoError(fmt::format("cannot open token file {}: {}", path, std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      throw IoError(fmt::format("cannot stat token file {}: {}", path, std::strerror(err)));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw IoError(fmt::format("cannot open token file {}: not a regular file", path));
    }
    const auto file_bytes = static_cast<size_t>(st.st_size);
    if (file_bytes < kHeaderBytes) {
      ::close(fd);
      throw bad(fmt::format("truncated: {} bytes, shorter than the {}-byte header", file_bytes, kHeaderBytes));
    }
    void* m = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    const int map_err = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (m == MAP_FAILED) throw IoError(fmt::format("cannot map token file {}: {}", path, std::strerror(map_err)));
    map = m;
    map_bytes = file_bytes;
    const auto* h = static_cast<const unsigned char*>(map);
    header = parse_header(h, file_bytes, &dtype, [&](const std::string& w) { return bad(w); });
    tokens = h + kHeaderBytes;
  }

  // Checks the token bytes against the header's CRC32C and every token against the vocab size.
  void verify() const {
    const size_t payload = map_bytes - kHeaderBytes;
    if (const uint32_t got = crc32c(tokens, payload); got != header.tokens_crc32c) {
      throw bad(fmt::format("token checksum mismatch (stored {:08x}, computed {:08x}): the file is corrupt",
                            header.tokens_crc32c, got));
    }
    for (int64_t i = 0; i < header.tokens; ++i) {
      if (static_cast<uint32_t>(get(i)) >= static_cast<uint64_t>(header.vocab_size)) {
        throw bad(fmt::format("token {} at position {} is not below the vocab size {}",
                              static_cast<uint32_t>(get(i)), i, header.vocab_size));
      }
    }
  }
};

}  // namespace

struct TokenFile::Impl {
  std::string path;
  int64_t vocab = 0;
  int64_t count = 0;
  std::string tokenizer_hash;
  std::vector<std::unique_ptr<Shard>> shards;
  bool lazy = false;  // shards verified on first use (a manifest) rather than at open

  // The shard holding token i.
  const Shard& shard_of(int64_t i) const {
    auto it = std::upper_bound(shards.begin(), shards.end(), i,
                               [](int64_t v, const std::unique_ptr<Shard>& s) { return v < s->begin; });
    const Shard& s = **std::prev(it);
    if (lazy) std::call_once(const_cast<Shard&>(s).verified, [&] { s.verify(); });
    return s;
  }

  void open_manifest(const std::string& manifest, std::string_view split);
};

void TokenFile::Impl::open_manifest(const std::string& manifest, std::string_view split) {
  namespace fs = std::filesystem;
  auto bad = [&](const std::string& what) { return DataError(fmt::format("manifest {}: {}", manifest, what)); };
  std::error_code ec;
  const fs::path marker = fs::path(manifest).parent_path() / kPrepareIncompleteFile;
  if (fs::exists(marker, ec)) {
    throw DataError(fmt::format("{}: a `ptrain prepare` into this folder was interrupted or is still running "
                                "({} exists), so its shards and manifest are not a complete output; wait for "
                                "it, or run the same `ptrain prepare` again (it starts over)",
                                fs::path(manifest).parent_path().string(), marker.string()));
  }
  if (!fs::exists(manifest, ec)) {
    throw IoError(fmt::format("no manifest {}: the folder holds no complete `ptrain prepare` output (an "
                              "interrupted prepare leaves none); run or re-run `ptrain prepare`", manifest));
  }
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(read_file(manifest));
  } catch (const nlohmann::json::exception& e) {
    throw bad(fmt::format("not valid JSON: {}", e.what()));
  }
  if (!m.is_object() || m.value("format", "") != "ptrain-manifest") throw bad("\"format\" is not \"ptrain-manifest\"");
  const int version = m.value("version", 0);
  if (version != 2) {
    throw bad(fmt::format("manifest version {} lists no shards this ptrain can read (it reads version 2); "
                          "re-run `ptrain prepare`", version));
  }
  const auto& splits = m["splits"];
  if (!splits.is_object() || !splits.contains(split)) throw bad(fmt::format("no split \"{}\"", split));
  const auto& s = splits[std::string(split)];
  if (!s.contains("shards") || !s["shards"].is_array() || s["shards"].empty()) {
    throw bad(fmt::format("split \"{}\" lists no shards", split));
  }
  tokenizer_hash = m["tokenizer"].value("hash", "").substr(0, kTokenizerHashHexDigits);
  vocab = m["tokenizer"].value("vocab_size", int64_t{0});
  const fs::path dir = fs::path(manifest).parent_path();
  for (const auto& e : s["shards"]) {
    auto sh = std::make_unique<Shard>();
    sh->path = (dir / e.value("file", "")).string();
    sh->open();
    const int64_t want = e.value("tokens", int64_t{-1});
    if (sh->header.tokens != want) {
      throw bad(fmt::format("shard {} holds {} tokens, the manifest says {}: the folder mixes two prepare runs; "
                            "re-run `ptrain prepare`", sh->path, sh->header.tokens, want));
    }
    if (sh->header.vocab_size != vocab || sh->header.tokenizer_hash != tokenizer_hash) {
      throw bad(fmt::format("shard {} was written with vocab {} / tokenizer {}, the manifest says vocab {} / "
                            "tokenizer {}", sh->path, sh->header.vocab_size, sh->header.tokenizer_hash, vocab,
                            tokenizer_hash));
    }
    sh->begin = count;
    count += sh->header.tokens;
    shards.push_back(std::move(sh));
  }
  lazy = true;
}

TokenFile::TokenFile() : impl_(std::make_unique<Impl>()) {}
TokenFile::TokenFile(TokenFile&&) noexcept = default;
TokenFile& TokenFile::operator=(TokenFile&&) noexcept = default;
TokenFile::~TokenFile() = default;

TokenFile TokenFile::open(const std::string& path, std::string_view split) {
  namespace fs = std::filesystem;
  TokenFile tf;
  Impl& im = *tf.impl_;
  im.path = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    im.open_manifest((fs::path(path) / "manifest.json").string(), split);
  } else if (fs::path(path).extension() == ".json") {
    im.open_manifest(path, split);
  } else {
    auto sh = std::make_unique<Shard>();
    sh->path = path;
    sh->open();
    ::madvise(sh->map, sh->map_bytes, MADV_WILLNEED);
    sh->verify();
    im.vocab = sh->header.vocab_size;
    im.count = sh->header.tokens;
    im.tokenizer_hash = sh->header.tokenizer_hash;
    im.shards.push_back(std::move(sh));
  }
  return tf;
}

TokenFileHeader read_token_file_header(const std::string& path) {
  Shard s;
  s.path = path;
  s.open();
  return s.header;
}

const std::string& TokenFile::path() const { return impl_->path; }
int64_t TokenFile::vocab_size() const { return impl_->vocab; }
int64_t TokenFile::size() const { return impl_->count; }
int64_t TokenFile::shards() const { return static_cast<int64_t>(impl_->shards.size()); }
const std::string& TokenFile::tokenizer_hash() const { return impl_->tokenizer_hash; }

int32_t TokenFile::at(int64_t i) const {
  PTRAIN_ENFORCE(i >= 0 && i < impl_->count, "token index {} outside {} ({} tokens)", i, impl_->path,
                 impl_->count);
  const Shard& s = impl_->shard_of(i);
  return s.get(i - s.begin);
}

int64_t TokenFile::num_windows(int64_t T) const {
  PTRAIN_ENFORCE(T >= 1, "window length T = {} must be >= 1", T);
  return impl_->count < 1 ? 0 : (impl_->count - 1) / T;
}

void TokenFile::window(int64_t i, int64_t T, std::span<int32_t> out) const {
  PTRAIN_ENFORCE(i >= 0 && i < num_windows(T), "window {} outside {} ({} windows of T = {})", i,
                 impl_->path, num_windows(T), T);
  PTRAIN_ENFORCE(static_cast<int64_t>(out.size()) == T + 1, "window buffer holds {} tokens, needs T + 1 = {}",
                 out.size(), T + 1);
  int64_t pos = i * T;
  int64_t k = 0;
  while (k <= T) {  // one piece per shard the window touches
    const Shard& s = impl_->shard_of(pos);
    const int64_t local = pos - s.begin;
    const int64_t n = std::min(T + 1 - k, s.header.tokens - local);
    if (s.dtype == kDtypeU16) {
      for (int64_t j = 0; j < n; ++j) out[k + j] = load_le<uint16_t>(s.tokens + 2 * (local + j));
    } else {
      std::memcpy(out.data() + k, s.tokens + 4 * local, 4 * static_cast<size_t>(n));
    }
    k += n;
    pos += n;
  }
}

// ---- writing ----

TokenFileWriter::TokenFileWriter(std::string path, int64_t vocab_size, const std::string& tokenizer_hash)
    : path_(std::move(path)), partial_(path_ + ".partial"), vocab_(vocab_size) {
  if (vocab_size < 1 || vocab_size > (int64_t{1} << 31)) {
    throw DataError(fmt::format("cannot write token file {}: vocab size {} is out of range [1, 2^31]", path_,
                                vocab_size));
  }
  if (!tokenizer_hash.empty()) {
    PTRAIN_ENFORCE(tokenizer_hash.size() >= kTokenizerHashHexDigits, "tokenizer hash {} is too short",
                   tokenizer_hash);
    for (size_t k = 0; k < kHashBytes; ++k) {
      hash_[k] = static_cast<unsigned char>(std::stoi(tokenizer_hash.substr(2 * k, 2), nullptr, 16));
    }
  }
  fd_ = ::open(partial_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IoError(fmt::format("cannot create {}: {}", partial_, std::strerror(errno)));
  buf_.assign(kHeaderBytes, '\0');  // the header is written last, at commit
}

TokenFileWriter::~TokenFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(partial_.c_str());
  }
}

int64_t TokenFileWriter::bytes() const { return static_cast<int64_t>(kHeaderBytes) + count_ * token_width(vocab_); }

namespace {
void write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}
}  // namespace

void TokenFileWriter::append(std::span<const uint32_t> tokens) {
  const bool narrow = token_width(vocab_) == 2;
  const size_t at = buf_.size();
  const size_t width = narrow ? 2 : 4;
  buf_.resize(at + width * tokens.size());
  auto* p = reinterpret_cast<unsigned char*>(buf_.data() + at);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= static_cast<uint64_t>(vocab_)) {
      throw DataError(fmt::format("cannot write token file {}: token {} at position {} is not below the "
                                  "vocab size {}", path_, tokens[i], count_ + static_cast<int64_t>(i), vocab_));
    }
    if (narrow) {
      store_le<uint16_t>(p + 2 * i, static_cast<uint16_t>(tokens[i]));
    } else {
      store_le<uint32_t>(p + 4 * i, tokens[i]);
    }
  }
  crc_ = crc32c(p, width * tokens.size(), crc_);
  count_ += static_cast<int64_t>(tokens.size());
  if (buf_.size() >= (size_t{1} << 20)) {
    write_all(fd_, buf_.data(), buf_.size(), partial_);
    buf_.clear();
  }
}

void TokenFileWriter::commit() {
  PTRAIN_ENFORCE(fd_ >= 0, "token file {} committed twice", path_);
  write_all(fd_, buf_.data(), buf_.size(), partial_);
  buf_.clear();
  unsigned char h[kHeaderBytes] = {};
  std::memcpy(h, kMagic, sizeof kMagic);
  store_le<uint32_t>(h + 8, kVersion);
  store_le<uint32_t>(h + 12, token_width(vocab_) == 2 ? kDtypeU16 : kDtypeU32);
  store_le<uint64_t>(h + 16, static_cast<uint64_t>(vocab_));
  store_le<uint64_t>(h + 24, static_cast<uint64_t>(count_));
  store_le<uint32_t>(h + 32, crc_);
  std::memcpy(h + kHashAt, hash_, kHashBytes);
  store_le<uint32_t>(h + 36, header_crc(h, kVersion));
  if (::pwrite(fd_, h, kHeaderBytes, 0) != static_cast<ssize_t>(kHeaderBytes) || ::fsync(fd_) != 0) {
    throw IoError(fmt::format("cannot write {}: {}", partial_, std::strerror(errno)));
  }
  ::close(fd_);
  fd_ = -1;
  if (::rename(partial_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(partial_.c_str());
    throw IoError(fmt::format("cannot rename {} to {}: {}", partial_, path_, std::strerror(err)));
  }
}

void write_token_file(const std::string& path, int64_t vocab_size, std::span<const uint32_t> tokens,
                      const std::string& tokenizer_hash) {
  TokenFileWriter w(path, vocab_size, tokenizer_hash);
  w.append(tokens);
  w.commit();
  fsync_path(std::filesystem::path(path).parent_path().empty() ? "." : std::filesystem::path(path).parent_path().string());
}

}  // namespace ptrain
