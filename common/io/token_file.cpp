// Token files (.tok). Layout (docs/formats.md, "Token file (.tok)"), all integers little-endian:
//   0  char[8]  magic "PTRTOKEN"
//   8  uint32   format version (1)
//  12  uint32   dtype code: 1 = uint16 tokens, 2 = uint32 tokens
//  16  uint64   vocab size
//  24  uint64   token count
//  32  uint32   CRC32C of the token bytes (exactly as stored)
//  36  uint32   CRC32C of header bytes 0..35 (a flipped vocab size or count is caught too)
//  40  byte[24] reserved, zero
//  64  tokens
// open() checks all of it, and every token against the vocab size, before anyone reads a token:
// a bad file fails at start-up, naming itself, rather than mid-training.
#include "common/io/token_file.hpp"

#include "common/error.hpp"
#include "common/util/fs.hpp"
#include "common/util/hash.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>

namespace ptrain {
namespace {

static_assert(std::endian::native == std::endian::little,
              "token files store little-endian tokens and are read in place");

constexpr char kMagic[8] = {'P', 'T', 'R', 'T', 'O', 'K', 'E', 'N'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kDtypeU16 = 1;
constexpr uint32_t kDtypeU32 = 2;
constexpr size_t kHeaderBytes = 64;
constexpr size_t kHeaderCrcSpan = 36;

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

}  // namespace

struct TokenFile::Impl {
  std::string path;
  int64_t vocab = 0;
  int64_t count = 0;
  uint32_t dtype = 0;
  void* map = nullptr;
  size_t map_bytes = 0;
  const unsigned char* tokens = nullptr;

  ~Impl() {
    if (map != nullptr) ::munmap(map, map_bytes);
  }
  int32_t get(int64_t i) const {
    return dtype == kDtypeU16 ? load_le<uint16_t>(tokens + 2 * i)
                              : static_cast<int32_t>(load_le<uint32_t>(tokens + 4 * i));
  }
};

TokenFile::TokenFile() : impl_(std::make_unique<Impl>()) {}
TokenFile::TokenFile(TokenFile&&) noexcept = default;
TokenFile& TokenFile::operator=(TokenFile&&) noexcept = default;
TokenFile::~TokenFile() = default;

TokenFile TokenFile::open(const std::string& path) {
  TokenFile tf;
  Impl& im = *tf.impl_;
  im.path = path;
  auto bad = [&](const std::string& what) { return DataError(fmt::format("token file {}: {}", path, what)); };

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
  void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) throw IoError(fmt::format("cannot map token file {}: {}", path, std::strerror(map_err)));
  im.map = map;
  im.map_bytes = file_bytes;
  ::madvise(map, file_bytes, MADV_WILLNEED);

  const auto* h = static_cast<const unsigned char*>(map);
  if (std::memcmp(h, kMagic, sizeof kMagic) != 0) {
    throw bad("bad magic (not a ptrain token file; expected it to start with \"PTRTOKEN\")");
  }
  if (const auto version = load_le<uint32_t>(h + 8); version != kVersion) {
    throw bad(fmt::format("format version {} is not supported (this ptrain reads version {}); "
                          "re-run `ptrain prepare`", version, kVersion));
  }
  if (const uint32_t want = load_le<uint32_t>(h + 36), got = crc32c(h, kHeaderCrcSpan); want != got) {
    throw bad(fmt::format("header checksum mismatch (stored {:08x}, computed {:08x}): the header is corrupt",
                          want, got));
  }
  for (size_t k = 40; k < kHeaderBytes; ++k) {
    if (h[k] != 0) throw bad(fmt::format("reserved header byte {} is not zero", k));
  }
  im.dtype = load_le<uint32_t>(h + 12);
  if (im.dtype != kDtypeU16 && im.dtype != kDtypeU32) {
    throw bad(fmt::format("unknown dtype code {} (1 = uint16, 2 = uint32)", im.dtype));
  }
  const auto vocab = load_le<uint64_t>(h + 16);
  const auto count = load_le<uint64_t>(h + 24);
  if (vocab == 0 || vocab > (uint64_t{1} << 31)) {
    throw bad(fmt::format("vocab size {} is out of range [1, 2^31]", vocab));
  }
  const size_t width = im.dtype == kDtypeU16 ? 2 : 4;
  const size_t payload = file_bytes - kHeaderBytes;
  if (count > payload / width) {
    throw bad(fmt::format("truncated: the header promises {} tokens ({} bytes) but only {} bytes follow it",
                          count, count * width, payload));
  }
  if (count * width != payload) {
    throw bad(fmt::format("{} trailing bytes after the {} tokens the header promises", payload - count * width,
                          count));
  }
  im.vocab = static_cast<int64_t>(vocab);
  im.count = static_cast<int64_t>(count);
  im.tokens = h + kHeaderBytes;

