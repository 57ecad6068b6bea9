// The checkpoint tools end to end, through the built `ptrain` binary (PTRAIN_TEST_BINARY): init,
// inspect, grad, eval, generate on a tiny config (byte tokenizer, padded vocabulary, a small .tok
// written here), their --json output, and their failures: exit code, message, and no output file
// left behind or overwritten. Results are checked against the libraries where that is cheap (the
// windows in /inputs, padded-row gradients, the greedy continuation recomputed with GptDecoder).
// Also `bench train --tokens` against `ptrain run` on the same token file (the same step).
#include "support/checkpoint_test_util.hpp"
#include "support/ptrain_process.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/checksum_block.hpp"
#include "common/io/hdf5.hpp"
#include "common/io/token_file.hpp"
#include "common/tensor/gpt_init.hpp"
#include "common/tensor/param_layout.hpp"
#include "ptrain/build_config.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace fs = std::filesystem;
using namespace ptrain;

namespace {

struct Result {
  int rc = -1;
  std::string out, err;
};

using test::slurp;

// Runs ptrain with `args`, stdout and stderr captured through files (no pipe to deadlock on).
Result run_ptrain(const std::vector<std::string>& args, const fs::path& work) {
  const fs::path out = work / "stdout.txt", err = work / "stderr.txt";
  const int status = test::wait_ptrain_status(test::start_ptrain(args, err, out));
  Result r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A folder with a tiny config, a byte-tokenized .tok file and (after init()) a checkpoint.
// Model: V 257 padded to 260, T 16, L 2, NH 2, C 16.
struct Fixture {
  fs::path dir;
  std::string config, tok, ckpt;
  std::vector<uint32_t> tokens;
  ModelDims dims{257, 260, 16, 2, 2, 16};

  Fixture() {
    static int counter = 0;
    dir = fs::temp_directory_path() /
          ("ptrain-test-tools-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(dir);
    fs::create_directories(dir);
    config = (dir / "tiny.yaml").string();
    std::ofstream(config) << "run:\n  dir: " << (dir / "run").string() << "\n  seed: 7\n  threads: 1\n"
                             "data:\n  train: train.tok\n  tokenizer: byte\n"
                             "model:\n  vocab_size: 260\n  seq_len: 16\n  n_layer: 2\n  n_head: 2\n"
                             "  n_embd: 16\n"
                             "train:\n  batch_size: 4\n  micro_batch: 2\n";
    // 20 short documents of text, each followed by <|endoftext|> (256).
    for (int d = 0; d < 20; ++d) {
      const std::string text = "doc " + std::to_string(d) + ": the lazy dog sleeps; the fox runs.";
      for (unsigned char c : text) tokens.push_back(c);
      tokens.push_back(256);
    }
    tok = (dir / "train.tok").string();
    write_token_file(tok, 257, tokens);
    ckpt = (dir / "init.h5").string();
  }
  ~Fixture() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string path(const std::string& rel) const { return (dir / rel).string(); }
  Result run(const std::vector<std::string>& args) const { return run_ptrain(args, dir); }
  void init() {
    const Result r = run({"init", config, "--out", ckpt});
    REQUIRE_MESSAGE(r.rc == 0, r.err);
  }
  int64_t windows() const { return (static_cast<int64_t>(tokens.size()) - 1) / dims.T; }
};

nlohmann::json parse_one_json(const Result& r) {
  // Exactly one JSON object, and nothing else, on stdout.
  nlohmann::json j;
  REQUIRE_NOTHROW(j = nlohmann::json::parse(r.out));
  REQUIRE(j.is_object());
  return j;
}

// No file in `dir` whose name contains ".tmp" (an atomic write's leftovers).
bool no_temporaries(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (contains(e.path().filename().string(), ".tmp")) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("tools init: a step-0 checkpoint that inspect --json describes") {
  Fixture fx;
  fx.init();
  const ParamLayout layout(fx.dims);
  const CheckpointData d = read_checkpoint(fx.ckpt, layout);  // verified, layout hash included
  CHECK(d.meta.step == 0);
  CHECK(d.meta.tokens_seen == 0);
  CHECK(d.meta.data.seed == 7);
  CHECK(d.meta.data.epoch == 0);
  CHECK(d.meta.data.position == 0);
  CHECK(std::all_of(d.m.begin(), d.m.end(), [](float x) { return x == 0.0f; }));
  CHECK(std::all_of(d.v.begin(), d.v.end(), [](float x) { return x == 0.0f; }));
  std::vector<float> expect(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, 7, expect);
  CHECK(d.params == expect);
  CHECK(contains(d.meta.config_yaml, "seq_len: 16"));
  CHECK(contains(d.meta.tokenizer_json, "byte"));

  const Result r = fx.run({"inspect", fx.ckpt, "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const nlohmann::json j = parse_one_json(r);
  CHECK(j["step"] == 0);
  CHECK(j["format_version"] == kCheckpointFormatVersion);
  CHECK(j["layout_hash"] == layout.hash());
  CHECK(j["ptrain_version"] == PTRAIN_VERSION);
  // The checksum block as written: the length of the HDF5 part after its 512 bytes.
  CHECK(j["checksum_block"]["length"] == fs::file_size(fx.ckpt) - kChecksumBlockBytes);
  CHECK(j["checksum_block"]["crc32c"].get<std::string>().size() == 10);  // 0x + 8 hex digits
  CHECK(j["model"]["vocab_size"] == 257);
  CHECK(j["model"]["vocab_padded"] == 260);
  CHECK(j["model"]["n_layer"] == 2);
  CHECK(j["model"]["parameters"] == layout.total());
  CHECK(j["tokenizer"]["kind"] == "byte");
  CHECK(j["data"]["seed"] == 7);
  REQUIRE(j["tensors"].size() == layout.tensors().size());
  for (const auto& t : j["tensors"]) {
    CHECK(t["dtype"] == "float32");
    CHECK(t["nan"] == 0);
    CHECK(t["inf"] == 0);
    for (const char* k : {"mean", "std", "min", "max", "l2", "shape"}) CHECK(t.contains(k));
    if (t["name"] == "transformer.h.1.ln_2.weight") {
      CHECK(t["mean"] == 1.0);
      CHECK(t["std"] == 0.0);
      CHECK(t["l2"] == doctest::Approx(4.0));  // sqrt(16)
    }
    if (t["name"] == "transformer.wte.weight") {
      CHECK(t["shape"] == nlohmann::json::array({260, 16}));
      CHECK(t["std"].get<double>() == doctest::Approx(0.02 * std::sqrt(257.0 / 260.0)).epsilon(0.1));
    }
  }
  // --optimizer adds the moments; the human table names tensors.
  const Result opt = fx.run({"inspect", fx.ckpt, "--json", "--optimizer"});
  REQUIRE_MESSAGE(opt.rc == 0, opt.err);
  CHECK(parse_one_json(opt)["tensors"].size() == 3 * layout.tensors().size());
  const Result human = fx.run({"inspect", fx.ckpt});
  CHECK(human.rc == 0);
  CHECK(contains(human.out, "model/transformer.wte.weight"));
  CHECK(contains(human.out, "step"));
  CHECK(contains(human.out, "seq_len: 16"));
  CHECK_MESSAGE(contains(human.out, "checksum     crc32c 0x"), human.out);
  // A checkpoint written before the checksum block still reads, and says it has none.
  const Result old = fx.run(
      {"inspect", std::string(PTRAIN_TEST_FIXTURES) + "/checkpoint_without_checksum_block.h5"});
  CHECK_MESSAGE(old.rc == 0, old.err);
  CHECK_MESSAGE(contains(old.out, "checksum     none (written before the checksum block)"), old.out);

  // --set reaches the stored config; CKPT may be the checkpoint's directory.
  fs::create_directories(fx.dir / "ck");
  const Result wide = fx.run({"init", fx.config, "--set", "model.n_embd=24", "--set", "run.seed=9",
                              "--out", fx.path("ck/checkpoint.h5")});
  REQUIRE_MESSAGE(wide.rc == 0, wide.err);
  const Result dir = fx.run({"inspect", fx.path("ck"), "--json"});
  REQUIRE_MESSAGE(dir.rc == 0, dir.err);
  CHECK(parse_one_json(dir)["model"]["n_embd"] == 24);
  CHECK(parse_one_json(dir)["data"]["seed"] == 9);
}

TEST_CASE("tools init: a failed init leaves no file and keeps an existing one") {
  Fixture fx;
  const std::string out = fx.path("keep.h5");
  std::ofstream(out) << "precious";
  Result r = fx.run({"init", fx.config, "--set", "model.n_embd=15", "--out", out});
  CHECK(r.rc == 3);
  CHECK(contains(r.err, "n_embd"));
  CHECK(slurp(out) == "precious");
  r = fx.run({"init", fx.config, "--set", "model.vocab_size=100", "--out", fx.path("x.h5")});
  CHECK(r.rc == 3);
  CHECK_FALSE(fs::exists(fx.path("x.h5")));
  r = fx.run({"init", fx.config, "--out", fx.path("no/such/dir/x.h5")});
  CHECK(r.rc >= 1);
  CHECK(r.rc <= 127);
  CHECK(contains(r.err, "no/such/dir/x.h5"));
  CHECK(no_temporaries(fx.dir));
  // Overwriting an existing --out is allowed (and atomic).
  r = fx.run({"init", fx.config, "--out", out});
  CHECK(r.rc == 0);
  CHECK(read_checkpoint_meta(out).step == 0);
  CHECK(no_temporaries(fx.dir));
}

TEST_CASE("tools grad: /inputs /loss and /grad at full shape with zero gradient on padded rows") {
  Fixture fx;
  fx.init();
  const ParamLayout layout(fx.dims);
  const int64_t B = 3, T = fx.dims.T;
  const std::string out = fx.path("g.h5");
  const Result r = fx.run({"grad", "--checkpoint", fx.ckpt, "--data", fx.tok, "--batch-size",
                           std::to_string(B), "--out", out});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(r.out.empty());

  h5::File f = h5::File::open(out);
  h5::Dataset in = f.open_dataset("inputs");
  CHECK(in.type().dtype == h5::DType::kInt32);
  REQUIRE(in.shape() == std::vector<int64_t>{B, T + 1});
  std::vector<int32_t> windows(static_cast<size_t>(B * (T + 1)));
  in.read(windows);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t <= T; ++t) {
      CHECK(windows[b * (T + 1) + t] == static_cast<int32_t>(fx.tokens[b * T + t]));
    }
  }
  h5::Dataset loss = f.open_dataset("loss");
  CHECK(loss.type().dtype == h5::DType::kFloat32);
  CHECK(loss.shape().empty());
  float l = 0;
  loss.read(std::span<float>(&l, 1));
  CHECK(l == doctest::Approx(std::log(257.0)).epsilon(0.05));  // near-uniform at init

  double sq = 0.0;
  for (const auto& t : layout.tensors()) {
    h5::Dataset g = f.open_dataset("grad/" + t.name);
    CHECK(g.type().dtype == h5::DType::kFloat32);
    CHECK(g.shape() == t.shape);
    std::vector<float> v(static_cast<size_t>(t.count));
    g.read(v);
    for (float x : v) {
      CHECK(std::isfinite(x));
      sq += static_cast<double>(x) * x;
    }
    if (t.name == "transformer.wte.weight") {
      for (int64_t row = fx.dims.V; row < fx.dims.Vp; ++row) {
        for (int64_t c = 0; c < fx.dims.C; ++c) CHECK(v[row * fx.dims.C + c] == 0.0f);
      }
    }
  }
  CHECK(sq > 0.0);
  f.close();

  // The same loss from the library (mean over B·T targets; grad's micro-batches sum to it).
  const CheckpointData d = read_checkpoint(fx.ckpt, layout, false);
  auto backend = make_cpu_backend(1);
  Gpt gpt(layout, *backend, B);
  GptState state(layout, *backend);
  state.upload_params(d.params);
  const LossSum ls = gpt.forward_loss(state, windows, B, T);
  CHECK(ls.tokens == B * T);
  CHECK(l == doctest::Approx(ls.mean()).epsilon(1e-5));
}

TEST_CASE("tools grad: refusals name the file and leave no output") {
  Fixture fx;
  fx.init();
  const std::string out = fx.path("g.h5");
  // Too few windows.
  const int64_t have = fx.windows();
  Result r = fx.run({"grad", "--checkpoint", fx.ckpt, "--data", fx.tok, "--batch-size",
                     std::to_string(have + 1), "--out", out});
  CHECK(r.rc == 5);
  CHECK_MESSAGE(contains(r.err, fx.tok + " has " + std::to_string(have) +
                                    " windows of T+1 = 17 tokens, --batch-size " +
                                    std::to_string(have + 1) + " needs " + std::to_string(have + 1)),
                r.err);
  CHECK_FALSE(fs::exists(out));
  // Exactly enough is fine.
  r = fx.run({"grad", "--checkpoint", fx.ckpt, "--data", fx.tok, "--batch-size",
              std::to_string(have), "--out", out});
  CHECK_MESSAGE(r.rc == 0, r.err);
  const std::string before = slurp(out);

  // A token file from another tokenizer (vocabulary 300): refused, the old output untouched.
  const std::string other = fx.path("other.tok");
  write_token_file(other, 300, fx.tokens);
  r = fx.run({"grad", "--checkpoint", fx.ckpt, "--data", other, "--batch-size", "2", "--out", out});
  CHECK(r.rc == 5);
  CHECK_MESSAGE(contains(r.err, other), r.err);
  CHECK_MESSAGE(contains(r.err, "tokenizer"), r.err);
  CHECK(slurp(out) == before);

  // A damaged checkpoint.
  testing::poke_value(fx.ckpt, "model/transformer.h.1.attn.c_proj.weight");
  r = fx.run({"grad", "--checkpoint", fx.ckpt, "--data", fx.tok, "--batch-size", "2", "--out", out});
  CHECK(r.rc == 6);
  CHECK_MESSAGE(contains(r.err, "transformer.h.1.attn.c_proj.weight"), r.err);
  CHECK(slurp(out) == before);
  r = fx.run({"grad", "--checkpoint", fx.ckpt, "--data", fx.tok, "--batch-size", "0", "--out", out});
  CHECK(r.rc == 2);
  CHECK(no_temporaries(fx.dir));
}

TEST_CASE("tools eval: --json prints one object with the loss over every complete window") {
  Fixture fx;
  fx.init();
  Result r = fx.run({"eval", "--checkpoint", fx.ckpt, "--data", fx.tok, "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  const nlohmann::json j = parse_one_json(r);
  const int64_t windows = fx.windows();
  CHECK(j["windows"] == windows);
  CHECK(j["tokens"] == windows * fx.dims.T);
  CHECK(j["step"] == 0);
  const double loss = j["loss"];
  CHECK(loss == doctest::Approx(std::log(257.0)).epsilon(0.05));
  CHECK(j["perplexity"].get<double>() == doctest::Approx(std::exp(loss)));

  // Equal to the library's mean over all windows in one batch.
  const ParamLayout layout(fx.dims);
  const CheckpointData d = read_checkpoint(fx.ckpt, layout, false);
  auto backend = make_cpu_backend(1);
  Gpt gpt(layout, *backend, windows);
  GptState state(layout, *backend);
  state.upload_params(d.params);
  std::vector<int32_t> all(static_cast<size_t>(windows * (fx.dims.T + 1)));
  const TokenFile tf = TokenFile::open(fx.tok);
  for (int64_t w = 0; w < windows; ++w) {
    tf.window(w, fx.dims.T,
              std::span<int32_t>(all).subspan(static_cast<size_t>(w * (fx.dims.T + 1)),
                                              static_cast<size_t>(fx.dims.T + 1)));
  }
  CHECK(loss == doctest::Approx(gpt.forward_loss(state, all, windows, fx.dims.T).mean()).epsilon(1e-5));

  // The human form, and a file without a complete window.
  r = fx.run({"eval", "--checkpoint", fx.ckpt, "--data", fx.tok});
  CHECK(r.rc == 0);
  CHECK(contains(r.out, "perplexity"));
  const std::string small = fx.path("small.tok");
  write_token_file(small, 257, std::vector<uint32_t>(10, 65));
  r = fx.run({"eval", "--checkpoint", fx.ckpt, "--data", small, "--json"});
  CHECK(r.rc == 5);
  CHECK_MESSAGE(contains(r.err, small), r.err);
  CHECK(r.out.empty());
}

TEST_CASE("tools generate: greedy is deterministic - --no-echo prints only the continuation") {
  Fixture fx;
  fx.init();
  const std::string prompt = "the lazy";
  const std::vector<std::string> args{"generate", "--checkpoint", fx.ckpt, "--prompt", prompt,
                                      "--temperature", "0", "--max-tokens", "5", "--no-echo"};
  const Result a = fx.run(args);
  REQUIRE_MESSAGE(a.rc == 0, a.err);
  const Result b = fx.run(args);
  CHECK(a.out == b.out);

  // Recompute the greedy continuation with the library: argmax over the real vocabulary.
  const ParamLayout layout(fx.dims);
  const CheckpointData d = read_checkpoint(fx.ckpt, layout, false);
  auto backend = make_cpu_backend(1);
  GptState state(layout, *backend);
  state.upload_params(d.params);
  GptDecoder dec(layout, *backend);
  std::span<const float> logits;
  for (unsigned char c : prompt) logits = dec.step(state, c);
  std::string expect;
  for (int i = 0; i < 5; ++i) {
    int32_t best = 0;
    for (int32_t v = 1; v < 257; ++v) {
      if (logits[v] > logits[best]) best = v;
    }
    if (best == 256) break;  // <|endoftext|>: stop, print nothing for it
    expect.push_back(static_cast<char>(best));
    if (i < 4) logits = dec.step(state, best);
  }
  CHECK(a.out == expect);
  // By default the prompt comes first, and the text ends as a line.
  std::vector<std::string> echoed = args;
  echoed.pop_back();
  const Result ae = fx.run(echoed);
  REQUIRE_MESSAGE(ae.rc == 0, ae.err);
  CHECK(ae.out == prompt + expect + "\n");

  // Sampling with a seed is reproducible.
  const std::vector<std::string> sampled{"generate", "--checkpoint", fx.ckpt, "--prompt", prompt,
                                         "--temperature", "1.5", "--top-k", "20", "--seed", "11",
                                         "--max-tokens", "10", "--no-echo"};
  const Result s1 = fx.run(sampled);
  const Result s2 = fx.run(sampled);
  REQUIRE_MESSAGE(s1.rc == 0, s1.err);
  CHECK(s1.out == s2.out);
  // An empty prompt starts from <|endoftext|>.
  const Result e = fx.run({"generate", "--checkpoint", fx.ckpt, "--prompt", "", "--temperature",
                           "0", "--max-tokens", "3", "--no-echo"});
  CHECK_MESSAGE(e.rc == 0, e.err);
  CHECK(e.out.size() <= 3);
  // Bad values are usage errors, naming the flag.
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--temperature", "-1"}, {"--top-k", "-3"}, {"--top-p", "0"}, {"--top-p", "1.5"},
           {"--num-samples", "0"}, {"--threads", "-1"}, {"--max-new-tokens", "-1"}}) {
    const Result bad = fx.run({"generate", "--checkpoint", fx.ckpt, "--prompt", "x", flag, value});
    CHECK_MESSAGE(bad.rc == 2, flag);
    CHECK_MESSAGE(contains(bad.err, flag), bad.err);
  }
}

// Greedy decoding over the whole context each time (no cache, no window): the reference the
// sliding window is checked against while the context fits.
TEST_CASE("tools generate: past seq_len the context slides - a long prompt keeps its end") {
  Fixture fx;
  fx.init();
  const int64_t T = fx.dims.T;
  // 40 new tokens with T = 16, from a 10-token prompt, greedy and with --ignore-eot so nothing
  // stops it early: exactly 40 bytes follow the prompt.
  const std::string prompt = "the lazy d";
  const Result r = fx.run({"generate", "--checkpoint", fx.ckpt, "--prompt", prompt, "--temperature",
                           "0", "--max-new-tokens", "40", "--ignore-eot", "--no-echo"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  CHECK(contains(r.err, "slid"));
  // <|endoftext|> is written as text: count decoded tokens by replaying the greedy rule below.
  const ParamLayout layout(fx.dims);
  const CheckpointData d = read_checkpoint(fx.ckpt, layout, false);
  auto backend = make_cpu_backend(1);
  GptState state(layout, *backend);
  state.upload_params(d.params);
  GptDecoder dec(layout, *backend);
  std::vector<int32_t> ctx(prompt.begin(), prompt.end());
  std::string expect;
  const int64_t keep = T - T / 4;
  std::span<const float> logits;
  for (int32_t id : ctx) logits = dec.step(state, id);
  for (int i = 0; i < 40; ++i) {
    int32_t best = 0;
    for (int32_t v = 1; v < 257; ++v) {
      if (logits[v] > logits[best]) best = v;
    }
    expect += best == 256 ? std::string("<|endoftext|>") : std::string(1, static_cast<char>(best));
    ctx.push_back(best);
    if (dec.position() < T) {
      logits = dec.step(state, best);
    } else {  // full: restart on the newest 3T/4 tokens
      dec.reset();
      for (size_t k = ctx.size() - static_cast<size_t>(keep); k < ctx.size(); ++k) {
        logits = dec.step(state, ctx[k]);
      }
    }
  }
  CHECK(r.out == expect);

  // A prompt longer than the context keeps its last T tokens (warned), like a window.
  const std::string tail(T, 'b');
  const Result longp = fx.run({"generate", "--checkpoint", fx.ckpt, "--prompt", "aaaa" + tail,
                               "--temperature", "0", "--max-tokens", "3", "--no-echo"});
  REQUIRE_MESSAGE(longp.rc == 0, longp.err);
  CHECK(contains(longp.err, "seq_len"));
  const Result same = fx.run({"generate", "--checkpoint", fx.ckpt, "--prompt", tail,
                              "--temperature", "0", "--max-tokens", "3", "--no-echo"});
  CHECK(longp.out == same.out);
}

TEST_CASE("tools generate: --num-samples - --top-p - --threads - eval --threads") {
  Fixture fx;
  fx.init();
  const std::string prompt = "the";
  const std::vector<std::string> base{"generate", "--checkpoint", fx.ckpt, "--prompt", prompt,
                                      "--temperature", "1.2", "--seed", "5", "--max-tokens", "6",
                                      "--ignore-eot"};
  auto with = [&](std::vector<std::string> more) {
    std::vector<std::string> a = base;
    a.insert(a.end(), more.begin(), more.end());
    return fx.run(a);
  };
  // Three samples, each the prompt and its text, separated; the first is the single sample.
  const Result three = with({"--num-samples", "3"});
  REQUIRE_MESSAGE(three.rc == 0, three.err);
  const Result one = with({});
  REQUIRE(one.rc == 0);
  const std::string sep = "\n---------------\n";
  size_t pieces = 1;
  for (size_t at = three.out.find(sep); at != std::string::npos; at = three.out.find(sep, at + 1)) ++pieces;
  CHECK(pieces == 3);
  CHECK(three.out.starts_with(one.out.substr(0, one.out.size() - 1)));  // less the final newline
  for (size_t at = 0, n = 0; n < 3; ++n) {
    CHECK(three.out.compare(at, prompt.size(), prompt) == 0);
    at = three.out.find(sep, at);
    if (at == std::string::npos) break;
    at += sep.size();
  }
  // A tiny top-p keeps only the most likely token: sampling becomes greedy.
  const Result nucleus = with({"--top-p", "1e-9"});
  const Result greedy = fx.run({"generate", "--checkpoint", fx.ckpt, "--prompt", prompt,
                                "--temperature", "0", "--max-tokens", "6", "--ignore-eot"});
  REQUIRE_MESSAGE(nucleus.rc == 0, nucleus.err);
  CHECK(nucleus.out == greedy.out);
  // top-p 1 is no cut: the same draw as without it.
  CHECK(with({"--top-p", "1"}).out == one.out);
  // --threads changes nothing in the result, for generate and eval alike.
  CHECK(with({"--threads", "2"}).out == one.out);
  const Result e1 = fx.run({"eval", "--checkpoint", fx.ckpt, "--data", fx.tok, "--json", "--threads", "1"});
  const Result e0 = fx.run({"eval", "--checkpoint", fx.ckpt, "--data", fx.tok, "--json"});
  REQUIRE_MESSAGE(e1.rc == 0, e1.err);
  CHECK(nlohmann::json::parse(e1.out)["loss"].get<double>() ==
        doctest::Approx(nlohmann::json::parse(e0.out)["loss"].get<double>()).epsilon(1e-6));
  const Result eb = fx.run({"eval", "--checkpoint", fx.ckpt, "--data", fx.tok, "--threads", "-2"});
  CHECK(eb.rc == 2);
  CHECK(contains(eb.err, "--threads"));
}

TEST_CASE("tools inspect --diff: relative change per tensor and a different layout refused") {
  Fixture fx;
  fx.init();
  const std::string other = fx.path("other.h5");
  REQUIRE(fx.run({"init", fx.config, "--set", "run.seed=8", "--out", other}).rc == 0);
  Result r = fx.run({"inspect", fx.ckpt, "--diff", fx.ckpt, "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  nlohmann::json j = parse_one_json(r);
  for (const auto& t : j["tensors"]) CHECK(t["rel_change"] == 0.0);
  CHECK(j["diff"]["rel_change"] == 0.0);

  r = fx.run({"inspect", fx.ckpt, "--diff", other, "--json"});
  REQUIRE_MESSAGE(r.rc == 0, r.err);
  j = parse_one_json(r);
  for (const auto& t : j["tensors"]) {
    const std::string name = t["name"];
    if (contains(name, "ln_") || contains(name, ".bias")) {
      CHECK_MESSAGE(t["rel_change"] == 0.0, name);  // ones and zeros whatever the seed
    } else {
      // Two independent N(0, s) draws: ‖A−B‖/‖B‖ ≈ sqrt(2).
      CHECK_MESSAGE(t["rel_change"].get<double>() == doctest::Approx(std::sqrt(2.0)).epsilon(0.25),
                    name);
    }
  }
  r = fx.run({"inspect", fx.ckpt, "--diff", other});
  CHECK(r.rc == 0);
  CHECK(contains(r.out, "rel_change"));

  const std::string wide = fx.path("wide.h5");
  REQUIRE(fx.run({"init", fx.config, "--set", "model.n_embd=32", "--out", wide}).rc == 0);
  r = fx.run({"inspect", fx.ckpt, "--diff", wide, "--json"});
  CHECK(r.rc == 6);
  CHECK(contains(r.err, "layout"));
  CHECK(contains(r.err, wide));
  CHECK(r.out.empty());
}

TEST_CASE("tools: --device cpu runs - cuda says what is missing - a bad value names the valid ones") {
  Fixture fx;
  fx.init();
  const std::vector<std::vector<std::string>> tools{
      {"eval", "--checkpoint", fx.ckpt, "--data", fx.tok, "--json"},
      {"grad", "--checkpoint", fx.ckpt, "--data", fx.tok, "--batch-size", "3", "--out",
       fx.path("g.h5")},
      {"generate", "--checkpoint", fx.ckpt, "--prompt", "the", "--temperature", "0",
       "--max-tokens", "4"},
      {"bench", "train", fx.config, "--steps", "1", "--warmup", "0", "--json"}};
  for (const auto& base : tools) {
    CAPTURE(base[0]);
    auto with = [&](const std::string& device) {
      std::vector<std::string> a = base;
      a.insert(a.end(), {"--device", device});
      return fx.run(a);
    };
    const Result plain = fx.run(base);
    const Result cpu = with("cpu");
    REQUIRE_MESSAGE(cpu.rc == 0, cpu.err);
    if (base[0] != "bench") CHECK(cpu.out == plain.out);  // the stored device.type is cpu
    // No GPU 999 anywhere: not built (8), or no driver / no such GPU (10), said before any output.
    const Result cuda = with("cuda:999");
    CHECK((cuda.rc == 8 || cuda.rc == 10));
    CHECK_MESSAGE(contains(cuda.err, "--device 'cuda:999'"), cuda.err);
    CHECK((contains(cuda.err, "not implemented yet") || contains(cuda.err, "no CUDA driver") ||
           contains(cuda.err, "no GPU") || contains(cuda.err, "driver supports")));
    CHECK(cuda.out.empty());
    const Result bad = with("gpu");
    CHECK(bad.rc == 2);
    CHECK_MESSAGE(contains(bad.err, "--device 'gpu' is not a device; valid devices: cpu, cuda, cuda:N"),
                  bad.err);
  }
}

TEST_CASE("tools bench train --tokens: the step of `ptrain run` on the same windows - the same loss") {
  Fixture fx;
  // The job: 3 steps, 1 worker, 1 server; bench train: 1 warmup + 2 timed steps with the same
  // schedule length, on the job's token file. The last step's loss (computed on the weights of
  // two updates) and learning rate must be the job's, to the bit (JSON keeps doubles exact).
  const Result job = fx.run({"run", fx.config, "--set", "cluster.launch=threads", "--set",
                             "train.steps=3", "--set", "train.log_every=1", "--set",
                             "train.eval_every=0", "--set", "checkpoint.resume=never"});
  REQUIRE_MESSAGE(job.rc == 0, job.err);
  nlohmann::json last;
  std::ifstream log(fx.path("run/train.jsonl"));
  for (std::string line; std::getline(log, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss") && j["step"] == 3) last = j;
  }
  REQUIRE(last.is_object());
  const Result bench = fx.run({"bench", "train", fx.config, "--tokens", fx.tok, "--set",
                               "train.steps=3", "--warmup", "1", "--steps", "2", "--json"});
  REQUIRE_MESSAGE(bench.rc == 0, bench.err);
  const nlohmann::json j = parse_one_json(bench);
  CHECK(j["tokens"] == fx.tok);
  CHECK(j["V"] == 257);
  CHECK(j["Vp"] == 260);
  CHECK(j["loss"].get<double>() == last["loss"].get<double>());
  CHECK(j["lr"].get<double>() == last["lr"].get<double>());

  const Result missing = fx.run({"bench", "train", fx.config, "--tokens", fx.path("none.tok")});
  CHECK(missing.rc != 0);
  CHECK_MESSAGE(contains(missing.err, "none.tok"), missing.err);
  CHECK(missing.out.empty());
  const Result both = fx.run({"bench", "train", fx.config, "--tokens", fx.tok, "--compare-launch"});
  CHECK(both.rc == 2);
  CHECK_MESSAGE(contains(both.err, "--tokens and --profile belong to bench train's own step"),
                both.err);
}

TEST_CASE("tools: every tool refuses a damaged or missing checkpoint and names it") {
  Fixture fx;
  fx.init();
  testing::poke_value(fx.ckpt, "optimizer/m/transformer.wpe.weight");
  // Moments are checked where they are read (inspect --optimizer); the weights still serve eval.
  Result r = fx.run({"inspect", fx.ckpt, "--optimizer"});
  CHECK(r.rc == 6);
  CHECK_MESSAGE(contains(r.err, "optimizer/m/transformer.wpe.weight"), r.err);
  CHECK(fx.run({"eval", "--checkpoint", fx.ckpt, "--data", fx.tok}).rc == 0);

  testing::poke_value(fx.ckpt, "model/transformer.wte.weight");
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"inspect", fx.ckpt},
           {"eval", "--checkpoint", fx.ckpt, "--data", fx.tok},
           {"generate", "--checkpoint", fx.ckpt, "--prompt", "x"}}) {
    r = fx.run(args);
    CHECK_MESSAGE(r.rc == 6, args[0]);
    CHECK_MESSAGE(contains(r.err, "model/transformer.wte.weight"), r.err);
    CHECK_MESSAGE(contains(r.err, fx.ckpt), r.err);
    CHECK(r.out.empty());
  }
  const std::string cut = fx.path("cut.h5");
  fs::copy_file(fx.ckpt, cut);
  fs::resize_file(cut, fs::file_size(cut) / 2);
  r = fx.run({"inspect", cut, "--json"});
  CHECK(r.rc == 6);
  CHECK(contains(r.err, "damaged or truncated"));
  CHECK(r.out.empty());
  // One byte changed on disk (no HDF5 involved): every reader refuses it at the checksum block,
  // before HDF5 opens the file, naming the file and both checksums.
  const std::string flipped = fx.path("flipped.h5");
  fs::copy_file(fx.ckpt, flipped);
  {
    std::fstream f(flipped, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(flipped) / 3));
    f.put('\x5a');
  }
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"inspect", flipped},
           {"eval", "--checkpoint", flipped, "--data", fx.tok},
           {"generate", "--checkpoint", flipped, "--prompt", "x"},
           {"grad", "--checkpoint", flipped, "--data", fx.tok, "--batch-size", "2", "--out",
            fx.path("g.h5")},
           {"export-hf", flipped, fx.path("hf-out")}}) {
    r = fx.run(args);
    CHECK_MESSAGE(r.rc == 6, args[0] << ": " << r.err);
    CHECK_MESSAGE(contains(r.err, flipped + ": damaged or truncated: its checksum block expects crc32c 0x"), r.err);
    CHECK_MESSAGE(contains(r.err, "the file has crc32c 0x"), r.err);
  }
  r = fx.run({"eval", "--checkpoint", fx.path("missing.h5"), "--data", fx.tok});
  CHECK(r.rc == 4);
  CHECK(contains(r.err, "missing.h5"));
}

TEST_CASE("tools: scripts/check_checkpoint.py accepts what init writes") {
  const std::string py = PTRAIN_TORCH_PYTHON;
  if (py.empty() || std::system((py + " -c 'import h5py, numpy' >/dev/null 2>&1").c_str()) != 0) {
    MESSAGE("skipped: no h5py for " << py);
    return;
  }
  Fixture fx;
  fx.init();
  const std::string script = std::string(PTRAIN_TEST_SCRIPTS) + "/check_checkpoint.py";
  Result r = run_ptrain({"inspect", fx.ckpt}, fx.dir);  // warm: the file is closed and complete
  REQUIRE(r.rc == 0);
  const int rc = std::system((py + " " + script + " --json " + fx.ckpt + " > " +
                              fx.path("check.json") + " 2>&1").c_str());
  CHECK(WIFEXITED(rc));
  CHECK(WEXITSTATUS(rc) == 0);
  const nlohmann::json j = nlohmann::json::parse(slurp(fx.path("check.json")));
  CHECK(j["ok"] == true);
  CHECK(j["layout_hash"] == ParamLayout(fx.dims).hash());
  CHECK(j["parameters"] == ParamLayout(fx.dims).total());
}

TEST_CASE("tools eval: data made with another tokenizer is refused naming both - same-tokenizer data runs") {
  Fixture fx;
  fx.init();  // tokenizer byte
  const std::string byte_hash = tokenizer_hash(*make_byte_tokenizer());
  // The same tokens stamped with the byte tokenizer's hash: evaluated.
  write_token_file(fx.path("same.tok"), 257, fx.tokens, byte_hash);
  const Result ok = fx.run({"eval", "--checkpoint", fx.ckpt, "--data", fx.path("same.tok"), "--json"});
  CHECK_MESSAGE(ok.rc == 0, ok.err);
  // Stamped with another tokenizer's hash (a BPE of the same size would look alike by vocabulary).
  const std::string other(64, 'a');
  write_token_file(fx.path("other.tok"), 257, fx.tokens, other);
  const Result bad = fx.run({"eval", "--checkpoint", fx.ckpt, "--data", fx.path("other.tok")});
  CHECK(bad.rc == 5);
  CHECK(contains(bad.err, "other.tok"));
  CHECK(contains(bad.err, other.substr(0, 32)));
  CHECK(contains(bad.err, byte_hash.substr(0, 32)));
}
