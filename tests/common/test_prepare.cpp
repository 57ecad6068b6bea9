// Corpus preparation on small temporary folders: which files become which documents (text, JSONL,
// separators, binary and symlinked files), the seeded whole-document split, the written outputs,
// every error, and the command line's exit codes.
#include "common/data/corpus.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

using namespace ptrain;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::path("/tmp") / ("ptrain-test-prepare-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  // Writes `bytes` to a file under the folder, creating parent folders.
  std::string write(const std::string& name, const std::string& bytes) const {
    const fs::path p = path / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }
};

std::vector<std::string> texts(const Corpus& c) {
  std::vector<std::string> out;
  for (const auto& d : c.documents) out.emplace_back(d.text);
  return out;
}

bool skipped_with(const Corpus& c, const std::string& path_end, const std::string& reason_part) {
  return std::any_of(c.skipped.begin(), c.skipped.end(), [&](const SkippedPath& s) {
    return s.path.size() >= path_end.size() && s.path.compare(s.path.size() - path_end.size(), path_end.size(), path_end) == 0 &&
           s.reason.find(reason_part) != std::string::npos;
  });
}

// Decodes a split of a prepared folder (or a token file) into its documents (split at eot).
std::vector<std::string> decode_documents(const std::string& path, const Tokenizer& tok,
                                          const std::string& split = "train") {
  TokenFile f = TokenFile::open(path, split);
  std::vector<std::string> docs;
  std::vector<int32_t> cur;
  for (int64_t i = 0; i < f.size(); ++i) {
    if (f.at(i) == tok.eot()) {
      docs.push_back(tok.decode(cur));
      cur.clear();
    } else {
      cur.push_back(f.at(i));
    }
  }
  CHECK(cur.empty());  // every document ends with eot
  return docs;
}

template <typename E>
void refused(const PrepareOptions& opt, const std::string& needle) {
  try {
    prepare_corpus(opt);
    FAIL("accepted");
  } catch (const E& e) {
    const std::string m = e.what();
    CAPTURE(m);
    CHECK(m.find(needle) != std::string::npos);
  }
}

// A folder of n one-line documents separated by "%" lines.
PrepareOptions many_docs(const TempDir& dir, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "document number " + std::to_string(i) + "\n%\n";
  dir.write("in/docs.txt", s);
  PrepareOptions opt;
  opt.inputs = {dir / "in"};
  opt.doc_separator = "%";
  opt.output_dir = dir / "out";
  return opt;
}

}  // namespace

