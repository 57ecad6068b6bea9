// The job configuration as typed structs. Parsed once, at the edge (config.cpp is the only file
// that includes yaml-cpp), validated there, and passed down by value. Every key is documented in
// configs/defaults.yaml; relative paths resolve against the config file's folder.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ptrain {

enum class Launch { kThreads, kProcesses, kMpi };
// The data plane between servers and workers (cluster.transport). kAuto: MPI under
// `cluster.launch: mpi`, else TCP (effective_transport()).
enum class DataTransport { kAuto, kTcp, kMpi };
enum class SyncMode { kBsp, kSsp, kAsync, kLocal };
// How pushes and pulls carry their floats (cluster.wire_dtype): fp32, or bf16 rounded to nearest
// even (servers keep fp32 weights and moments and aggregate in fp32).
enum class WireDtype { kFp32, kBf16 };
enum class DeviceType { kCpu, kCuda };
// What a device's matrix products read: fp32, or bf16 copies of their operands (fp32
// accumulation and outputs; docs/cuda.md). The cpu backend computes in fp32 either way.
enum class DevicePrecision { kFp32, kBf16 };
enum class ModelArch { kGpt, kBert };

// The config spelling of a device type ("cpu", "cuda"): what the worker's backend factory takes.
const char* device_type_name(DeviceType type);
// The config spelling of a model architecture ("gpt", "bert").
const char* model_arch_name(ModelArch arch);
// The config spelling of a sync mode ("bsp", "ssp", "async", "local").
const char* sync_mode_name(SyncMode mode);
// cluster.sync ssp or async: every step is one worker's push, applied as soon as its turn comes
// (docs/sync_modes.md).
inline bool is_async_sync(SyncMode mode) {
  return mode == SyncMode::kSsp || mode == SyncMode::kAsync;
}

struct RunConfig {
  std::string dir = "runs/default";  // absolute after resolution
  uint64_t seed = 1337;
  int threads = 0;  // compute threads per process; 0 = all cores
  int64_t max_memory = 0;  // bytes all roles on this machine may use; 0 = auto (available memory)

  bool operator==(const RunConfig&) const = default;
};

struct DataConfig {
  std::string train;             // .tok file (absolute after resolution)
  std::string val;               // .tok file, "" = no validation
  std::string tokenizer = "byte";  // "byte" or a tokenizer.json path (absolute after resolution)

  bool operator==(const DataConfig&) const = default;
};

struct ModelConfig {
  int64_t vocab_size = 0;  // 0 in the struct means `auto` (the tokenizer's size)
  int64_t seq_len = 128;
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t n_embd = 128;
  ModelArch arch = ModelArch::kGpt;  // gpt: causal LM (GPT-2); bert: masked LM (BertForMaskedLM)
  // bert only: 0 = the masked-LM head; K > 0 = a K-way sequence-classification head (pooler +
  // classifier, BertForSequenceClassification), as in the checkpoints `ptrain finetune` writes.
  int64_t num_labels = 0;

  bool operator==(const ModelConfig&) const = default;
};

struct DeviceConfig {
  DeviceType type = DeviceType::kCpu;  // each worker's compute device (`cuda`: when built with CUDA)
  DevicePrecision precision = DevicePrecision::kFp32;  // matmul operands on a cuda device
  bool allow_tf32 = false;  // fp32 products on a cuda device may use TF32 tensor cores

  bool operator==(const DeviceConfig&) const = default;
};

struct TrainConfig {
  int64_t steps = 1000;
  int64_t batch_size = 16;  // sequences per step across all workers
  int64_t micro_batch = 8;  // sequences per forward/backward on one worker
  int64_t eval_every = 100;  // 0 = never (the final step is always evaluated when data.val is set)
  int64_t eval_windows = 0;  // windows of data.val per evaluation; 0 = all (the default)
  int64_t log_every = 10;
  // `ptrain run` prints a sample of this many tokens from each checkpoint it writes (from
  // <|endoftext|>, the start of a document); 0 = none.
  int64_t sample_tokens = 0;

  bool operator==(const TrainConfig&) const = default;
};

struct OptimConfig {
  double lr = 6e-4;
  double min_lr = 6e-5;
  int64_t warmup_steps = 100;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  // 0 = off

  bool operator==(const OptimConfig&) const = default;
};

