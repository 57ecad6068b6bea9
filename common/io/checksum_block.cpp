// The checksum block of a checkpoint file (checksum_block.hpp): writing it after HDF5 closed the
// file, and checking it before HDF5 opens one. Plain POSIX I/O only: nothing here may call HDF5,
// since the point is to refuse a damaged file before libhdf5 parses it.
#include "common/io/checksum_block.hpp"

#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/util/hash.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace ptrain {
namespace {

constexpr std::string_view kMagic = "ptrain-checkpoint-checksum";
constexpr unsigned char kHdf5Signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
// Bytes read at a time while checksumming (bounds the buffer; large enough that the syscalls
// cost nothing next to the CRC).
constexpr size_t kChunkBytes = size_t{4} << 20;

// An open descriptor, closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string os_error(const char* what, const std::string& path) {
  return fmt::format("cannot {} {}: {}", what, path, std::strerror(errno));
}

// Reads exactly `n` bytes at `offset` (fewer only at end of file); returns how many were read.
size_t pread_full(int fd, void* buf, size_t n, uint64_t offset, const std::string& path) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, static_cast<char*>(buf) + got, n - got,
                              static_cast<off_t>(offset + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IoError(os_error("read", path));
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

// CRC32C of bytes [from, end of file) and how many there were.
std::pair<uint32_t, uint64_t> crc_from(int fd, uint64_t from, const std::string& path) {
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);  // a hint; failure changes nothing
  std::vector<unsigned char> buf(kChunkBytes);
  uint32_t crc = 0;
  uint64_t at = from;
  for (;;) {
    const size_t n = pread_full(fd, buf.data(), buf.size(), at, path);
    crc = crc32c(buf.data(), n, crc);
    at += n;
    if (n < buf.size()) break;
  }
  return {crc, at - from};
}

std::string block_text(uint64_t length, uint32_t crc) {
  return fmt::format("{}\nformat_version {}\nlength {}\ncrc32c {:#010x}\n", kMagic,
                     kCheckpointFormatVersion, length, crc);
}

// The fields of a parsed block.
struct Block {
  int64_t format_version = 0;
  uint64_t length = 0;
  uint32_t crc = 0;
};

// Parses the 512 bytes of a block that starts with the magic line; the reason when it does not
// parse (empty = parsed).
std::string parse_block(std::string_view b, Block& out) {
  size_t at = 0;
  auto line = [&](std::string_view& l) {
    const size_t nl = b.find('\n', at);
    if (nl == std::string_view::npos) return false;
    l = b.substr(at, nl - at);
    at = nl + 1;
    return true;
  };
  auto field = [&](std::string_view key, int base, auto& value) -> std::string {
    std::string_view l;
    if (!line(l)) return fmt::format("no line `{} ...`", key);
    std::string_view v = l;
    if (v.substr(0, key.size()) != key || v.size() <= key.size() || v[key.size()] != ' ') {
      return fmt::format("expected `{} ...`, found \"{}\"", key, l);
    }
    v.remove_prefix(key.size() + 1);
    if (base == 16) {
      if (v.substr(0, 2) != "0x") return fmt::format("`{}` is \"{}\", not 0x-hex", key, v);
      v.remove_prefix(2);
    }
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), value, base);
    if (ec != std::errc() || end != v.data() + v.size() || v.empty()) {
      return fmt::format("`{}` is \"{}\", not a number", key, v);
    }
    return {};
  };
  std::string_view magic;
  if (!line(magic) || magic != kMagic) return "no magic line";
  std::string why = field("format_version", 10, out.format_version);
  if (why.empty()) why = field("length", 10, out.length);
  if (why.empty()) why = field("crc32c", 16, out.crc);
  if (!why.empty()) return why;
  for (size_t i = at; i < b.size(); ++i) {
    if (b[i] != '\0') return fmt::format("byte {} after the fields is not NUL", i);
  }
  return {};
}

}  // namespace

