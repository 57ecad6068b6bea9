// The messages that coordinator, parameter servers and workers exchange, as plain structs. They
// carry no behaviour; codec.hpp turns them into frames and back. The same encoded frames travel
// between threads (inproc transport) and over TCP — only the wire differs. The data plane's
// floats (GradPush::grads, PullReply::weights) are FloatRanges: borrowed views, not copies.
//
// One training step in bsp (docs/architecture.md "One training step"):
//   coordinator → worker   StepBegin{step, windows}
//   worker → server        PullRequest{version = step}      server → worker  PullReply{weights}
//   worker → server        GradPush{token-sum gradient of its slice, token count}
//   coordinator → server   StepWorkers{worker ids}          (sent with StepBegin: whom step t waits for)
//   server → coordinator   PushReceived{worker}            worker → coordinator WorkerStepDone{loss}
//   server → coordinator   NormReport{fp64 partial Σg², worker ids}   (as soon as the server holds
//                          every listed worker's push: of their token-weighted mean gradient)
//   coordinator → server   StepCommit{clip coefficient}     server → coordinator StepApplied{lr}
//   coordinator → worker   StepBegin{step + 1} right after StepCommit (the pull of version t+1
//                          waits on the server until the update is applied)
// Only when a worker is lost or late mid-step does the coordinator fix the contributor set
// itself (StepContributors{worker ids}; each server answers with a NormReport for that set) —
// the extra round trip costs only steps that lost someone (docs/architecture.md).
// Checkpoints (sharded, protocol version 2): CheckpointShard{tmp dir} → each server writes its own
// shard-K.h5 there and answers CheckpointShardWritten (a small ack); the coordinator then writes the
// index (finish_sharded_checkpoint). No message ever gathers a server's weights and moments to
// another process (the retired types 12 and 13 did; see MessageType).
// Start and resume (protocol version 3): LoadShard{version, fresh seed or checkpoint path} → each
// server initialises or reads its own slice and answers ShardLoaded; no weights cross the wire.
// Validation (protocol version 3): EvalBegin{version, windows of data.val} → each worker pulls that
// version, runs the forward pass and answers EvalDone{per-batch loss sums}. End: Shutdown. A role
// that fails: Failure.
//
// Steps are 0-based indices here: step t uses weights version t (t optimizer updates applied) and,
// once committed, produces version t+1. Logs and checkpoints count applied steps (t+1).
//
// cluster.sync ssp and async (protocol version 8; docs/sync_modes.md): every step is ONE worker's
// push, the steps still applied one after another in the coordinator's order, each through the
// messages above. What changes is when a worker computes:
//   coordinator → worker   LeaseGrant{lease, windows, min_version}   (as soon as the staleness
//                          bound allows: the worker is at most cluster.staleness pushes ahead)
//   worker → server        PullRequest{version = min_version}  (the server answers with the
//                          newest version it holds, never an older one)
//   worker → coordinator   PushReady{lease, base_version}      (its gradient is computed)
//   coordinator → worker   StepBegin{step, the lease's windows} when the step's turn comes; the
//                          worker pushes the gradient it holds, and the step runs as in bsp.
//
// cluster.sync local (protocol version 9; docs/local_sgd.md): a worker keeps its inner AdamW
// state across outer steps. At a checkpoint the coordinator sends each worker InnerStateSave{tmp
// dir, slot} beside the servers' CheckpointShard; at a resume, InnerStateLoad{checkpoint, slot}
// before the first step; the worker answers InnerStateDone.
#pragma once

