// Start-up checks of a job's inputs (preflight.hpp).
#include "launch/preflight.hpp"

#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/tensor/param_layout.hpp"
#include "common/util/fs.hpp"
#include "coordinator/start_state.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace ptrain {
namespace {

namespace fs = std::filesystem;

std::string gib(double bytes) { return fmt::format("{:.2f} GiB", bytes / (1024.0 * 1024 * 1024)); }

// run.dir and run.dir/checkpoints exist (made if needed) and take a new file.
void check_writable(const std::string& dir, const std::string& what) {
  make_dirs(dir);
  const std::string probe = (fs::path(dir) / fmt::format(".write-test.{}", ::getpid())).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw IoError(fmt::format("{} {} is not writable: {}", what, dir, std::strerror(errno)));
  }
  ::close(fd);
  ::unlink(probe.c_str());
}

void check_token_file(const std::string& path, const char* key, const char* split,
                      const ModelDims& dims, const std::string& tokenizer, const Tokenizer& tok) {
  const TokenFile f = TokenFile::open(path, split);  // header, checksum, every id below its vocab
  // data.tokenizer is what generate, eval and export will decode with.
  check_data_tokenizer(fmt::format("{} ({})", path, key), f.tokenizer_hash(), tok,
                       fmt::format("data.tokenizer ({})", tokenizer));
  if (f.vocab_size() > dims.V) {
    throw DataError(fmt::format("{} ({}) was written with a vocabulary of {} tokens, the "
                                "tokenizer ({}) has {}: ids up to {} would index past the model's "
                                "embedding",
                                path, key, f.vocab_size(), tokenizer, dims.V, f.vocab_size() - 1));
  }
  if (f.num_windows(dims.T) < 1) {
    throw DataError(fmt::format("{} ({}) has no complete window: {} tokens, a window is "
                                "model.seq_len + 1 = {}",
                                path, key, f.size(), dims.T + 1));
  }
}

}  // namespace

MemoryEstimate estimate_memory(const Config& c, int64_t tokenizer_vocab) {
  const double V = static_cast<double>(
      c.model.vocab_size > 0 ? std::max(c.model.vocab_size, tokenizer_vocab) : tokenizer_vocab);
  const double T = static_cast<double>(c.model.seq_len);
  const double L = static_cast<double>(c.model.n_layer);
  const double NH = static_cast<double>(c.model.n_head);
  const double C = static_cast<double>(c.model.n_embd);
  const double S = static_cast<double>(c.cluster.servers);
  const double W = static_cast<double>(c.cluster.workers);
  const double B = static_cast<double>(c.train.batch_size);
  const double mb = static_cast<double>(std::min(c.train.micro_batch, c.train.batch_size));
  constexpr double kF = 4;             // bytes per float
  constexpr double kBase = 64 << 20;   // a process's own code, libraries, buffers
  // GPT-2: wte, wpe, per layer 12·C² + 13·C, the final LayerNorm.
  const double P = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
  MemoryEstimate e;
  // A worker: weights and gradients, and the activations of one micro-batch (per layer the
  // residual stream, LayerNorms, QKV, the attention rows' log-sum-exp (NH per position: no T×T
  // scores are kept) and the 4·C MLP; logits and probabilities V per position), kept for backward
  // and mirrored by their gradients.
  const double acts = mb * T * (L * (16 * C + NH + 6) + 2 * V + 4 * C);
  const double worker = kBase + 2 * P * kF + 2 * acts * kF;
  const std::string worker_keys =
      2 * acts > 2 * P ? "train.micro_batch x model.seq_len x (model.n_layer x model.n_embd + "
                         "vocabulary)"
                       : "model.n_embd^2 x model.n_layer + vocabulary x model.n_embd";
  // A server: its 1/S of weights, both AdamW moments and the gradient sum, plus one gradient
  // slot per worker (summed in worker-id order).
  const double server = kBase + (4 + W) * (P / S) * kF;
  // The coordinator: the step's plan (window indices and leases) per sequence of the batch.
  const double coordinator = kBase + 32 * B;
  e.roles.push_back({"coordinator", 1, coordinator, "train.batch_size"});
  e.roles.push_back({"each server", c.cluster.servers, server,
                     "model.n_embd^2 x model.n_layer / cluster.servers, x cluster.workers"});
  e.roles.push_back({"each worker", c.cluster.workers, worker, worker_keys});
  for (const RoleMemory& r : e.roles) e.total_bytes += static_cast<double>(r.count) * r.bytes;
  return e;
}

int64_t available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream ss(line.substr(13));
      int64_t kib = 0;
      ss >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

void preflight_job(const Config& config, bool allow_config_change) {
  if (config.model.num_labels > 0) {
    throw ConfigError(fmt::format(
        "{}: model.num_labels is {}: a classification head is trained by `ptrain finetune`; "
        "pretraining (masked LM) needs model.num_labels 0",
        config.source, config.model.num_labels));
  }
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(config.data.tokenizer);
  // Memory first: nothing below allocates by the model's size before it is known to fit.
  const MemoryEstimate mem = estimate_memory(config, tokenizer->vocab_size());
  const bool automatic = config.run.max_memory <= 0;
  const double limit =
      static_cast<double>(automatic ? available_memory() : config.run.max_memory);
  if (limit > 0 && mem.total_bytes > limit) {
    const RoleMemory* big = &mem.roles.front();
    for (const RoleMemory& r : mem.roles) {
      if (static_cast<double>(r.count) * r.bytes > static_cast<double>(big->count) * big->bytes) {
        big = &r;
      }
    }
    std::string parts;
    for (const RoleMemory& r : mem.roles) {
      parts += fmt::format("{}{} {}{}", parts.empty() ? "" : ", ", r.role, gib(r.bytes),
                           r.count > 1 ? fmt::format(" x {}", r.count) : "");
    }
    throw ConfigError(fmt::format(
        "{}: this job needs about {} of memory ({}), more than run.max_memory = {}{}; the largest "
        "part, {}, grows with {}: lower those keys, or raise run.max_memory",
        config.source, gib(mem.total_bytes), parts, gib(limit),
        automatic ? " (auto: the memory available on this machine)" : "", big->role,
        big->driven_by));
  }
  const ModelDims dims = model_dims(config.model, tokenizer->vocab_size());
  check_token_file(config.data.train, "data.train", "train", dims, config.data.tokenizer, *tokenizer);
  if (!config.data.val.empty()) {
    check_token_file(config.data.val, "data.val", "val", dims, config.data.tokenizer, *tokenizer);
  }
  check_writable(config.run.dir, "run.dir");
  check_writable((fs::path(config.run.dir) / "checkpoints").string(), "the checkpoint folder");
  // The checkpoint a resume would read: readable, and written for this model. Silent: the
  // coordinator loads it again and reports what the resume changes.
  check_start_state(config, ParamLayout(dims), allow_config_change);
}

}  // namespace ptrain