TEST_CASE("prepare: text - JSONL - separator - binary and symlinked files become the right documents") {
  TempDir dir;
  dir.write("in/a.txt", "hello world\n");
  dir.write("in/b.jsonl", "{\"text\": \"one\"}\n{\"text\": \"\", \"id\": 2}\n\n{\"text\": \"t\\u0000wo\\n\"}\n");
  dir.write("in/c.bin", std::string("\x7f" "ELF\0\0binary", 12));
  dir.write("in/sub/e.txt", "first\nfortune\n%\n%\r\nsecond\n%\n   \n%\nlast, no newline");
  dir.write("in/sub/f.txt", "");
  fs::create_symlink(dir.path / "in/a.txt", dir.path / "in/d.link");
  fs::create_symlink(dir.path / "in/missing", dir.path / "in/dangling");
  ::mkfifo((dir / "in/pipe").c_str(), 0644);

  Corpus c = read_corpus({dir / "in"}, std::string("%"));
  CHECK(texts(c) == std::vector<std::string>{"hello world\n", "one", std::string("t\0wo\n", 5), "first\nfortune\n",
                                             "second\n", "last, no newline"});
  // Folders are read in byte order of names: a.txt, b.jsonl, (c.bin, d.link skipped), sub/e.txt, sub/f.txt.
  REQUIRE(c.files.size() == 4);
  CHECK(c.files[0].path == dir / "in/a.txt");
  CHECK(c.files[1].documents == 2);
  CHECK(c.files[2].documents == 3);
  CHECK(c.files[3].documents == 0);
  CHECK(c.documents[3].file == 2);
  CHECK(c.empty_documents == 4);  // "" in b.jsonl, "" and "   \n" in e.txt, f.txt
  CHECK(skipped_with(c, "in/c.bin", "binary"));
  CHECK(skipped_with(c, "in/d.link", "symlink to a file already read"));
  CHECK(skipped_with(c, "in/dangling", "broken symlink"));
  CHECK(skipped_with(c, "in/pipe", "not a regular file"));
  CHECK(c.skipped.size() == 4);

  // Without a separator a text file is one document.
  Corpus whole = read_corpus({dir / "in/sub/e.txt"}, std::nullopt);
  REQUIRE(whole.documents.size() == 1);
  CHECK(whole.documents[0].text == read_file(dir / "in/sub/e.txt"));

  // A symlink sorted before its target: the target is read, the symlink skipped.
  dir.write("in2/z.txt", "zed");
  fs::create_symlink(dir.path / "in2/z.txt", dir.path / "in2/a.link");
  Corpus c2 = read_corpus({dir / "in2"}, std::nullopt);
  REQUIRE(c2.files.size() == 1);
  CHECK(c2.files[0].path == dir / "in2/z.txt");
  CHECK(skipped_with(c2, "in2/a.link", "symlink"));

  // Symlinked folders are followed once; a loop back to an ancestor is not.
  fs::create_directory_symlink(dir.path / "in2", dir.path / "in2/loop");
  Corpus c3 = read_corpus({dir / "in2", dir / "in2/z.txt"}, std::nullopt);
  CHECK(c3.documents.size() == 1);
  CHECK(skipped_with(c3, "in2/loop", "folder already read"));
}

TEST_CASE("prepare: byte tokenizer end to end - every document once - eot after each") {
  TempDir dir;
  PrepareOptions opt = many_docs(dir, 40);
  opt.val_fraction = 0.25;
  opt.seed = 9;
  const PrepareResult r = prepare_corpus(opt);
  CHECK(r.tokenizer_kind == "byte");
  CHECK(r.vocab_size == 257);
  CHECK(r.val.documents == 10);
  CHECK(r.train.documents == 30);
  CHECK(r.train.tokens == r.train.bytes + 30);
  CHECK(r.val.tokens == r.val.bytes + 10);
  CHECK(r.files_read == 1);

  auto tok = load_tokenizer(dir / "out/tokenizer.json");
  CHECK(tok->kind() == "byte");
  auto train = decode_documents(dir / "out", *tok);
  auto val = decode_documents(dir / "out", *tok, "val");
  CHECK(train.size() == 30);
  CHECK(val.size() == 10);
  std::set<std::string> all(train.begin(), train.end());
  all.insert(val.begin(), val.end());
  CHECK(all.size() == 40);
  CHECK(all.count("document number 7\n") == 1);
  // Each split keeps reading order.
  auto num = [](const std::string& d) { return std::stoi(d.substr(16)); };
  CHECK(std::is_sorted(train.begin(), train.end(), [&](auto& a, auto& b) { return num(a) < num(b); }));

  const auto m = nlohmann::json::parse(read_file(dir / "out/manifest.json"));
  CHECK(m["format"] == "ptrain-manifest");
  CHECK(m["splits"]["train"]["documents"] == 30);
  CHECK(m["splits"]["val"]["tokens"] == r.val.tokens);
  CHECK(m["tokenizer"]["vocab_size"] == 257);
  CHECK(m["seed"] == 9);
  CHECK(m["doc_separator"] == "%");
  CHECK(m["files"].size() == 1);
  CHECK(r.manifest_json == read_file(dir / "out/manifest.json"));

  // Only the four outputs: no staging files left behind.
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path / "out")) names.insert(e.path().filename().string());
  CHECK(names == std::set<std::string>{"manifest.json", "tokenizer.json", "train-00000.tok", "val-00000.tok"});

  // Rerun with the output inside the input folder: the outputs are not read as corpus.
  PrepareOptions inside = opt;
  inside.output_dir = dir / "in/out";
  prepare_corpus(inside);
  const PrepareResult again = prepare_corpus(inside);
  CHECK(again.train.documents + again.val.documents == 40);
}