struct ClusterConfig {
  int64_t workers = 1;
  int64_t servers = 1;
  Launch launch = Launch::kProcesses;
  DataTransport transport = DataTransport::kAuto;
  SyncMode sync = SyncMode::kBsp;
  int64_t staleness = 0;
  WireDtype wire_dtype = WireDtype::kFp32;
  // bf16 only: each worker adds what rounding dropped from an element to its next push.
  bool wire_error_feedback = false;
  // cluster.sync local (docs/local_sgd.md): inner AdamW steps per outer step on each worker, and
  // the servers' outer Nesterov SGD on the averaged pseudo-gradient.
  int64_t local_steps = 1;
  double outer_lr = 0.7;
  double outer_momentum = 0.9;
  // Overlap of the data plane with compute (docs/distributed.md "Overlap"): gradients leave in
  // buckets of this many MiB as backward finishes them, weights arrive in pieces of this size in
  // forward order; 0 = pull everything, compute, push everything (no overlap).
  double bucket_mb = 25.0;
  double heartbeat_s = 1.0;      // TCP roles: a heartbeat each way every this many seconds
  double peer_timeout_s = 5.0;   // TCP roles: a peer silent this long is lost
  // Elastic membership (docs/elastic.md).
  int64_t min_workers = 1;       // fewest workers a step runs with; below it the job waits
  int64_t max_workers = 0;       // most workers at once (0 = no cap); more joiners are refused
  double wait_timeout_s = 600.0; // waiting below min_workers this long: checkpoint and stop
  double step_deadline_s = 0.0;  // a step closes this long after it began with what arrived (0 = off)
  int64_t max_restarts = 3;      // `ptrain run`: restarts of the job after a lost server/coordinator

  bool operator==(const ClusterConfig&) const = default;
};

// cluster.transport with `auto` resolved: kMpi under `cluster.launch: mpi`, else kTcp.
inline DataTransport effective_transport(const ClusterConfig& c) {
  if (c.transport != DataTransport::kAuto) return c.transport;
  return c.launch == Launch::kMpi ? DataTransport::kMpi : DataTransport::kTcp;
}

struct CheckpointConfig {
  int64_t every_steps = 0;  // 0 = only the final step
  double every_minutes = 10.0;  // also a checkpoint once this many minutes passed since the last (0 = off)
  int64_t keep = 3;
  std::string resume = "auto";  // "auto", "never" or a path (absolute after resolution)

  bool operator==(const CheckpointConfig&) const = default;
};

struct StatusConfig {
  int64_t port = 0;  // the coordinator's HTTP status port; 0 = a free port (RUN_DIR/status.addr)

  bool operator==(const StatusConfig&) const = default;
};

// `ptrain finetune` only: a sequence-classification head trained from a BERT checkpoint.
struct FinetuneConfig {
  std::string checkpoint;  // the pretrained BERT (masked-LM) checkpoint
  std::string train;       // JSONL {"text": ..., "label": ...} (absolute after resolution)
  std::string val;         // JSONL, the held-out split accuracy is reported on
  int64_t epochs = 3;      // passes over finetune.train (batches of train.batch_size)

  bool operator==(const FinetuneConfig&) const = default;
};

struct Config {
  RunConfig run;
  DataConfig data;
  ModelConfig model;
  DeviceConfig device;
  TrainConfig train;
  OptimConfig optim;
  ClusterConfig cluster;
  CheckpointConfig checkpoint;
  StatusConfig status;
  FinetuneConfig finetune;

  std::string source;  // where it came from (file path, or "<checkpoint>" ...), for messages

  // Every key with its resolved value, as YAML (paths absolute). Stored in checkpoints;
  // parse_config_text(to_yaml()) gives back an equal Config.
  std::string to_yaml() const;

  // Same settings in every key; `source` is provenance and is not compared.
  bool operator==(const Config& other) const;
};

// Batches of train.batch_size sequences one step trains on: cluster.local_steps under
// cluster.sync local (a step is an outer step of that many inner steps), else 1.
inline int64_t local_steps_per_step(const Config& c) {
  return c.cluster.sync == SyncMode::kLocal ? c.cluster.local_steps : 1;
}

// One `--set a.b=value` override.
struct ConfigOverride {
  std::string key;
  std::string value;
};

// Parses a YAML file, applies overrides, resolves relative paths against the file's folder and
// validates every key. Throws ConfigError naming file:line:col, the key, and for an unknown key the
// nearest valid one.
Config load_config(const std::string& path, const std::vector<ConfigOverride>& overrides = {});

// The same from text; relative paths resolve against `base_dir`; `origin` names it in messages.
Config parse_config_text(const std::string& yaml_text, const std::string& origin,
                         const std::string& base_dir,
                         const std::vector<ConfigOverride>& overrides = {});

// Parses "a.b=value" (as given to --set). Throws UsageError when malformed.
ConfigOverride parse_override(const std::string& text);

// The keys whose values differ between two configs, in defaults.yaml order, each with both values
// as to_yaml() writes them (resume compares the checkpoint's config with the run's).
struct ConfigDifference {
  std::string key, before, after;
};
std::vector<ConfigDifference> config_differences(const Config& before, const Config& after);

// Every valid key, "section.name", in defaults.yaml order.
const std::vector<std::string>& config_keys();

}  // namespace ptrain