#include "common/proto/float_range.hpp"

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace ptrain::proto {

// "PTRN" as the first four bytes of every frame (read as a little-endian uint32).
inline constexpr uint32_t kMagic = 0x4E525450u;
// Bumped on any change of the header or of a message's payload layout.
// 2: CheckpointShard / CheckpointShardWritten; byte counters in WorkerStepDone and StepApplied.
// 3: LoadShard names a seed or a checkpoint instead of carrying weights; ShardLoaded, EvalBegin,
//    EvalDone.
// 4: the header's CRC32C covers the header only; the payload's CRC32C follows the payload (a
//    4-byte trailer), so a sender computes it while writing borrowed floats (codec.hpp).
//    Types 12 and 13 (CheckpointRequest / CheckpointReply) retired.
// 5: WorkerStepDone carries `correct` (masked-LM accuracy of BERT runs).
// 6: PullRequest, PullReply and GradPush carry a FloatEncoding (u8; in the bulk messages just
//    before the float count): fp32, or bf16 packed two per 4-byte element (bf16.hpp).
// 7: StepWorkers (type 25) tells the servers a step's workers at its begin; NormReport names the
//    worker set its partial norm covers (a server reports as soon as it holds every push).
// 8: LeaseGrant (26) and PushReady (27) for cluster.sync ssp and async.
// 9: InnerStateSave (28), InnerStateLoad (29) and InnerStateDone (30): cluster.sync local's
//    worker-held inner optimizer state in checkpoints.
inline constexpr uint16_t kProtocolVersion = 9;

enum class MessageType : uint16_t {
  kLoadShard = 1,
  kStepBegin = 2,
  kPullRequest = 3,
  kPullReply = 4,
  kGradPush = 5,
  kPushReceived = 6,
  kWorkerStepDone = 7,
  kStepContributors = 8,
  kNormReport = 9,
  kStepCommit = 10,
  kStepApplied = 11,
  // 12 and 13 are retired (CheckpointRequest / CheckpointReply gathered one server's weights and
  // both AdamW moments to the coordinator; checkpoints are sharded instead). Never reuse them:
  // a frame of either type is refused by name (retired_type_name).
  kShutdown = 14,
  kFailure = 15,
  // TCP roles: registration, peer identification and liveness.
  kRegister = 16,
  kWelcome = 17,
  kPeerHello = 18,
  kHeartbeat = 19,
  // Protocol version 2: sharded checkpoints.
  kCheckpointShard = 20,
  kCheckpointShardWritten = 21,
  // Protocol version 3: servers load their own slices; workers run validation.
  kShardLoaded = 22,
  kEvalBegin = 23,
  kEvalDone = 24,
  // Protocol version 7: servers learn a step's workers at its begin.
  kStepWorkers = 25,
  // Protocol version 8: cluster.sync ssp and async.
  kLeaseGrant = 26,
  kPushReady = 27,
  // Protocol version 9: cluster.sync local's inner optimizer state.
  kInnerStateSave = 28,
  kInnerStateLoad = 29,
  kInnerStateDone = 30,
};
inline constexpr uint16_t kMinMessageType = 1;
inline constexpr uint16_t kMaxMessageType = 30;
// The name a retired message type had ("CheckpointRequest" for 12), or nullptr for any other value.
// A retired number lies inside [kMinMessageType, kMaxMessageType] but is not a MessageType.
const char* retired_type_name(uint16_t type);

// How a bulk message's floats are encoded (cluster.wire_dtype). kFp32: one value per 4-byte
// element. kBf16: two bf16 values per 4-byte element, an odd count padded (common/proto/bf16.hpp),
// so the FloatRange holds ceil(range.size() / 2) elements. The codec refuses any other value.
enum class FloatEncoding : uint8_t { kFp32 = 0, kBf16 = 1 };
inline constexpr uint8_t kMaxFloatEncoding = 1;
// "fp32" / "bf16".
const char* encoding_name(FloatEncoding e);
// The 4-byte elements a bulk message carries for `values` values in encoding `e`.
inline constexpr int64_t encoded_size(FloatEncoding e, int64_t values) {
  return e == FloatEncoding::kBf16 ? (values + 1) / 2 : values;
}

// A contiguous range [begin, end) of the flat parameter vector, in floats.
struct KeyRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const KeyRange&) const = default;
};