  if (const uint32_t want = load_le<uint32_t>(h + 32), got = crc32c(im.tokens, payload); want != got) {
    throw bad(fmt::format("token checksum mismatch (stored {:08x}, computed {:08x}): the file is corrupt",
                          want, got));
  }
  for (int64_t i = 0; i < im.count; ++i) {
    if (static_cast<uint32_t>(im.get(i)) >= vocab) {
      throw bad(fmt::format("token {} at position {} is not below the vocab size {}",
                            static_cast<uint32_t>(im.get(i)), i, vocab));
    }
  }
  return tf;
}

const std::string& TokenFile::path() const { return impl_->path; }
int64_t TokenFile::vocab_size() const { return impl_->vocab; }
int64_t TokenFile::size() const { return impl_->count; }

int32_t TokenFile::at(int64_t i) const {
  PTRAIN_ENFORCE(i >= 0 && i < impl_->count, "token index {} outside {} ({} tokens)", i, impl_->path,
                 impl_->count);
  return impl_->get(i);
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
  const int64_t begin = i * T;
  if (impl_->dtype == kDtypeU16) {
    for (int64_t k = 0; k <= T; ++k) out[k] = load_le<uint16_t>(impl_->tokens + 2 * (begin + k));
  } else {
    std::memcpy(out.data(), impl_->tokens + 4 * begin, 4 * static_cast<size_t>(T + 1));
  }
}

void write_token_file(const std::string& path, int64_t vocab_size, std::span<const uint32_t> tokens) {
  if (vocab_size < 1 || vocab_size > (int64_t{1} << 31)) {
    throw DataError(fmt::format("cannot write token file {}: vocab size {} is out of range [1, 2^31]", path,
                                vocab_size));
  }
  const bool narrow = vocab_size <= 65536;
  const size_t width = narrow ? 2 : 4;
  std::string bytes(kHeaderBytes + width * tokens.size(), '\0');
  auto* h = reinterpret_cast<unsigned char*>(bytes.data());
  unsigned char* p = h + kHeaderBytes;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= static_cast<uint64_t>(vocab_size)) {
      throw DataError(fmt::format("cannot write token file {}: token {} at position {} is not below the "
                                  "vocab size {}", path, tokens[i], i, vocab_size));
    }
    if (narrow) {
      store_le<uint16_t>(p + 2 * i, static_cast<uint16_t>(tokens[i]));
    } else {
      store_le<uint32_t>(p + 4 * i, tokens[i]);
    }
  }
  std::memcpy(h, kMagic, sizeof kMagic);
  store_le<uint32_t>(h + 8, kVersion);
  store_le<uint32_t>(h + 12, narrow ? kDtypeU16 : kDtypeU32);
  store_le<uint64_t>(h + 16, static_cast<uint64_t>(vocab_size));
  store_le<uint64_t>(h + 24, tokens.size());
  store_le<uint32_t>(h + 32, crc32c(p, width * tokens.size()));
  store_le<uint32_t>(h + 36, crc32c(h, kHeaderCrcSpan));
  write_file_atomic(path, bytes);
}

}  // namespace ptrain
