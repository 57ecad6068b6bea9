// Token files: write/read round trips in both dtypes, the documented header bytes, windows, and
// every kind of damage refused with a message naming the file and the problem.
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"
#include "common/util/hash.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

using namespace ptrain;
namespace fs = std::filesystem;

namespace {

// A fresh folder under /tmp, removed with everything in it when the test ends.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::path("/tmp") / ("ptrain-test-tokfile-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

template <typename T>
T load(const std::string& bytes, size_t at) {
  T v;
  std::memcpy(&v, bytes.data() + at, sizeof v);
  return v;
}
template <typename T>
void store(std::string& bytes, size_t at, T v) {
  std::memcpy(bytes.data() + at, &v, sizeof v);
}
void restamp_header_crc(std::string& bytes) { store<uint32_t>(bytes, 36, crc32c(bytes.data(), 36)); }

// Expects TokenFile::open to throw E with a message naming the file and containing `needle`.
template <typename E>
void refused(const std::string& path, const std::string& needle) {
  try {
    TokenFile::open(path);
    FAIL("accepted " << path);
  } catch (const E& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(m.find(path) != std::string::npos);
    CHECK(m.find(needle) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("token_file: uint16 round trip - header bytes and windows") {
  TempDir dir;
  const std::string path = dir / "a.tok";
  std::vector<uint32_t> toks;
  for (uint32_t i = 0; i < 1000; ++i) toks.push_back((i * 37) % 257);
  write_token_file(path, 257, toks);

  const std::string bytes = read_file(path);
  REQUIRE(bytes.size() == 64 + 2 * toks.size());
  CHECK(bytes.substr(0, 8) == "PTRTOKEN");
  CHECK(load<uint32_t>(bytes, 8) == 1);    // format version
  CHECK(load<uint32_t>(bytes, 12) == 1);   // dtype uint16
  CHECK(load<uint64_t>(bytes, 16) == 257);
  CHECK(load<uint64_t>(bytes, 24) == 1000);
  CHECK(load<uint32_t>(bytes, 32) == crc32c(bytes.data() + 64, 2000));
  CHECK(load<uint32_t>(bytes, 36) == crc32c(bytes.data(), 36));
  CHECK(bytes.substr(40, 24) == std::string(24, '\0'));
  CHECK(load<uint16_t>(bytes, 64 + 2 * 5) == toks[5]);

  TokenFile f = TokenFile::open(path);
  CHECK(f.path() == path);
  CHECK(f.vocab_size() == 257);
  CHECK(f.size() == 1000);
  for (int64_t i = 0; i < 1000; ++i) REQUIRE(f.at(i) == static_cast<int32_t>(toks[i]));
  CHECK(f.num_windows(16) == (1000 - 1) / 16);
  CHECK(f.num_windows(999) == 1);
  CHECK(f.num_windows(1000) == 0);
  std::vector<int32_t> w(17);
  f.window(3, 16, w);
  for (int k = 0; k <= 16; ++k) CHECK(w[k] == static_cast<int32_t>(toks[3 * 16 + k]));
  f.window(f.num_windows(16) - 1, 16, w);  // the last complete window ends inside the file
  CHECK(w[16] == static_cast<int32_t>(toks[(f.num_windows(16) - 1) * 16 + 16]));
  CHECK_THROWS_AS(f.window(f.num_windows(16), 16, w), InternalError);
  CHECK_THROWS_AS(f.at(1000), InternalError);

  TokenFile moved = std::move(f);
  CHECK(moved.size() == 1000);
}

TEST_CASE("token_file: uint32 tokens when the vocabulary exceeds 65536 - and empty files") {
  TempDir dir;
  const std::string path = dir / "big.tok";
  const std::vector<uint32_t> toks{0, 65535, 65536, 69999, 12345};
  write_token_file(path, 70000, toks);
  const std::string bytes = read_file(path);
  CHECK(load<uint32_t>(bytes, 12) == 2);
  CHECK(bytes.size() == 64 + 4 * toks.size());
  TokenFile f = TokenFile::open(path);
  CHECK(f.vocab_size() == 70000);
  std::vector<int32_t> w(3);
  f.window(1, 2, w);
  CHECK(w == std::vector<int32_t>{65536, 69999, 12345});

  // Exactly 65536 still fits uint16.
  write_token_file(dir / "edge.tok", 65536, std::vector<uint32_t>{65535});
  CHECK(load<uint32_t>(read_file(dir / "edge.tok"), 12) == 1);
  CHECK(TokenFile::open(dir / "edge.tok").at(0) == 65535);

  write_token_file(dir / "empty.tok", 257, {});
  TokenFile e = TokenFile::open(dir / "empty.tok");
  CHECK(e.size() == 0);
  CHECK(e.num_windows(8) == 0);

  CHECK_THROWS_AS(write_token_file(dir / "bad.tok", 257, std::vector<uint32_t>{1, 257}), DataError);
  CHECK(!fs::exists(dir / "bad.tok"));
}

TEST_CASE("token_file: damaged files are refused - naming the file and the problem") {
  TempDir dir;
  const std::string good_path = dir / "good.tok";
  std::vector<uint32_t> toks;
  for (uint32_t i = 0; i < 100; ++i) toks.push_back(i % 50);
  write_token_file(good_path, 50, toks);
  const std::string good = read_file(good_path);
  auto damaged = [&](const std::string& name, const std::string& bytes) {
    const std::string p = dir / name;
    write_file_atomic(p, bytes);
    return p;
  };

  refused<IoError>(dir / "missing.tok", "No such file");
  refused<IoError>(dir.path.string(), "not a regular file");
  refused<DataError>(damaged("short.tok", good.substr(0, 40)), "truncated");
  refused<DataError>(damaged("empty0.tok", ""), "truncated");
  refused<DataError>(damaged("cut.tok", good.substr(0, good.size() - 3)), "truncated");
  refused<DataError>(damaged("long.tok", good + std::string(2, '\0')), "trailing bytes");

  std::string flip = good;
  flip[64 + 17] ^= 0x01;
  refused<DataError>(damaged("flip.tok", flip), "token checksum mismatch");

  std::string flip_header = good;
  flip_header[16] ^= 0x01;  // vocab size 50 -> 51
  refused<DataError>(damaged("fliphdr.tok", flip_header), "header checksum mismatch");

  std::string magic = good;
  magic[0] = 'X';
  refused<DataError>(damaged("magic.tok", magic), "bad magic");
  refused<DataError>(damaged("text.tok", std::string(100, 'x')), "bad magic");

  std::string version = good;
  store<uint32_t>(version, 8, 2);
  refused<DataError>(damaged("version.tok", version), "format version 2 is not supported");

  std::string dtype = good;
  store<uint32_t>(dtype, 12, 7);
  restamp_header_crc(dtype);
  refused<DataError>(damaged("dtype.tok", dtype), "unknown dtype code 7");

  std::string reserved = good;
  reserved[50] = 1;
  refused<DataError>(damaged("reserved.tok", reserved), "reserved header byte 50");

  // Consistent checksums but a token outside the vocabulary (a vocab size lowered by hand).
  std::string small_vocab = good;
  store<uint64_t>(small_vocab, 16, 10);
  restamp_header_crc(small_vocab);
  refused<DataError>(damaged("vocab.tok", small_vocab), "token 10 at position 10 is not below the vocab size 10");

  CHECK(TokenFile::open(good_path).size() == 100);  // the original is untouched
}