// coordinator → server: take up the state of your range at `version`, from a fresh
// initialisation (`checkpoint` empty: GPT-2 init from `seed`, zero moments) or from the checkpoint
// at `checkpoint` (a path every role can read: its weights and moments of the range, verified).
// The server answers ShardLoaded, or Failure naming the file.
struct LoadShard {
  static constexpr MessageType kType = MessageType::kLoadShard;
  int64_t version = 0;  // optimizer steps already applied (a checkpoint's step must equal it)
  int64_t membership_epoch = 0;  // pushes from older epochs are refused
  KeyRange range;
  uint64_t seed = 0;       // run.seed, for a fresh start
  std::string checkpoint;  // checkpoint .h5 file to resume from; "" = fresh
  bool operator==(const LoadShard&) const = default;
};

// coordinator → worker: compute step `step` on these windows of data.train (positions of the
// data plan already resolved to window indices, in order).
struct StepBegin {
  static constexpr MessageType kType = MessageType::kStepBegin;
  int64_t step = 0;
  int64_t membership_epoch = 0;
  std::vector<int64_t> windows;
  bool operator==(const StepBegin&) const = default;
};

// any → server: send me the weights of `range` (the whole shard or a piece of it) at `version`
// (answered once the server has it).
struct PullRequest {
  static constexpr MessageType kType = MessageType::kPullRequest;
  uint64_t request_id = 0;  // echoed in the reply
  int64_t version = 0;
  KeyRange range;
  FloatEncoding encoding = FloatEncoding::kFp32;  // how the reply should carry the weights
  bool operator==(const PullRequest&) const = default;
};

struct PullReply {
  static constexpr MessageType kType = MessageType::kPullReply;
  uint64_t request_id = 0;
  int64_t version = 0;
  KeyRange range;
  // encoded_size(encoding, range.size()) elements; borrowed from the server's weights (or their
  // bf16 encoding) when sent
  FloatRange weights;
  // On the wire before the floats (a float body is always last); declared after them so that
  // `PullReply{id, version, range, floats}` stays an fp32 reply.
  FloatEncoding encoding = FloatEncoding::kFp32;
  bool operator==(const PullReply&) const = default;
};

// worker → server: the worker's gradient of `range` for `step`, summed over its `tokens` targets
// (grad_scale 1: d Σ token losses / dθ, not a mean). `range` is the server's whole shard, or —
// gradient buckets pushed during backward (cluster.bucket_mb) — a piece of it; the server counts
// the worker once its pieces cover the shard, each element once. `tokens` is the step's total in
// every piece.
struct GradPush {
  static constexpr MessageType kType = MessageType::kGradPush;
  int64_t step = 0;
  int64_t membership_epoch = 0;
  int32_t worker_id = 0;
  int64_t tokens = 0;
  KeyRange range;
  // encoded_size(encoding, range.size()) elements; borrowed from the worker's gradient (or its
  // bf16 encoding) when sent
  FloatRange grads;
  FloatEncoding encoding = FloatEncoding::kFp32;  // on the wire before the floats (as PullReply)
  bool operator==(const GradPush&) const = default;
};

// server → coordinator: a push for `step` from `worker_id` has been accepted.
struct PushReceived {
  static constexpr MessageType kType = MessageType::kPushReceived;
  int32_t server_id = 0;
  int64_t step = 0;
  int32_t worker_id = 0;
  int64_t tokens = 0;
  bool operator==(const PushReceived&) const = default;
};

// worker → coordinator: the worker finished `step` (its pushes are sent).
struct WorkerStepDone {
  static constexpr MessageType kType = MessageType::kWorkerStepDone;
  int32_t worker_id = 0;
  int64_t step = 0;
  double loss_sum = 0.0;  // Σ token cross-entropy (nats) over its windows
  int64_t tokens = 0;     // targets counted
  double pull_s = 0.0;    // seconds waiting for weights
  double compute_s = 0.0; // seconds in forward/backward
  double push_s = 0.0;    // seconds sending gradients
  uint64_t bytes_pushed = 0;  // GradPush frame bytes this worker sent since it started
  uint64_t bytes_pulled = 0;  // PullReply frame bytes this worker received since it started
  // Masked-LM (BERT): of `tokens` targets, how many the model's argmax predicted; -1 for a model
  // without a token accuracy (GPT).
  int64_t correct = -1;
  bool operator==(const WorkerStepDone&) const = default;
};