TEST_CASE("prepare: the split is seeded and deterministic") {
  TempDir dir;
  PrepareOptions opt = many_docs(dir, 200);
  opt.tokenizer = TokenizerKind::kBpe;
  opt.vocab_size = 300;
  opt.val_fraction = 0.1;
  opt.seed = 1;
  prepare_corpus(opt);
  const std::string train1 = read_file(dir / "out/train-00000.tok"), tok1 = read_file(dir / "out/tokenizer.json");
  const std::string man1 = read_file(dir / "out/manifest.json");
  prepare_corpus(opt);
  CHECK(read_file(dir / "out/train-00000.tok") == train1);
  CHECK(read_file(dir / "out/tokenizer.json") == tok1);
  CHECK(read_file(dir / "out/manifest.json") == man1);
  opt.seed = 2;
  const PrepareResult r2 = prepare_corpus(opt);
  CHECK(read_file(dir / "out/train-00000.tok") != train1);
  CHECK(r2.val.documents == 20);

  // The split rule is a seeded permutation of [0, n), evaluated one index at a time.
  for (int64_t n : {1, 2, 3, 5, 16, 17, 1000, 4099}) {
    const SplitRule a(n, n / 3, 5), b(n, n / 3, 5), c(n, n / 3, 6);
    std::vector<int64_t> p, q, r;
    int64_t val = 0;
    for (int64_t k = 0; k < n; ++k) {
      p.push_back(a.permute(k));
      q.push_back(b.permute(k));
      r.push_back(c.permute(k));
      val += a.is_val(k);
    }
    CHECK(p == q);
    if (n >= 16) CHECK(p != r);
    CHECK(val == n / 3);
    std::sort(p.begin(), p.end());
    for (int64_t i = 0; i < n; ++i) REQUIRE(p[i] == i);
  }
}

