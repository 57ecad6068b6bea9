// Corpus preparation on small temporary folders: which files become which documents (text, JSONL,
// separators, binary and symlinked files), the seeded whole-document split, the written outputs,
// every error, and the command line's exit codes.
#include "common/data/corpus.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"
#include "tools/data_stats.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>
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

namespace {

// VmData of this process (private writable memory, what RLIMIT_DATA caps), in bytes.
int64_t vm_data_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmData:", 0) == 0) return std::stoll(line.substr(7)) * 1024;
  }
  return -1;
}

// Runs `body` in a child process whose memory may grow by at most `budget` bytes beyond what it
// holds at the fork (RLIMIT_DATA); the child's exit status: 0 = body returned, 3 = it threw.
template <typename F>
int with_memory_cap(int64_t budget, F&& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    struct rlimit lim {};
    lim.rlim_cur = lim.rlim_max = static_cast<rlim_t>(vm_data_bytes() + budget);
    if (::setrlimit(RLIMIT_DATA, &lim) != 0) ::_exit(4);
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "under the memory cap: %s\n", e.what());
      ::_exit(3);
    }
    ::_exit(0);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace

TEST_CASE("prepare: memory stays bounded - a corpus several times larger than a memory cap") {
  TempDir dir;
  constexpr int64_t kBudget = int64_t{128} << 20;
  // 6 files of 64 MiB: 3 x the budget, in documents of about 1 MiB and one 64 MiB document. The
  // budget covers two encoding threads (their stacks alone are 16 MiB) and the batches in flight.
  std::string block;
  for (int i = 0; block.size() < (size_t{1} << 20); ++i) {
    block += "line " + std::to_string(i % 977) + " of a corpus that is larger than the memory cap\n";
  }
  fs::create_directories(dir.path / "in");
  for (int f = 0; f < 6; ++f) {
    std::ofstream out(dir.path / "in" / ("f" + std::to_string(f) + ".txt"), std::ios::binary);
    for (int k = 0; k < 64; ++k) out << block << (f == 5 ? "" : "%\n");
  }
  PrepareOptions opt;
  opt.inputs = {dir / "in"};
  opt.doc_separator = "%";
  opt.tokenizer = TokenizerKind::kBpe;
  opt.vocab_size = 512;
  opt.bpe_sample_bytes = 8 << 20;
  opt.threads = 2;
  opt.shard_size = 32 << 20;
  opt.output_dir = dir / "out";
  // The cap bites: holding a sixth of the corpus in memory fails under it.
  CHECK(with_memory_cap(kBudget, [] {
          std::vector<char> v(size_t{144} << 20, 'x');
          std::printf("%d\n", v[12345]);  // used, so the allocation is not elided
        }) == 3);
  CHECK(with_memory_cap(kBudget, [&] { prepare_corpus(opt); }) == 0);
  const auto m = nlohmann::json::parse(read_file(dir / "out/manifest.json"));
  CHECK(m["documents"] == 5 * 64 + 1);
  CHECK(m["splits"]["train"]["bytes"].get<int64_t>() + m["splits"]["val"]["bytes"].get<int64_t>() >=
        6 * (int64_t{64} << 20));
  CHECK(m["splits"]["train"]["shards"].size() >= 2);
}