// coordinator → server, with the step's StepBegin: step `step` waits for these workers (ascending
// ids). Once the server holds a push of `step` from every one of them it reduces them (the
// token-weighted mean, in worker-id order) and sends its NormReport for exactly this set without
// being asked. A second StepWorkers for the same step (the step begun again after every worker
// was dropped) replaces the first and drops a reduction made for it.
struct StepWorkers {
  static constexpr MessageType kType = MessageType::kStepWorkers;
  int64_t step = 0;
  int64_t membership_epoch = 0;
  std::vector<int32_t> workers;
  bool operator==(const StepWorkers&) const = default;
};

// coordinator → server, only when a worker of the step was lost or missed the step's deadline:
// step `step` aggregates exactly these workers (ascending ids; those whose push reached every
// server); reply with the partial norm of that set's aggregated gradient (replacing a reduction
// the server made on its own for the StepWorkers set).
struct StepContributors {
  static constexpr MessageType kType = MessageType::kStepContributors;
  int64_t step = 0;
  int64_t membership_epoch = 0;
  std::vector<int32_t> workers;
  bool operator==(const StepContributors&) const = default;
};

// server → coordinator: Σ g² (fp64, fixed chunks in order) of the server's slice of the step's
// token-weighted mean gradient over `workers`, and the first non-finite element (flat index, -1
// if none). Sent on its own once every worker of StepWorkers pushed, and as the answer to
// StepContributors; the coordinator uses the reports whose `workers` equal the set it commits.
struct NormReport {
  static constexpr MessageType kType = MessageType::kNormReport;
  int32_t server_id = 0;
  int64_t step = 0;
  double sum_squares = 0.0;
  int64_t tokens = 0;           // total tokens of the contributor set (cross-check)
  int64_t first_nonfinite = -1; // flat index into the parameter vector
  std::vector<int32_t> workers; // the set reduced (ascending ids)
  bool operator==(const NormReport&) const = default;
};

// coordinator → server: apply step `step` with this clip coefficient (1 when clipping is off or
// the norm is within bounds). `workers` repeats the contributor set as a cross-check.
struct StepCommit {
  static constexpr MessageType kType = MessageType::kStepCommit;
  int64_t step = 0;
  std::vector<int32_t> workers;
  double global_norm = 0.0;
  float clip_coef = 1.0f;
  bool operator==(const StepCommit&) const = default;
};

// server → coordinator: step `step` applied; the server now holds `version` (= step + 1).
struct StepApplied {
  static constexpr MessageType kType = MessageType::kStepApplied;
  int32_t server_id = 0;
  int64_t step = 0;
  int64_t version = 0;
  double lr = 0.0;  // learning rate used
  uint64_t bytes_pushed = 0;  // GradPush frame bytes this server received since it started
  uint64_t bytes_pulled = 0;  // PullReply frame bytes this server sent since it started
  bool operator==(const StepApplied&) const = default;
};

// coordinator → everyone: stop after this message.
struct Shutdown {
  static constexpr MessageType kType = MessageType::kShutdown;
  std::string reason;
  bool operator==(const Shutdown&) const = default;
};

// any role → coordinator: this role failed and is stopping. `code` is an ExitCode value.
struct Failure {
  static constexpr MessageType kType = MessageType::kFailure;
  int32_t code = 1;
  std::string message;
  bool operator==(const Failure&) const = default;
};

// ---- TCP roles: sent only over TCP, after the HMAC handshake (common/net/auth.hpp) ----