void write_checksum_block(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (f.fd < 0) throw IoError(os_error("open", path));
  // HDF5 leaves the user block as it found it: all zero in a file it created. Anything else
  // means the file was not created with the block (a writer's bug, not damage).
  unsigned char head[kChecksumBlockBytes];
  const size_t n = pread_full(f.fd, head, sizeof head, 0, path);
  if (n < sizeof head || std::memcmp(head + sizeof head - 8, "\0\0\0\0\0\0\0\0", 8) != 0 ||
      std::memcmp(head, kHdf5Signature, sizeof kHdf5Signature) == 0) {
    throw InternalError(fmt::format(
        "{}: not created with a {}-byte user block; cannot write its checksum block", path,
        kChecksumBlockBytes));
  }
  const auto [crc, length] = crc_from(f.fd, kChecksumBlockBytes, path);
  std::string text = block_text(length, crc);
  text.resize(kChecksumBlockBytes, '\0');
  size_t put = 0;
  while (put < text.size()) {
    const ssize_t w = ::pwrite(f.fd, text.data() + put, text.size() - put, static_cast<off_t>(put));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError(os_error("write the checksum block of", path));
    }
    put += static_cast<size_t>(w);
  }
  if (::close(f.fd) != 0) {
    f.fd = -1;
    throw IoError(os_error("close", path));
  }
  f.fd = -1;
}

ChecksumBlockState verify_checksum_block(const std::string& path, const std::string& who) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) throw IoError(fmt::format("{}: {}", who, os_error("read", path)));
  char head[kChecksumBlockBytes];
  size_t n = 0;
  try {
    n = pread_full(f.fd, head, sizeof head, 0, path);
  } catch (const IoError& e) {
    throw IoError(fmt::format("{}: {}", who, e.what()));
  }
  const std::string_view got(head, n);
  if (n >= sizeof kHdf5Signature && std::memcmp(head, kHdf5Signature, sizeof kHdf5Signature) == 0) {
    return ChecksumBlockState::kAbsent;
  }
  if (got.substr(0, kMagic.size()) != kMagic) {
    throw CheckpointError(fmt::format(
        "{}: not an HDF5 file, or damaged or truncated: it starts with neither ptrain's checksum "
        "block (\"{}\") nor the HDF5 signature ({} bytes long)",
        who, kMagic, n < sizeof head ? std::to_string(n) : std::string("at least 512")));
  }
  if (n < sizeof head) {
    throw CheckpointError(fmt::format(
        "{}: damaged or truncated: {} bytes, shorter than its {}-byte checksum block", who, n,
        kChecksumBlockBytes));
  }
  Block b;
  const std::string why = parse_block(got, b);
  if (!why.empty()) {
    throw CheckpointError(fmt::format(
        "{}: damaged or truncated: its checksum block (the first {} bytes) does not parse: {}",
        who, kChecksumBlockBytes, why));
  }
  uint32_t crc = 0;
  uint64_t length = 0;
  try {
    std::tie(crc, length) = crc_from(f.fd, kChecksumBlockBytes, path);
  } catch (const IoError& e) {
    throw IoError(fmt::format("{}: {}", who, e.what()));
  }
  if (crc != b.crc || length != b.length) {
    throw CheckpointError(fmt::format(
        "{}: damaged or truncated: its checksum block expects crc32c {:#010x} over {} bytes, the "
        "file has crc32c {:#010x} over {} bytes",
        who, b.crc, b.length, crc, length));
  }
  if (b.format_version != kCheckpointFormatVersion) {
    throw CheckpointError(fmt::format("{}: format_version {} (in its checksum block), this ptrain "
                                      "reads {}",
                                      who, b.format_version, kCheckpointFormatVersion));
  }
  return ChecksumBlockState::kVerified;
}

std::optional<ChecksumBlockFields> read_checksum_block(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) return std::nullopt;
  char head[kChecksumBlockBytes];
  const ssize_t n = ::pread(f.fd, head, sizeof head, 0);
  if (n != static_cast<ssize_t>(sizeof head)) return std::nullopt;
  Block b;
  if (!parse_block(std::string_view(head, sizeof head), b).empty()) return std::nullopt;
  return ChecksumBlockFields{b.crc, b.length};
}

}  // namespace ptrain