TEST_CASE("prepare: gzip and zstd inputs - JSONL with --text-key - read as their plain text") {
  TempDir dir;
  std::string text, jsonl;
  for (int i = 0; i < 30; ++i) text += "plain document " + std::to_string(i) + "\n%\n";
  for (int i = 0; i < 30; ++i) jsonl += nlohmann::json{{"body", "record " + std::to_string(i)}, {"id", i}}.dump() + "\n";
  dir.write("plain/a.txt", text);
  dir.write("plain/b.jsonl", jsonl);
  dir.write("packed/a.txt", text);
  dir.write("packed/b.jsonl", jsonl);
  // a.txt as two concatenated gzip members; b.jsonl as zstd.
  REQUIRE(std::system(("cd " + (dir / "packed") + " && head -c 100 a.txt | gzip -c > a.txt.gz && tail -c +101 a.txt | "
                       "gzip -c >> a.txt.gz && rm a.txt && zstd -q --rm b.jsonl").c_str()) == 0);
  REQUIRE(fs::exists(dir.path / "packed/a.txt.gz"));
  REQUIRE(fs::exists(dir.path / "packed/b.jsonl.zst"));
  CHECK(compression_of(dir / "packed/a.txt.gz") == "gzip");
  CHECK(compression_of(dir / "packed/b.jsonl.zst") == "zstd");
  CHECK(compression_of(dir / "plain/a.txt") == "plain");

  const Corpus plain = read_corpus({dir / "plain"}, std::string("%"), "", "body");
  const Corpus packed = read_corpus({dir / "packed"}, std::string("%"), "", "body");
  CHECK(plain.documents.size() == 60);
  CHECK(texts(packed) == texts(plain));
  CHECK(texts(packed)[30] == "record 0");
  CHECK(packed.skipped.empty());

  // The same token files from either, whatever the number of threads.
  PrepareOptions a;
  a.inputs = {dir / "plain"};
  a.doc_separator = "%";
  a.text_key = "body";
  a.tokenizer = TokenizerKind::kBpe;
  a.vocab_size = 300;
  a.threads = 1;
  a.output_dir = dir / "out-plain";
  PrepareOptions b = a;
  b.inputs = {dir / "packed"};
  b.threads = 3;
  b.output_dir = dir / "out-packed";
  prepare_corpus(a);
  prepare_corpus(b);
  CHECK(read_file(dir / "out-plain/train-00000.tok") == read_file(dir / "out-packed/train-00000.tok"));
  CHECK(read_file(dir / "out-plain/tokenizer.json") == read_file(dir / "out-packed/tokenizer.json"));

  // A JSONL line without the key, and a damaged compressed file, are refused naming the file.
  a.text_key = "text";
  refused<DataError>(a, "b.jsonl:1: expected an object with a string \"text\"");
  std::string gz = read_file(dir / "packed/a.txt.gz");
  gz.resize(gz.size() / 2);
  dir.write("broken/a.txt.gz", gz);
  b.inputs = {dir / "broken"};
  refused<IoError>(b, "a.txt.gz");
}

TEST_CASE("prepare: --dry-run counts and writes nothing - and options out of range are refused") {
  TempDir dir;
  PrepareOptions opt = many_docs(dir, 40);
  opt.dry_run = true;
  const PrepareResult r = prepare_corpus(opt);
  CHECK(r.train.documents + r.val.documents == 40);
  CHECK(r.val.documents == 2);
  CHECK(!fs::exists(dir.path / "out"));
  opt.dry_run = false;
  PrepareOptions o = opt;
  o.shard_size = 100;
  refused<UsageError>(o, "--shard-size must be at least");
  o = opt;
  o.threads = -1;
  refused<UsageError>(o, "--threads");
  o = opt;
  o.tokenizer = TokenizerKind::kGpt2;
  refused<UsageError>(o, "--tokenizer gpt2 needs --vocab");
  o = opt;
  o.gpt2_vocab = "v.json";
  refused<UsageError>(o, "--vocab and --merges are for --tokenizer gpt2 only");
}

TEST_CASE("prepare: data stats reads the manifest - windows per shard add up - epochs for given steps") {
  TempDir dir;
  PrepareOptions opt = many_docs(dir, 200);
  opt.shard_size = 1024;  // 480 tokens a shard
  const PrepareResult r = prepare_corpus(opt);
  REQUIRE(r.train.shards >= 3);
  tools::DataStatsOptions o;
  o.dir = dir / "out";
  o.seq_len = 16;
  o.steps = 10;
  o.batch_size = 8;
  const auto j = nlohmann::json::parse(tools::data_stats_json(o));
  const int64_t windows = (r.train.tokens - 1) / 16;
  CHECK(j["splits"]["train"]["tokens"] == r.train.tokens);
  CHECK(j["splits"]["train"]["windows"] == windows);
  int64_t sum = 0;
  for (const auto& s : j["splits"]["train"]["shards"]) sum += s["windows"].get<int64_t>();
  CHECK(sum == windows);
  CHECK(j["splits"]["train"]["epochs"].get<double>() == doctest::Approx(80.0 / windows));
  CHECK(j["tokenizer"]["hash"] == r.tokenizer_hash);
  CHECK(tools::data_stats_text(j.dump()).find("train: 190 documents") != std::string::npos);
}