// server|worker → coordinator, the first frame on its connection: "give me an id". Servers name
// the HOST:PORT where workers reach them; workers send "".
struct Register {
  static constexpr MessageType kType = MessageType::kRegister;
  uint8_t role = 2;            // net::Role value (1 server, 2 worker)
  std::string listen_address;  // servers: HOST:PORT of their data listener
  std::string host;            // the peer's host name (for logs and /status)
  bool operator==(const Register&) const = default;
};

// coordinator → server|worker once every role has registered: who you are and everything about
// the job. The receiver computes the layout from config + tokenizer and compares its hash.
struct Welcome {
  static constexpr MessageType kType = MessageType::kWelcome;
  int32_t id = 0;                   // server id (0..S-1) or worker id (0..W-1), arrival order
  int64_t membership_epoch = 0;
  std::string config_yaml;          // the resolved config (paths absolute)
  std::string layout_hash;          // ParamLayout::hash() on the coordinator
  std::string tokenizer_json;       // Tokenizer::to_json()
  std::string server_addresses;     // server k's HOST:PORT on line k ('\n'-separated)
  bool operator==(const Welcome&) const = default;
};

// worker → server, the first frame on a data connection: which worker this connection is.
struct PeerHello {
  static constexpr MessageType kType = MessageType::kPeerHello;
  uint8_t role = 2;  // net::Role value
  int32_t id = 0;
  int64_t membership_epoch = 0;
  bool operator==(const PeerHello&) const = default;
};

// Both ways on every TCP connection, every cluster.heartbeat_s; consumed by the transport.
struct Heartbeat {
  static constexpr MessageType kType = MessageType::kHeartbeat;
  int64_t sent_unix_ms = 0;
  bool operator==(const Heartbeat&) const = default;
};

// coordinator → server: write your weights and moments at `version` to TMP_DIR/shard-K.h5
// (write_checkpoint_shard; K = server id) and answer CheckpointShardWritten. It
// waits until the server holds `version` (like a PullRequest); an older version is refused.
// `tmp_dir` is checkpoint_tmp_dir(run.dir, version), a path on a file system every role shares.
struct CheckpointShard {
  static constexpr MessageType kType = MessageType::kCheckpointShard;
  uint64_t request_id = 0;
  int64_t version = 0;
  std::string tmp_dir;
  bool operator==(const CheckpointShard&) const = default;
};

// server → coordinator: shard `server_id` of `version` is written, fsync'd and renamed in place.
// A server that cannot write it answers Failure instead.
struct CheckpointShardWritten {
  static constexpr MessageType kType = MessageType::kCheckpointShardWritten;
  uint64_t request_id = 0;
  int32_t server_id = 0;
  int64_t version = 0;
  KeyRange range;           // the slice the shard holds
  double write_s = 0.0;     // seconds spent writing it
  bool operator==(const CheckpointShardWritten&) const = default;
};

// server → coordinator: the range is loaded at `version`; pulls of it are served from now on.
struct ShardLoaded {
  static constexpr MessageType kType = MessageType::kShardLoaded;
  int32_t server_id = 0;
  int64_t version = 0;
  KeyRange range;
  double load_s = 0.0;  // seconds spent initialising or reading
  bool operator==(const ShardLoaded&) const = default;
};

// coordinator → worker: the validation loss of weights `version` over windows
// [window_begin, window_end) of data.val (file order), in batches of `batch` windows starting at
// window_begin (the last one may be shorter). The coordinator cuts the val windows into batches
// from window 0 and gives each worker whole batches, so a batch is the same whatever the number
// of workers (see common/data/eval_batches.hpp).
struct EvalBegin {
  static constexpr MessageType kType = MessageType::kEvalBegin;
  uint64_t request_id = 0;  // echoed in EvalDone
  int64_t version = 0;
  int64_t window_begin = 0;
  int64_t window_end = 0;
  int64_t batch = 1;
  bool operator==(const EvalBegin&) const = default;
};

