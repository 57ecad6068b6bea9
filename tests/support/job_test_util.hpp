// Helpers for tests that run whole threads jobs: a temporary run folder, a small synthetic corpus
// as a token file, a small config, and per-tensor comparisons of weight vectors.
#pragma once

#include "common/config/config.hpp"
#include "common/io/token_file.hpp"
#include "common/tensor/param_layout.hpp"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <cstdlib>
#include <vector>

namespace ptrain::testing {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "job") {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("ptrain-test-" + tag + "-" + std::to_string(::getpid()) + "-" +
            std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  // PTRAIN_TEST_KEEP_DIRS=1 keeps the folders (logs, ledgers) to read after a failed run.
  ~TempDir() {
    if (const char* keep = std::getenv("PTRAIN_TEST_KEEP_DIRS"); keep != nullptr && *keep == '1') {
      return;
    }
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

// A byte-token corpus with learnable structure (repeated phrases with some noise).
inline void write_corpus(const std::string& file, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  const std::string phrases[] = {"the quick brown fox ", "jumps over the lazy dog. ",
                                 "parameter servers aggregate gradients; ", "%\n"};
  std::vector<uint32_t> toks;
  toks.reserve(static_cast<size_t>(n));
  while (static_cast<int64_t>(toks.size()) < n) {
    const std::string& p = phrases[rng() % 4];
    for (char c : p) toks.push_back(static_cast<unsigned char>(c));
    if (rng() % 7 == 0) toks.push_back(256);  // <|endoftext|>
  }
  toks.resize(static_cast<size_t>(n));
  write_token_file(file, 257, toks);
}

// A tiny GPT on a synthetic corpus in `dir`: 1 worker, 1 server, 5 steps, no checkpoints but the
// final one, no resume, no evaluation.
inline Config small_config(const TempDir& dir) {
  const std::string train = dir / "train.tok";
  if (!std::filesystem::exists(train)) write_corpus(train, 20000, 1);
  Config c;
  c.source = "<test>";
  c.run.dir = dir / "run";
  c.run.seed = 1234;
  c.run.threads = 0;  // the machine's cores shared among the workers (and among the servers)
  c.data.train = train;
  c.data.val = "";
  c.data.tokenizer = "byte";
  c.model.vocab_size = 0;
  c.model.seq_len = 16;
  c.model.n_layer = 2;
  c.model.n_head = 2;
  c.model.n_embd = 32;
  c.train.steps = 5;
  c.train.batch_size = 8;
  c.train.micro_batch = 4;
  c.train.eval_every = 0;
  c.train.eval_windows = 8;
  c.train.log_every = 1;
  c.optim.lr = 1e-2;
  c.optim.min_lr = 1e-3;
  c.optim.warmup_steps = 2;
  c.optim.weight_decay = 0.1;
  c.optim.grad_clip = 1.0;
  c.cluster.workers = 1;
  c.cluster.servers = 1;
  c.cluster.launch = Launch::kThreads;
  c.checkpoint.every_steps = 0;
  c.checkpoint.keep = 3;
  c.checkpoint.resume = "never";
  return c;
}

inline ParamLayout layout_for(const Config& c) {
  return ParamLayout(model_dims(c.model, 257));
}

// sqrt(Σ(a-b)²) / sqrt(Σb²) over one tensor (0 when both are zero).
inline double rel_l2(const float* a, const float* b, int64_t n) {
  double d = 0, r = 0;
  for (int64_t i = 0; i < n; ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    r += double(b[i]) * b[i];
  }
  return r > 0 ? std::sqrt(d / r) : std::sqrt(d);
}

// The worst per-tensor relative L2 of a against the reference b, and which tensor.
struct Worst {
  double value = 0;
  std::string tensor;
};
inline Worst worst_rel_l2(const ParamLayout& layout, const std::vector<float>& a,
                          const std::vector<float>& b) {
  Worst w;
  for (const auto& t : layout.tensors()) {
    const double e = rel_l2(a.data() + t.offset, b.data() + t.offset, t.count);
    if (e >= w.value) w = {e, t.name};
  }
  return w;
}

// The same, with the attention key biases (columns [C, 2C) of every c_attn.bias) left out: their
// true gradient is exactly 0 (softmax ignores a constant added to a row of scores), so what they
// receive is rounding noise that AdamW normalises; any change of summation order moves them.
// `key_bias` gets the worst relative L2 of those parts, measured against the whole bias.
inline Worst worst_rel_l2_without_key_bias(const ParamLayout& layout,
                                           const std::vector<float>& a,
                                           const std::vector<float>& b, double* key_bias) {
  Worst w;
  if (key_bias) *key_bias = 0;
  const int64_t C = layout.dims().C;
  for (const auto& t : layout.tensors()) {
    double e = 0;
    if (t.name.find("attn.c_attn.bias") != std::string::npos) {
      double d = 0, r = 0, dk = 0;
      for (int64_t i = 0; i < t.count; ++i) {
        const double x = a[static_cast<size_t>(t.offset + i)];
        const double y = b[static_cast<size_t>(t.offset + i)];
        r += y * y;
        if (i >= C && i < 2 * C) {
          dk += (x - y) * (x - y);
        } else {
          d += (x - y) * (x - y);
        }
      }
      e = r > 0 ? std::sqrt(d / r) : std::sqrt(d);
      if (key_bias) *key_bias = std::max(*key_bias, r > 0 ? std::sqrt(dk / r) : std::sqrt(dk));
    } else {
      e = rel_l2(a.data() + t.offset, b.data() + t.offset, t.count);
    }
    if (e >= w.value) w = {e, t.name};
  }
  return w;
}

// `ptrain eval --checkpoint CKPT --data DATA --json` through the built binary (PTRAIN_TEST_BINARY,
// defined for every test executable): its "loss". Throws when the command fails.
inline double ptrain_eval_loss(const std::string& ckpt, const std::string& data) {
  const std::string cmd = std::string("'") + PTRAIN_TEST_BINARY + "' eval --checkpoint '" + ckpt +
                          "' --data '" + data + "' --json 2>/dev/null";
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) throw std::runtime_error("cannot run " + cmd);
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  if (::pclose(f) != 0) throw std::runtime_error("failed: " + cmd);
  return nlohmann::json::parse(out).at("loss").get<double>();
}

inline std::vector<std::string> read_lines(const std::string& file) {
  std::ifstream in(file);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// The lines of a file another process is appending to: only those already ended by a newline
// (the last one may be half written).
inline std::vector<std::string> read_complete_lines(const std::string& file) {
  std::ifstream in(file);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    if (in.eof()) break;  // no newline after it (yet)
    out.push_back(line);
  }
  return out;
}

}  // namespace ptrain::testing
