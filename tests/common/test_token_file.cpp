// Token files: write/read round trips in both dtypes, the documented header bytes, windows, and
// every kind of damage refused with a message naming the file and the problem.
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"
#include "common/util/hash.hpp"

#include <nlohmann/json.hpp>
#include <fstream>
#include <span>

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
// Version 2 headers: the checksum covers bytes 0..35 then 40..63; version 1: bytes 0..35.
void restamp_header_crc(std::string& bytes) {
  uint32_t c = crc32c(bytes.data(), 36);
  if (load<uint32_t>(bytes, 8) >= 2) c = crc32c(bytes.data() + 40, 24, c);
  store<uint32_t>(bytes, 36, c);
}

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
  CHECK(load<uint32_t>(bytes, 8) == 2);    // format version
  CHECK(load<uint32_t>(bytes, 12) == 1);   // dtype uint16
  CHECK(load<uint64_t>(bytes, 16) == 257);
  CHECK(load<uint64_t>(bytes, 24) == 1000);
  CHECK(load<uint32_t>(bytes, 32) == crc32c(bytes.data() + 64, 2000));
  CHECK(load<uint32_t>(bytes, 36) == crc32c(bytes.data() + 40, 24, crc32c(bytes.data(), 36)));
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
  refused<IoError>(dir.path.string(), "no manifest");  // a folder is read as a prepared folder
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
  store<uint32_t>(version, 8, 3);
  restamp_header_crc(version);
  refused<DataError>(damaged("version.tok", version), "format version 3 is not supported");

  std::string dtype = good;
  store<uint32_t>(dtype, 12, 7);
  restamp_header_crc(dtype);
  refused<DataError>(damaged("dtype.tok", dtype), "unknown dtype code 7");

  std::string reserved = good;
  reserved[60] = 1;
  refused<DataError>(damaged("reserved.tok", reserved), "header checksum mismatch");  // covered in version 2
  restamp_header_crc(reserved);
  refused<DataError>(damaged("reserved2.tok", reserved), "reserved header byte 60");

  // Consistent checksums but a token outside the vocabulary (a vocab size lowered by hand).
  std::string small_vocab = good;
  store<uint64_t>(small_vocab, 16, 10);
  restamp_header_crc(small_vocab);
  refused<DataError>(damaged("vocab.tok", small_vocab), "token 10 at position 10 is not below the vocab size 10");

  CHECK(TokenFile::open(good_path).size() == 100);  // the original is untouched
}

TEST_CASE("token_file: version 1 files are still read - version 2 carries the tokenizer hash") {
  TempDir dir;
  std::vector<uint32_t> toks = {1, 2, 3, 4, 5, 6, 7};
  const std::string hash = "00112233445566778899aabbccddeeff0123456789abcdef0123456789abcdef";
  write_token_file(dir / "h.tok", 257, toks, hash);
  const TokenFile f = TokenFile::open(dir / "h.tok");
  CHECK(f.tokenizer_hash() == hash.substr(0, 32));
  CHECK(read_token_file_header(dir / "h.tok").tokenizer_hash == hash.substr(0, 32));

  // The same tokens as a version 1 file (hash bytes reserved, header checksum over bytes 0..35).
  std::string v1 = read_file(dir / "h.tok");
  store<uint32_t>(v1, 8, 1);
  std::fill(v1.begin() + 40, v1.begin() + 64, '\0');
  restamp_header_crc(v1);
  { std::ofstream(dir / "v1.tok", std::ios::binary) << v1; }
  const TokenFile old = TokenFile::open(dir / "v1.tok");
  CHECK(old.size() == 7);
  CHECK(old.tokenizer_hash().empty());
  CHECK(old.at(6) == 7);
}

TEST_CASE("token_file: a manifest's shards read as one stream - windows across shard ends") {
  TempDir dir;
  std::vector<uint32_t> all;
  for (uint32_t i = 0; i < 103; ++i) all.push_back((i * 13) % 257);
  write_token_file(dir / "single.tok", 257, all);
  // Shards of 40, 40 and 23 tokens, listed in a manifest.
  nlohmann::json m = {{"format", "ptrain-manifest"}, {"version", 2}, {"tokenizer", {{"vocab_size", 257}, {"hash", ""}}}};
  nlohmann::json shards = nlohmann::json::array();
  for (size_t b = 0, k = 0; b < all.size(); b += 40, ++k) {
    const size_t e = std::min(all.size(), b + 40);
    const std::string name = "train-0000" + std::to_string(k) + ".tok";
    write_token_file(dir / name, 257, std::span(all).subspan(b, e - b));
    shards.push_back({{"file", name}, {"tokens", e - b}});
  }
  m["splits"] = {{"train", {{"shards", shards}}}};
  { std::ofstream(dir / "manifest.json") << m.dump(); }
  const TokenFile one = TokenFile::open(dir / "single.tok");
  const TokenFile many = TokenFile::open(dir.path.string());
  CHECK(many.shards() == 3);
  REQUIRE(many.size() == one.size());
  for (int64_t T : {1, 5, 39, 40, 41, 64}) {
    REQUIRE(many.num_windows(T) == one.num_windows(T));
    std::vector<int32_t> a(T + 1), b(T + 1);
    for (int64_t w = 0; w < one.num_windows(T); ++w) {
      one.window(w, T, a);
      many.window(w, T, b);
      REQUIRE(a == b);
    }
  }
  CHECK_THROWS_WITH_AS(TokenFile::open(dir / "manifest.json", "val"), doctest::Contains("no split \"val\""), DataError);
  // A shard from another run (a different token count than the manifest lists) is refused at open.
  write_token_file(dir / "train-00001.tok", 257, std::span(all).first(10));
  CHECK_THROWS_WITH_AS(TokenFile::open(dir.path.string()), doctest::Contains("mixes two prepare runs"), DataError);
}