// worker → coordinator: per batch of its EvalBegin, in order, Σ token cross-entropy (nats, as
// Gpt::forward_loss sums it) and the number of targets.
struct EvalDone {
  static constexpr MessageType kType = MessageType::kEvalDone;
  uint64_t request_id = 0;
  int32_t worker_id = 0;
  int64_t version = 0;
  int64_t window_begin = 0;
  std::vector<double> loss_sums;
  std::vector<int64_t> tokens;  // loss_sums.size() entries
  double eval_s = 0.0;          // seconds in the forward passes (pull excluded)
  bool operator==(const EvalDone&) const = default;
};

// coordinator → worker (cluster.sync ssp, async): compute a gradient on these windows of
// data.train from weights of version `min_version` or newer (the worker's own last push is
// always in it), then say PushReady. The push itself waits for the StepBegin that names the same
// windows.
struct LeaseGrant {
  static constexpr MessageType kType = MessageType::kLeaseGrant;
  uint64_t lease_id = 0;
  int64_t membership_epoch = 0;
  int64_t min_version = 0;
  std::vector<int64_t> windows;
  bool operator==(const LeaseGrant&) const = default;
};

// worker → coordinator: the gradient of lease `lease_id` is computed, from weights of version
// `base_version` (the oldest version among the servers' replies).
struct PushReady {
  static constexpr MessageType kType = MessageType::kPushReady;
  int32_t worker_id = 0;
  uint64_t lease_id = 0;
  int64_t base_version = 0;
  bool operator==(const PushReady&) const = default;
};

// coordinator → worker (cluster.sync local), at a checkpoint, no step running: write your inner
// optimizer state as TMP_DIR/inner-R.h5, R = `slot` (common/io/inner_state.hpp), and answer
// InnerStateDone. `tmp_dir` is the one the servers write their shards to.
struct InnerStateSave {
  static constexpr MessageType kType = MessageType::kInnerStateSave;
  uint64_t request_id = 0;
  int64_t version = 0;  // the checkpoint's step
  int64_t slot = 0;
  std::string tmp_dir;
  bool operator==(const InnerStateSave&) const = default;
};

// coordinator → worker (cluster.sync local), at a resume before the first step: take slot
// `slot`'s inner optimizer state from checkpoint `checkpoint` (of step `version`) and answer
// InnerStateDone.
struct InnerStateLoad {
  static constexpr MessageType kType = MessageType::kInnerStateLoad;
  uint64_t request_id = 0;
  int64_t version = 0;
  int64_t slot = 0;
  std::string checkpoint;
  bool operator==(const InnerStateLoad&) const = default;
};

// worker → coordinator: the InnerStateSave or InnerStateLoad `request_id` is done. A worker that
// cannot do it answers Failure instead.
struct InnerStateDone {
  static constexpr MessageType kType = MessageType::kInnerStateDone;
  uint64_t request_id = 0;
  int32_t worker_id = 0;
  int64_t version = 0;
  int64_t slot = 0;
  int64_t inner_steps = 0;  // AdamW steps the state holds
  double seconds = 0.0;     // spent writing or reading it
  bool operator==(const InnerStateDone&) const = default;
};

using Message = std::variant<LoadShard, StepBegin, PullRequest, PullReply, GradPush, PushReceived,
                             WorkerStepDone, StepContributors, NormReport, StepCommit, StepApplied,
                             Shutdown, Failure, Register, Welcome, PeerHello, Heartbeat,
                             CheckpointShard, CheckpointShardWritten, ShardLoaded, EvalBegin,
                             EvalDone, StepWorkers, LeaseGrant, PushReady, InnerStateSave,
                             InnerStateLoad, InnerStateDone>;

MessageType type_of(const Message& m);
// "GradPush", "PullReply", ... ("unknown(N)" for a value outside the enum).
const char* type_name(MessageType t);
// Bulk messages (float payloads, EvalDone's per-batch sums) get the large payload limit; all
// others the small one.
bool is_bulk(MessageType t);

}  // namespace ptrain::proto
