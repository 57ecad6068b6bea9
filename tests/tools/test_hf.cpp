// export-hf, import-hf and tokenize end to end through the built `ptrain` binary: a BPE corpus
// prepared here, a short training run (so the weights are not the init's), the export read by an
// independent numpy reader and run through a PyTorch GPT-2 forward (scripts/check_hf_export.py)
// against `ptrain eval`, the exported tokenizer.json in a real Hugging Face client
// (@huggingface/tokenizers from npm, installed into the build tree; skipped, saying so, when npm
// or the registry is unreachable) against `ptrain tokenize`, the bitwise round trip, and refusals.
#include "support/ptrain_process.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/token_file.hpp"
#include "common/tensor/param_layout.hpp"
#include "ptrain/build_config.hpp"
#include "tools/checkpoint_model.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace ptrain;

namespace {

struct Result {
  int rc = -1;
  std::string out, err;
};

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A shell command's exit code (timeout-bounded by the caller's command line).
int sh(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

// A folder with a prepared BPE corpus, a tiny padded model trained for 30 steps, its checkpoint.
struct Fixture {
  fs::path dir;
  std::string ckpt;

  Fixture() {
    dir = fs::temp_directory_path() / ("ptrain-test-hf-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    {
      std::ofstream c(dir / "corpus.txt");
      const char* lines[] = {"The quick brown fox jumps over the lazy dog.", "It's 2024; don't panic!",
                             "Numbers 3.14159 and 42 repeat: 42, 42.", "café, naïve — “quoted” text",
                             "    indented    code(x) = y + z;", "we'll see what they've done"};
      for (int d = 0; d < 60; ++d) c << lines[d % 6] << " doc " << d << "\n" << lines[(d * 5) % 6] << "\n%\n";
    }
    REQUIRE(run({"prepare", "--input", path("corpus.txt"), "--doc-separator", "%", "--tokenizer", "bpe",
                 "--vocab-size", "300", "--val-fraction", "0.2", "--output", path("data")}).rc == 0);
    std::ofstream(dir / "tiny.yaml") << "run:\n  dir: " << path("run") << "\n  threads: 1\n"
        "data:\n  train: data\n  val: data\n  tokenizer: data/tokenizer.json\n"
        "model:\n  vocab_size: 304\n  seq_len: 16\n  n_layer: 2\n  n_head: 2\n  n_embd: 32\n"
        "train:\n  steps: 30\n  batch_size: 8\n  micro_batch: 8\n  eval_every: 0\n"
        "optim:\n  lr: 0.01\n  warmup_steps: 3\n";
    const Result r = run({"run", path("tiny.yaml")});
    REQUIRE_MESSAGE(r.rc == 0, r.err);
    ckpt = path("run/checkpoints/latest");
  }
  ~Fixture() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string path(const std::string& rel) const { return (dir / rel).string(); }
  Result run(const std::vector<std::string>& args) const {
    const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
    const int st = test::wait_ptrain_status(test::start_ptrain(args, err, out));
    Result r{WIFEXITED(st) ? WEXITSTATUS(st) : 128, test::slurp(out), test::slurp(err)};
    return r;
  }
  // `ptrain tokenize --tokenizer spec [--json]` on `text`.
  Result tokenize(const std::string& spec, const std::string& text, bool json = false) const {
    const fs::path in = dir / "tok-in.txt", out = dir / "tok-out.txt", err = dir / "tok-err.txt";
    std::ofstream(in, std::ios::binary) << text;
    const int rc = sh("timeout 60 " + quote(PTRAIN_TEST_BINARY) + " tokenize --tokenizer " + quote(spec) +
                      (json ? " --json" : "") + " < " + quote(in) + " > " + quote(out) + " 2> " + quote(err));
    return {rc, test::slurp(out), test::slurp(err)};
  }
};

// The ids `ptrain tokenize` prints, parsed.
std::vector<int64_t> ids_of(const std::string& line) {
  std::vector<int64_t> ids;
  std::istringstream in(line);
  for (int64_t id; in >> id;) ids.push_back(id);
  return ids;
}

// Strings whose tokenization the HF client must reproduce: contractions, runs of spaces, tabs and
// newlines, digits, punctuation, multi-byte UTF-8 (letters, CJK, emoji, dashes, quotes).
const std::vector<std::string> kStrings = {
    "Hello world, it's 2024!", "  two  spaces\tand\ttabs\n\nnew lines \n", "don't we'll they're I'M ''s '",
    "café naïve 中文 😀 — “quotes”", "a   b\r\nc", "x = 3.14159 * (y+z);", "   ", "trailing  ", "'s's",
    "\x0bvertical\x0c feed", "The quick brown fox jumps over the lazy dog. doc 17", "    indented    code(x) = y + z;"};

}  // namespace