TEST_CASE("prepare: bpe end to end decodes back to the documents") {
  TempDir dir;
  std::string jsonl;
  for (int i = 0; i < 60; ++i) {
    jsonl += nlohmann::json{{"text", "Record " + std::to_string(i) + ": the rain in Spain stays mainly in the plain.\n\xff\xfe"}}
                 .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  dir.write("in/r.jsonl", jsonl);
  PrepareOptions opt;
  opt.inputs = {dir / "in"};
  opt.tokenizer = TokenizerKind::kBpe;
  opt.vocab_size = 512;
  opt.val_fraction = 0.1;
  opt.output_dir = dir / "out";
  const PrepareResult r = prepare_corpus(opt);
  CHECK(r.tokenizer_kind == "bpe");
  CHECK(r.vocab_size <= 512);
  CHECK(r.train.tokens * 2 < r.train.bytes);  // it compresses
  auto tok = load_tokenizer(dir / "out/tokenizer.json");
  CHECK(tok->vocab_size() == r.vocab_size);
  CHECK(TokenFile::open(dir / "out").vocab_size() == r.vocab_size);
  auto train = decode_documents(dir / "out", *tok);
  auto val = decode_documents(dir / "out/manifest.json", *tok, "val");
  CHECK(train.size() == 54);
  CHECK(val.size() == 6);
  CHECK(train[0].rfind("Record ", 0) == 0);
}

TEST_CASE("prepare: every bad input is refused with a clear error - leaving the output folder as it was") {
  TempDir dir;
  PrepareOptions good = many_docs(dir, 20);
  prepare_corpus(good);
  const std::string before = read_file(dir / "out/train-00000.tok") + read_file(dir / "out/manifest.json");

  PrepareOptions o = good;
  o.inputs.clear();
  refused<UsageError>(o, "no --input");

  o = good;
  o.inputs = {dir / "in", dir / "nowhere.txt"};
  refused<IoError>(o, "nowhere.txt");

  fs::create_directories(dir.path / "empty");
  o = good;
  o.inputs = {dir / "empty"};
  refused<DataError>(o, "no documents found in " + (dir / "empty"));

  dir.write("bin/x.dat", std::string("\0\1\2", 3));
  dir.write("bin/blank.txt", "\n\n  \n");
  o.inputs = {dir / "bin"};
  refused<DataError>(o, "no documents found");

  dir.write("one.txt", "a single document\n");
  o = good;
  o.inputs = {dir / "one.txt"};
  refused<DataError>(o, "val split is empty: 1 documents with --val-fraction 0.05; raise --val-fraction or add data");

  o = good;
  o.inputs = {dir / "one.txt", dir / "in"};
  o.doc_separator.reset();  // 2 documents
  o.val_fraction = 0.9;
  refused<DataError>(o, "train split is empty: 2 documents with --val-fraction 0.9; lower --val-fraction or add data");

  for (double f : {-0.1, 1.0, 1.5, std::nan("")}) {
    o = good;
    o.val_fraction = f;
    refused<DataError>(o, "--val-fraction must be in [0, 1)");
  }

  o = good;
  o.tokenizer = TokenizerKind::kBpe;
  o.vocab_size = 256;
  refused<UsageError>(o, "--vocab-size must be at least 257");
  o.tokenizer = TokenizerKind::kByte;
  o.vocab_size = 300;
  refused<UsageError>(o, "--vocab-size 300 does not fit --tokenizer byte");

  dir.write("bad/a.jsonl", "{\"text\": \"fine\"}\n{\"text\": broken\n");
  o = good;
  o.inputs = {dir / "bad"};
  refused<DataError>(o, dir / "bad/a.jsonl" + ":2: not valid JSON");
  dir.write("bad/a.jsonl", "{\"text\": \"fine\"}\n\n[1, 2]\n");
  refused<DataError>(o, dir / "bad/a.jsonl" + ":3: expected an object with a string \"text\"");
  dir.write("bad/a.jsonl", "{\"txt\": \"fine\"}\n");
  refused<DataError>(o, ":1: expected an object");

  CHECK_THROWS_AS(parse_tokenizer_kind("sentencepiece"), UsageError);

  if (::geteuid() != 0) {  // root reads anything
    const std::string locked = dir.write("locked/secret.txt", "hidden");
    fs::permissions(locked, fs::perms::none);
    o = good;
    o.inputs = {dir / "locked"};
    refused<IoError>(o, "secret.txt");
  }

  CHECK(read_file(dir / "out/train-00000.tok") + read_file(dir / "out/manifest.json") == before);
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path / "out")) names.insert(e.path().filename().string());
  CHECK(names.size() == 4);
}

TEST_CASE("prepare: the command line maps failures to exit codes and creates nothing") {
  TempDir dir;
  dir.write("one.txt", "just one\n");
  fs::create_directories(dir.path / "empty");
  auto run = [&](const std::string& args) {
    const std::string cmd = std::string(PTRAIN_TEST_BINARY) + " prepare " + args + " >/dev/null 2>&1";
    const int st = std::system(cmd.c_str());
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  };
  const std::string out = " --output " + (dir / "o");
  CHECK(run("--tokenizer byte" + out) == 2);                                   // no --input
  CHECK(run("--input " + (dir / "one.txt") + " --tokenizer words" + out) == 2); // bad kind
  CHECK(run("--input " + (dir / "nope") + " --tokenizer byte" + out) == 4);
  CHECK(run("--input " + (dir / "empty") + " --tokenizer byte" + out) == 5);
  CHECK(run("--input " + (dir / "one.txt") + " --tokenizer byte" + out) == 5);  // val split empty
  CHECK(run("--input " + (dir / "one.txt") + " --tokenizer bpe --vocab-size 100" + out) == 2);
  CHECK(!fs::exists(dir.path / "o"));
  CHECK(run("--input " + (dir / "one.txt") + " --tokenizer bpe --vocab-size 300 --val-fraction 0" + out) == 0);
  CHECK(TokenFile::open(dir / "o", "val").size() == 0);
  CHECK(TokenFile::open(dir / "o").size() > 0);
}