TEST_CASE("hf export: safetensors an independent reader accepts - PyTorch's loss equal to eval's - bitwise round trip") {
  Fixture fx;
  Result r = fx.run({"export-hf", fx.ckpt, fx.path("hf")});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  for (const char* f : {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                        "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}) {
    CHECK_MESSAGE(fs::exists(fx.dir / "hf" / f), f);
  }
  CHECK(contains(r.err, "padded rows cut"));
  const auto cfg = nlohmann::json::parse(test::slurp(fx.dir / "hf/config.json"));
  const tools::CheckpointModel cm = tools::open_checkpoint_model(fx.ckpt);
  CHECK(cfg["vocab_size"] == cm.tokenizer->vocab_size());
  CHECK(cm.layout->dims().Vp == 304);
  CHECK(cfg["n_positions"] == 16);
  CHECK(cfg["eos_token_id"] == cm.tokenizer->eot());

  // The round trip: import, then compare every tensor bit for bit (wte on its real rows; the
  // import has no padding) and the tokenizer byte for byte.
  r = fx.run({"import-hf", fx.path("hf"), "--out", fx.path("back/gpt.h5")});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(fs::exists(fx.dir / "back/gpt.tokenizer.json"));
  CHECK(fs::exists(fx.dir / "back/gpt.yaml"));
  const tools::CheckpointModel back = tools::open_checkpoint_model(fx.path("back/gpt.h5"));
  CHECK(back.meta.tokenizer_json == cm.meta.tokenizer_json);
  CHECK(test::slurp(fx.dir / "back/gpt.tokenizer.json") == cm.meta.tokenizer_json);
  CHECK(back.meta.step == 0);
  CHECK(back.layout->dims().Vp == back.layout->dims().V);
  int64_t compared = 0;
  for (const TensorSpec& t : cm.layout->tensors()) {
    const TensorSpec& b = back.layout->find(t.name);
    const int64_t n = t.name == "transformer.wte.weight" ? b.count : t.count;
    REQUIRE(n <= b.count);
    CHECK_MESSAGE(std::memcmp(cm.params.data() + t.offset, back.params.data() + b.offset, n * 4) == 0, t.name);
    compared += n;
  }
  CHECK(compared == back.layout->total());
  // Exporting the import again writes the same weights file, byte for byte.
  REQUIRE(fx.run({"export-hf", fx.path("back/gpt.h5"), fx.path("hf2")}).rc == 0);
  CHECK(test::slurp(fx.dir / "hf/model.safetensors") == test::slurp(fx.dir / "hf2/model.safetensors"));
  CHECK(test::slurp(fx.dir / "hf/tokenizer.json") == test::slurp(fx.dir / "hf2/tokenizer.json"));
  // The imported config runs as it is once data.train names token files.
  r = fx.run({"eval", "--checkpoint", fx.path("back/gpt.h5"), "--data", fx.path("data"), "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const double back_loss = nlohmann::json::parse(r.out)["loss"];

  r = fx.run({"eval", "--checkpoint", fx.ckpt, "--data", fx.path("data"), "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const double eval_loss = nlohmann::json::parse(r.out)["loss"];
  CHECK(back_loss == eval_loss);
  CHECK(eval_loss < std::log(300.0) - 0.5);  // trained: the forward check below means something

  const std::string py = PTRAIN_TORCH_PYTHON;
  if (py.empty() || sh(py + " -c 'import torch, numpy' >/dev/null 2>&1") != 0) {
    MESSAGE("skipped the PyTorch forward: no torch for " << py);
    return;
  }
  {
    const TokenFile tf = TokenFile::open(fx.path("data"), "val");
    std::vector<uint32_t> ids(static_cast<size_t>(tf.size()));
    for (int64_t i = 0; i < tf.size(); ++i) ids[i] = static_cast<uint32_t>(tf.at(i));
    std::ofstream(fx.dir / "val.u32", std::ios::binary)
        .write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 4));
  }
  const std::string script = std::string(PTRAIN_TEST_SCRIPTS) + "/check_hf_export.py";
  const int rc = sh("timeout 300 " + py + " " + script + " " + quote(fx.path("hf")) + " --tokens " +
                    quote(fx.path("val.u32")) + " --seq-len 16 --json > " + quote(fx.path("check.json")) + " 2>&1");
  const std::string out = test::slurp(fx.dir / "check.json");
  REQUIRE_MESSAGE(rc == 0, out);
  const auto j = nlohmann::json::parse(out);
  CHECK(j["ok"] == true);
  CHECK(j["tensors"] == cm.layout->tensors().size());
  CHECK(j["parameters"] == cm.layout->total() - (304 - cm.tokenizer->vocab_size()) * 32);
  const double torch_loss = j["loss"];
  MESSAGE("eval " << eval_loss << " vs PyTorch (float64) " << torch_loss);
  CHECK(std::fabs(torch_loss - eval_loss) < 1e-5 * eval_loss);
}

TEST_CASE("hf export: tokenizer.json in @huggingface/tokenizers gives ptrain tokenize's ids") {
  Fixture fx;
  REQUIRE(fx.run({"export-hf", fx.ckpt, fx.path("hf")}).rc == 0);
  // The client, installed once into the build tree (not globally).
  const std::string prefix = PTRAIN_TEST_NODE_DIR;
  const std::string pkg = prefix + "/node_modules/@huggingface/tokenizers";
  if (!fs::exists(pkg + "/dist/tokenizers.mjs")) {
    fs::create_directories(prefix);
    if (sh("command -v node >/dev/null && command -v npm >/dev/null") != 0) {
      MESSAGE("SKIPPED: node or npm is not installed (scripts/install-deps.sh installs them)");
      return;
    }
    const int rc = sh("cd " + quote(prefix) + " && timeout 120 npm install --no-audit --no-fund --silent "
                      "@huggingface/tokenizers@0.2.0 > npm.log 2>&1");
    if (rc != 0 || !fs::exists(pkg + "/dist/tokenizers.mjs")) {
      MESSAGE("SKIPPED: npm could not install @huggingface/tokenizers (offline?): " << test::slurp(prefix + "/npm.log"));
      return;
    }
  }
  std::ofstream(fx.dir / "strings.json") << nlohmann::json(kStrings).dump();
  const std::string script = std::string(PTRAIN_TEST_SCRIPTS) + "/check_hf_tokenizer.mjs";
  const int rc = sh("timeout 60 node " + quote(script) + " " + quote(pkg) + " " + quote(fx.path("hf")) + " " +
                    quote(fx.path("strings.json")) + " > " + quote(fx.path("js.json")) + " 2>&1");
  const std::string js = test::slurp(fx.dir / "js.json");
  REQUIRE_MESSAGE(rc == 0, js);
  const auto hf_ids = nlohmann::json::parse(js);
  REQUIRE(hf_ids.size() == kStrings.size());
  for (size_t i = 0; i < kStrings.size(); ++i) {
    const Result r = fx.tokenize(fx.ckpt, kStrings[i]);
    REQUIRE_MESSAGE(r.rc == 0, r.err);
    CHECK_MESSAGE(hf_ids[i].get<std::vector<int64_t>>() == ids_of(r.out), nlohmann::json(kStrings[i]).dump());
  }
}

TEST_CASE("tokenize: byte - tokenizer.json - data folder - checkpoint - HF folder agree - --json has the pieces") {
  Fixture fx;
  Result r = fx.tokenize("byte", "Hi!\n");
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(r.out == "72 105 33 10\n");
  const std::string text = "It's 2024; don't panic!";
  const Result a = fx.tokenize(fx.path("data/tokenizer.json"), text);
  REQUIRE_MESSAGE(a.rc == 0, a.err);
  CHECK(ids_of(a.out).size() < text.size());  // merges were applied
  CHECK(fx.tokenize(fx.path("data"), text).out == a.out);
  CHECK(fx.tokenize(fx.ckpt, text).out == a.out);
  REQUIRE(fx.run({"export-hf", fx.ckpt, fx.path("hf")}).rc == 0);
  CHECK(fx.tokenize(fx.path("hf/tokenizer.json"), text).out == a.out);
  r = fx.tokenize(fx.path("data"), text, true);
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["ids"].get<std::vector<int64_t>>() == ids_of(a.out));
  std::string joined;
  for (const auto& t : j["tokens"]) joined += t.get<std::string>();
  CHECK(joined == text);
  r = fx.tokenize(fx.path("nowhere.json"), text);
  CHECK(r.rc == 4);
  CHECK(contains(r.err, "nowhere.json"));
}

TEST_CASE("hf import: refusals name the file and the key or tensor") {
  Fixture fx;
  REQUIRE(fx.run({"export-hf", fx.ckpt, fx.path("hf")}).rc == 0);
  auto edit_config = [&](const std::string& key, const nlohmann::json& value) {
    fs::remove_all(fx.dir / "bad");
    fs::copy(fx.dir / "hf", fx.dir / "bad");
    auto c = nlohmann::json::parse(test::slurp(fx.dir / "hf/config.json"));
    c[key] = value;
    std::ofstream(fx.dir / "bad/config.json") << c.dump();
  };
  edit_config("activation_function", "relu");
  Result r = fx.run({"import-hf", fx.path("bad"), "--out", fx.path("x.h5")});
  CHECK(r.rc == 5);
  CHECK_MESSAGE((contains(r.err, "bad/config.json") && contains(r.err, "activation_function")), r.err);
  CHECK(!fs::exists(fx.dir / "x.h5"));
  edit_config("n_embd", 64);  // the tensors no longer fit
  r = fx.run({"import-hf", fx.path("bad"), "--out", fx.path("x.h5")});
  CHECK(r.rc == 5);
  CHECK_MESSAGE((contains(r.err, "model.safetensors") && contains(r.err, "transformer.")), r.err);
  // GPT-2's own tokenizer (a ByteLevel regex over Unicode classes) is not ptrain's.
  edit_config("n_embd", 32);
  auto tj = nlohmann::json::parse(test::slurp(fx.dir / "hf/tokenizer.json"));
  tj["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  std::ofstream(fx.dir / "bad/tokenizer.json") << tj.dump();
  r = fx.run({"import-hf", fx.path("bad"), "--out", fx.path("x.h5")});
  CHECK(r.rc == 8);
  CHECK_MESSAGE((contains(r.err, "bad/tokenizer.json") && contains(r.err, "not implemented yet")), r.err);
  // A damaged safetensors file.
  fs::remove_all(fx.dir / "bad");
  fs::copy(fx.dir / "hf", fx.dir / "bad");
  fs::resize_file(fx.dir / "bad/model.safetensors", fs::file_size(fx.dir / "bad/model.safetensors") - 4);
  r = fx.run({"import-hf", fx.path("bad"), "--out", fx.path("x.h5")});
  CHECK(r.rc == 5);
  CHECK_MESSAGE(contains(r.err, "model.safetensors"), r.err);
  CHECK(!fs::exists(fx.dir / "x.h5"));
}
