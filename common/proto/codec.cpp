#include "common/proto/codec.hpp"

#include "common/util/hash.hpp"
#include "common/util/huge_pages.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <type_traits>

namespace ptrain::proto {

static_assert(std::endian::native == std::endian::little,
              "the codec writes host floats and integers as little-endian bytes");

// ---- message metadata ------------------------------------------------------------------------

MessageType type_of(const Message& m) {
  return std::visit([](const auto& x) { return std::decay_t<decltype(x)>::kType; }, m);
}

const char* encoding_name(FloatEncoding e) {
  switch (e) {
    case FloatEncoding::kFp32: return "fp32";
    case FloatEncoding::kBf16: return "bf16";
  }
  return "unknown";
}

const char* type_name(MessageType t) {
  switch (t) {
    case MessageType::kLoadShard: return "LoadShard";
    case MessageType::kStepBegin: return "StepBegin";
    case MessageType::kPullRequest: return "PullRequest";
    case MessageType::kPullReply: return "PullReply";
    case MessageType::kGradPush: return "GradPush";
    case MessageType::kPushReceived: return "PushReceived";
    case MessageType::kWorkerStepDone: return "WorkerStepDone";
    case MessageType::kStepContributors: return "StepContributors";
    case MessageType::kNormReport: return "NormReport";
    case MessageType::kStepCommit: return "StepCommit";
    case MessageType::kStepApplied: return "StepApplied";
    case MessageType::kShutdown: return "Shutdown";
    case MessageType::kFailure: return "Failure";
    case MessageType::kRegister: return "Register";
    case MessageType::kWelcome: return "Welcome";
    case MessageType::kPeerHello: return "PeerHello";
    case MessageType::kHeartbeat: return "Heartbeat";
    case MessageType::kCheckpointShard: return "CheckpointShard";
    case MessageType::kCheckpointShardWritten: return "CheckpointShardWritten";
    case MessageType::kShardLoaded: return "ShardLoaded";
    case MessageType::kEvalBegin: return "EvalBegin";
    case MessageType::kEvalDone: return "EvalDone";
    case MessageType::kStepWorkers: return "StepWorkers";
    case MessageType::kLeaseGrant: return "LeaseGrant";
    case MessageType::kPushReady: return "PushReady";
    case MessageType::kInnerStateSave: return "InnerStateSave";
    case MessageType::kInnerStateLoad: return "InnerStateLoad";
    case MessageType::kInnerStateDone: return "InnerStateDone";
  }
  return "unknown";
}

const char* retired_type_name(uint16_t type) {
  switch (type) {
    case 12: return "CheckpointRequest";
    case 13: return "CheckpointReply";
    default: return nullptr;
  }
}

bool is_bulk(MessageType t) {
  // EvalDone carries one loss sum per validation batch: as many as the val set has batches.
  return t == MessageType::kPullReply || t == MessageType::kGradPush ||
         t == MessageType::kEvalDone;
}

namespace {

// ---- payload writer / reader -----------------------------------------------------------------

class Writer {
 public:
  explicit Writer(std::vector<std::byte>& out) : out_(out) {}

  template <class T>
    requires std::is_arithmetic_v<T>
  void put(T x) {
    raw(&x, sizeof(T));
  }
  void put(const KeyRange& r) {
    put(r.begin);
    put(r.end);
  }
  template <class T>
  void put(const std::vector<T>& xs) {
    put(static_cast<uint64_t>(xs.size()));
    raw(xs.data(), xs.size() * sizeof(T));
  }
  void put(const std::string& s) {
    PTRAIN_ENFORCE(s.size() <= UINT32_MAX, "string of {} bytes is too long for a frame", s.size());
    put(static_cast<uint32_t>(s.size()));
    raw(s.data(), s.size());
  }
  void put(bool b) { put(static_cast<uint8_t>(b ? 1 : 0)); }
  void put(FloatEncoding e) { put(static_cast<uint8_t>(e)); }
  // The floats are not copied: the count goes into the head, the floats become the frame's
  // borrowed body (they are the last field of their message).
  void put(const FloatRange& f) {
    put(static_cast<uint64_t>(f.size()));
    body_ = std::as_bytes(f.view());
    keep_ = f.owner();
    has_body_ = true;
  }
  std::span<const std::byte> body() const { return body_; }
  const std::shared_ptr<const void>& keep() const { return keep_; }

  // The CRC32C of everything appended so far (after finish_crc()), continued from `crc`: it is
  // computed in pieces right after each piece is copied, while the bytes are still in cache
  // (one pass over a bulk payload instead of a copy pass plus a cold CRC pass).
  void start_crc(uint32_t crc) {
    crc_ = crc;
    crc_pos_ = out_.size();
  }
  uint32_t finish_crc() {
    flush_crc();
    return crc_;
  }

 private:
  static constexpr size_t kPiece = 256 * 1024;
  void flush_crc() {
    if (out_.size() > crc_pos_) {
      crc_ = crc32c(out_.data() + crc_pos_, out_.size() - crc_pos_, crc_);
      crc_pos_ = out_.size();
    }
  }
  void raw(const void* p, size_t n) {
    PTRAIN_ENFORCE(!has_body_, "a field after a message's floats (they must come last)");
    // insert, not resize + memcpy: no zero-filling pass over a bulk payload.
    const auto* b = static_cast<const std::byte*>(p);
    while (n > 0) {
      const size_t k = std::min(n, kPiece);
      out_.insert(out_.end(), b, b + k);
      b += k;
      n -= k;
      if (out_.size() - crc_pos_ >= kPiece) flush_crc();
    }
  }
  std::vector<std::byte>& out_;
  uint32_t crc_ = 0;
  size_t crc_pos_ = 0;
  std::span<const std::byte> body_;
  std::shared_ptr<const void> keep_;
  bool has_body_ = false;
};

// Counts the payload bytes a message encodes to (the same field list as Writer).
class Sizer {
 public:
  template <class T>
    requires std::is_arithmetic_v<T>
  void put(T) {
    n += sizeof(T);
  }
  void put(const KeyRange& r) {
    put(r.begin);
    put(r.end);
  }
  template <class T>
  void put(const std::vector<T>& xs) {
    n += sizeof(uint64_t) + xs.size() * sizeof(T);
  }
  void put(const std::string& s) { n += sizeof(uint32_t) + s.size(); }
  void put(bool) { n += 1; }
  void put(FloatEncoding) { n += 1; }
  void put(const FloatRange& f) { n += sizeof(uint64_t) + f.size() * sizeof(float); }
  size_t n = 0;
};

class Reader {
 public:
  Reader(MessageType type, std::span<const std::byte> in) : type_(type), in_(in) {}

  template <class T>
    requires std::is_arithmetic_v<T>
  void get(T& x) {
    need(sizeof(T), "a field");
    std::memcpy(&x, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
  }
  void get(KeyRange& r) {
    get(r.begin);
    get(r.end);
    if (r.begin < 0 || r.end < r.begin) {
      fail(fmt::format("invalid range [{}, {})", r.begin, r.end));
    }
  }
  template <class T>
  void get(std::vector<T>& xs) {
    uint64_t n = 0;
    get(n);
    // The count is checked against what remains before anything is allocated.
    if (n > (in_.size() - pos_) / sizeof(T)) {
      fail(fmt::format("a vector announces {} elements but only {} bytes remain", n,
                       in_.size() - pos_));
    }
    // One copy straight from the frame, without zero-filling the new vector first.
    const std::byte* p = in_.data() + pos_;
    if (n == 0) {
      xs.clear();
    } else if (reinterpret_cast<uintptr_t>(p) % alignof(T) == 0) {
      const T* first = reinterpret_cast<const T*>(p);
      std::vector<T> fresh;
      fresh.reserve(n);
      advise_huge_pages(fresh.data(), n * sizeof(T));
      fresh.assign(first, first + n);
      xs = std::move(fresh);
    } else {
      xs.resize(n);
      std::memcpy(xs.data(), p, n * sizeof(T));
    }
    pos_ += n * sizeof(T);
  }
  void get(std::string& s) {
    uint32_t n = 0;
    get(n);
    need(n, "a string");
    s.assign(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
  }
  void get(bool& b) {
    uint8_t x = 0;
    get(x);
    if (x > 1) fail(fmt::format("boolean field holds {}", x));
    b = x == 1;
  }
  void get(FloatEncoding& e) {
    uint8_t x = 0;
    get(x);
    if (x > kMaxFloatEncoding) {
      fail(fmt::format("unknown float encoding {} (this build knows 0 = fp32, 1 = bf16)", x));
    }
    e = static_cast<FloatEncoding>(x);
  }
  // The floats of a message (its last field). In a whole payload they are located here and
  // placed by take_floats (into a posted destination or a buffer of their own); in a head (the
  // payload without its floats, as the stream decoder splits it) only the count is read.
  void get(FloatRange&) {
    uint64_t n = 0;
    get(n);
    floats_count_ = n;
    if (!head_only_) {
      if (n > (in_.size() - pos_) / sizeof(float)) {
        fail(fmt::format("{} floats announced but only {} bytes remain", n, in_.size() - pos_));
      }
      floats_ = in_.subspan(pos_, n * sizeof(float));
      pos_ += n * sizeof(float);
    }
  }
  void set_head_only() { head_only_ = true; }
  uint64_t floats_count() const { return floats_count_; }
  std::span<const std::byte> floats() const { return floats_; }
  void finish() const {
    if (pos_ != in_.size()) {
      fail(fmt::format("{} trailing bytes after the last field", in_.size() - pos_));
    }
  }
  [[noreturn]] void fail(const std::string& why) const {
    throw ProtocolError(fmt::format("malformed {} payload ({} bytes): {}", type_name(type_),
                                    in_.size(), why));
  }

 private:
  void need(size_t n, const char* what) const {
    if (in_.size() - pos_ < n) {
      fail(fmt::format("{} needs {} bytes at offset {}, only {} remain", what, n, pos_,
                       in_.size() - pos_));
    }
  }
  MessageType type_;
  std::span<const std::byte> in_;
  size_t pos_ = 0;
  bool head_only_ = false;
  uint64_t floats_count_ = 0;
  std::span<const std::byte> floats_;
};

// One list of fields per message, used for both directions (so they cannot drift apart).
template <class IO, class M>
void fields(IO&& io, M& m) {
  using T = std::remove_const_t<M>;
  if constexpr (std::is_same_v<T, LoadShard>) {
    io(m.version), io(m.membership_epoch), io(m.range), io(m.seed), io(m.checkpoint);
  } else if constexpr (std::is_same_v<T, StepBegin>) {
    io(m.step), io(m.membership_epoch), io(m.windows);
  } else if constexpr (std::is_same_v<T, PullRequest>) {
    io(m.request_id), io(m.version), io(m.range), io(m.encoding);
  } else if constexpr (std::is_same_v<T, PullReply>) {
    io(m.request_id), io(m.version), io(m.range), io(m.encoding), io(m.weights);
  } else if constexpr (std::is_same_v<T, GradPush>) {
    io(m.step), io(m.membership_epoch), io(m.worker_id), io(m.tokens), io(m.range), io(m.encoding),
        io(m.grads);
  } else if constexpr (std::is_same_v<T, PushReceived>) {
    io(m.server_id), io(m.step), io(m.worker_id), io(m.tokens);
  } else if constexpr (std::is_same_v<T, WorkerStepDone>) {
    io(m.worker_id), io(m.step), io(m.loss_sum), io(m.tokens), io(m.pull_s), io(m.compute_s),
        io(m.push_s), io(m.bytes_pushed), io(m.bytes_pulled), io(m.correct);
  } else if constexpr (std::is_same_v<T, StepContributors>) {
    io(m.step), io(m.membership_epoch), io(m.workers);
  } else if constexpr (std::is_same_v<T, StepWorkers>) {
    io(m.step), io(m.membership_epoch), io(m.workers);
  } else if constexpr (std::is_same_v<T, NormReport>) {
    io(m.server_id), io(m.step), io(m.sum_squares), io(m.tokens), io(m.first_nonfinite),
        io(m.workers);
  } else if constexpr (std::is_same_v<T, StepCommit>) {
    io(m.step), io(m.workers), io(m.global_norm), io(m.clip_coef);
  } else if constexpr (std::is_same_v<T, StepApplied>) {
    io(m.server_id), io(m.step), io(m.version), io(m.lr), io(m.bytes_pushed), io(m.bytes_pulled);
  } else if constexpr (std::is_same_v<T, Shutdown>) {
    io(m.reason);
  } else if constexpr (std::is_same_v<T, Failure>) {
    io(m.code), io(m.message);
  } else if constexpr (std::is_same_v<T, Register>) {
    io(m.role), io(m.listen_address), io(m.host);
  } else if constexpr (std::is_same_v<T, Welcome>) {
    io(m.id), io(m.membership_epoch), io(m.config_yaml), io(m.layout_hash), io(m.tokenizer_json),
        io(m.server_addresses);
  } else if constexpr (std::is_same_v<T, PeerHello>) {
    io(m.role), io(m.id), io(m.membership_epoch);
  } else if constexpr (std::is_same_v<T, Heartbeat>) {
    io(m.sent_unix_ms);
  } else if constexpr (std::is_same_v<T, CheckpointShard>) {
    io(m.request_id), io(m.version), io(m.tmp_dir);
  } else if constexpr (std::is_same_v<T, CheckpointShardWritten>) {
    io(m.request_id), io(m.server_id), io(m.version), io(m.range), io(m.write_s);
  } else if constexpr (std::is_same_v<T, ShardLoaded>) {
    io(m.server_id), io(m.version), io(m.range), io(m.load_s);
  } else if constexpr (std::is_same_v<T, EvalBegin>) {
    io(m.request_id), io(m.version), io(m.window_begin), io(m.window_end), io(m.batch);
  } else if constexpr (std::is_same_v<T, EvalDone>) {
    io(m.request_id), io(m.worker_id), io(m.version), io(m.window_begin), io(m.loss_sums),
        io(m.tokens), io(m.eval_s);
  } else if constexpr (std::is_same_v<T, LeaseGrant>) {
    io(m.lease_id), io(m.membership_epoch), io(m.min_version), io(m.windows);
  } else if constexpr (std::is_same_v<T, PushReady>) {
    io(m.worker_id), io(m.lease_id), io(m.base_version);
  } else if constexpr (std::is_same_v<T, InnerStateSave>) {
    io(m.request_id), io(m.version), io(m.slot), io(m.tmp_dir);
  } else if constexpr (std::is_same_v<T, InnerStateLoad>) {
    io(m.request_id), io(m.version), io(m.slot), io(m.checkpoint);
  } else if constexpr (std::is_same_v<T, InnerStateDone>) {
    io(m.request_id), io(m.worker_id), io(m.version), io(m.slot), io(m.inner_steps), io(m.seconds);
  } else {
    static_assert(sizeof(T) == 0, "message without a field list");
  }
}

// Sizes that must agree with the range a bulk message carries.
void check_sizes(const Message& msg, const Reader& r) {
  auto check = [&r](const KeyRange& range, FloatEncoding e, size_t n, const char* what) {
    if (static_cast<int64_t>(n) != encoded_size(e, range.size())) {
      r.fail(fmt::format("{} holds {} floats for range [{}, {}) of {} values in {} ({} expected)",
                         what, n, range.begin, range.end, range.size(), encoding_name(e),
                         encoded_size(e, range.size())));
    }
  };
  std::visit(
      [&](const auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, PullReply>) {
          check(m.range, m.encoding, m.weights.size(), "weights");
        } else if constexpr (std::is_same_v<T, GradPush>) {
          check(m.range, m.encoding, m.grads.size(), "grads");
        } else if constexpr (std::is_same_v<T, EvalDone>) {
          if (m.tokens.size() != m.loss_sums.size()) {
            r.fail(fmt::format("{} token counts for {} loss sums", m.tokens.size(),
                               m.loss_sums.size()));
          }
        }
      },
      msg);
}

uint16_t load_u16(const std::byte* p) {
  uint16_t x;
  std::memcpy(&x, p, 2);
  return x;
}
uint32_t load_u32(const std::byte* p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  return x;
}
uint64_t load_u64(const std::byte* p) {
  uint64_t x;
  std::memcpy(&x, p, 8);
  return x;
}

}  // namespace

namespace {

// What is wrong with a type number outside MessageType: unknown, or retired (named, with why).
std::string bad_type(uint16_t t) {
  if (const char* name = retired_type_name(t)) {
    return fmt::format("retired message type {} ({}, removed in protocol version 4: checkpoints "
                       "are written shard by shard, see CheckpointShard)",
                       t, name);
  }
  return fmt::format("unknown message type {}", t);
}

std::string types_spoken() {
  return fmt::format("this build speaks protocol version {}, types {}..{} less the retired 12, 13",
                     kProtocolVersion, kMinMessageType, kMaxMessageType);
}

// Header checks that need only the header: "" when acceptable. Order: magic, version (so that an
// older or newer peer is told about versions, not about a CRC), type, flags, length, then the
// header's own CRC.
std::string check_header(const FrameHeader& h, std::span<const std::byte> raw,
                         const DecoderLimits& limits) {
  if (h.magic != kMagic) {
    return fmt::format("bad magic 0x{:08x} (expected 0x{:08x}, \"PTRN\"): not a ptrain frame",
                       h.magic, kMagic);
  }
  if (h.version != kProtocolVersion) {
    return fmt::format(
        "protocol version {} is not supported: this build speaks protocol version {}",
        h.version, kProtocolVersion);
  }
  const auto t = static_cast<uint16_t>(h.type);
  if (t < kMinMessageType || t > kMaxMessageType || retired_type_name(t) != nullptr) {
    return fmt::format("{} in a protocol-version-{} frame ({})", bad_type(t), h.version,
                       types_spoken());
  }
  if (h.flags != 0) {
    return fmt::format("{} frame has unknown flags 0x{:08x} (protocol version {} defines none)",
                       type_name(h.type), h.flags, kProtocolVersion);
  }
  const uint64_t limit = limits.max_payload(h.type);
  if (h.payload_length > limit) {
    return fmt::format("{} frame announces a {}-byte payload, over the {}-byte limit",
                       type_name(h.type), h.payload_length, limit);
  }
  if (const uint32_t crc = crc32c(raw.data(), 20); crc != h.crc) {
    return fmt::format("{} frame header fails its CRC32C (0x{:08x} stored, 0x{:08x} computed)",
                       type_name(h.type), h.crc, crc);
  }
  const size_t head = float_body_head(h.type);
  if (head > 0 && h.payload_length < head) {
    return fmt::format("malformed {} payload: {} bytes, its fields alone take {}",
                       type_name(h.type), h.payload_length, head);
  }
  return {};
}

void store_u32(std::byte* p, uint32_t x) { std::memcpy(p, &x, 4); }

// The float field of a message with a float body (nullptr for other messages).
template <class T>
FloatRange* float_field(T& m) {
  if constexpr (std::is_same_v<T, GradPush>) {
    return &m.grads;
  } else if constexpr (std::is_same_v<T, PullReply>) {
    return &m.weights;
  } else {
    return nullptr;
  }
}

// Calls f.template operator()<T>() for the message struct T of `type`.
template <class F>
void with_type(MessageType type, F&& f) {
  switch (type) {
    case MessageType::kLoadShard: f.template operator()<LoadShard>(); return;
    case MessageType::kStepBegin: f.template operator()<StepBegin>(); return;
    case MessageType::kPullRequest: f.template operator()<PullRequest>(); return;
    case MessageType::kPullReply: f.template operator()<PullReply>(); return;
    case MessageType::kGradPush: f.template operator()<GradPush>(); return;
    case MessageType::kPushReceived: f.template operator()<PushReceived>(); return;
    case MessageType::kWorkerStepDone: f.template operator()<WorkerStepDone>(); return;
    case MessageType::kStepContributors: f.template operator()<StepContributors>(); return;
    case MessageType::kNormReport: f.template operator()<NormReport>(); return;
    case MessageType::kStepCommit: f.template operator()<StepCommit>(); return;
    case MessageType::kStepApplied: f.template operator()<StepApplied>(); return;
    case MessageType::kShutdown: f.template operator()<Shutdown>(); return;
    case MessageType::kFailure: f.template operator()<Failure>(); return;
    case MessageType::kRegister: f.template operator()<Register>(); return;
    case MessageType::kWelcome: f.template operator()<Welcome>(); return;
    case MessageType::kPeerHello: f.template operator()<PeerHello>(); return;
    case MessageType::kHeartbeat: f.template operator()<Heartbeat>(); return;
    case MessageType::kCheckpointShard: f.template operator()<CheckpointShard>(); return;
    case MessageType::kCheckpointShardWritten:
      f.template operator()<CheckpointShardWritten>();
      return;
    case MessageType::kShardLoaded: f.template operator()<ShardLoaded>(); return;
    case MessageType::kEvalBegin: f.template operator()<EvalBegin>(); return;
    case MessageType::kEvalDone: f.template operator()<EvalDone>(); return;
    case MessageType::kStepWorkers: f.template operator()<StepWorkers>(); return;
    case MessageType::kLeaseGrant: f.template operator()<LeaseGrant>(); return;
    case MessageType::kPushReady: f.template operator()<PushReady>(); return;
    case MessageType::kInnerStateSave: f.template operator()<InnerStateSave>(); return;
    case MessageType::kInnerStateLoad: f.template operator()<InnerStateLoad>(); return;
    case MessageType::kInnerStateDone: f.template operator()<InnerStateDone>(); return;
  }
  const auto t = static_cast<uint16_t>(type);
  throw ProtocolError(fmt::format("{} ({})", bad_type(t), types_spoken()));
}

}  // namespace

// ---- public API ------------------------------------------------------------------------------

FrameHeader read_header(std::span<const std::byte, kHeaderSize> bytes) {
  const std::byte* p = bytes.data();
  FrameHeader h;
  h.magic = load_u32(p);
  h.version = load_u16(p + 4);
  h.type = static_cast<MessageType>(load_u16(p + 6));
  h.flags = load_u32(p + 8);
  h.payload_length = load_u64(p + 12);
  h.crc = load_u32(p + 20);
  return h;
}

size_t float_body_head(MessageType t) {
  // The fields before the floats, then the u64 count (messages.hpp, fields()).
  switch (t) {
    // step epoch worker tokens range encoding n
    case MessageType::kGradPush: return 8 + 8 + 4 + 8 + 16 + 1 + 8;
    case MessageType::kPullReply: return 8 + 8 + 16 + 1 + 8;  // request version range encoding n
    default: return 0;
  }
}

uint64_t float_body_match(std::span<const std::byte> head_payload) {
  PTRAIN_ENFORCE(head_payload.size() >= 8, "a float-body head of {} bytes", head_payload.size());
  return load_u64(head_payload.data());
}

uint64_t float_body_count(MessageType t, std::span<const std::byte> head_payload) {
  const size_t head = float_body_head(t);
  PTRAIN_ENFORCE(head > 0 && head_payload.size() >= head, "a float-body head of {} bytes",
                 head_payload.size());
  return load_u64(head_payload.data() + head - 8);
}

OutFrame encode_frame(const Message& msg) {
  // Size the payload first: one allocation of exactly the head, the header written up front,
  // and the CRC computed while the payload is copied in (Writer).
  Sizer sizer;
  std::visit([&sizer](const auto& m) { fields([&sizer](const auto& f) { sizer.put(f); }, m); },
             msg);
  const uint64_t payload = sizer.n;
  OutFrame f;
  f.type = type_of(msg);
  std::vector<std::byte>& out = f.head;
  out.resize(kHeaderSize);
  const uint32_t magic = kMagic;
  const uint16_t version = kProtocolVersion;
  const auto type = static_cast<uint16_t>(f.type);
  const uint32_t flags = 0;
  std::memcpy(out.data() + 0, &magic, 4);
  std::memcpy(out.data() + 4, &version, 2);
  std::memcpy(out.data() + 6, &type, 2);
  std::memcpy(out.data() + 8, &flags, 4);
  std::memcpy(out.data() + 12, &payload, 8);
  store_u32(out.data() + 20, crc32c(out.data(), 20));
  Writer w(out);
  w.start_crc(0);
  std::visit([&w](const auto& m) { fields([&w](const auto& x) { w.put(x); }, m); }, msg);
  const uint32_t crc = w.finish_crc();
  PTRAIN_ENFORCE(out.size() - kHeaderSize + w.body().size() == payload,
                 "encoded {} payload bytes, sized {}", out.size() - kHeaderSize + w.body().size(),
                 payload);
  if (w.body().empty()) {
    out.resize(out.size() + kTrailerSize);
    store_u32(out.data() + out.size() - kTrailerSize, crc);
  } else {
    f.body = w.body();
    f.keep = w.keep();
    f.head_crc = crc;
  }
  return f;
}

std::vector<std::byte> flatten(const OutFrame& f) {
  if (f.body.empty()) return f.head;
  std::vector<std::byte> out;
  out.reserve(f.size());
  advise_huge_pages(out.data(), f.size());
  out.insert(out.end(), f.head.begin(), f.head.end());
  // Copy and CRC the body a piece at a time, while each piece is in cache.
  constexpr size_t kPiece = 256 * 1024;
  uint32_t crc = f.head_crc;
  for (size_t at = 0; at < f.body.size(); at += kPiece) {
    const size_t n = std::min(kPiece, f.body.size() - at);
    out.insert(out.end(), f.body.begin() + static_cast<std::ptrdiff_t>(at),
               f.body.begin() + static_cast<std::ptrdiff_t>(at + n));
    crc = crc32c(out.data() + out.size() - n, n, crc);
  }
  out.resize(out.size() + kTrailerSize);
  store_u32(out.data() + out.size() - kTrailerSize, crc);
  return out;
}

std::vector<std::byte> encode(const Message& msg) { return flatten(encode_frame(msg)); }

std::string payload_crc_error(const FrameHeader& h, uint32_t stored, uint32_t computed) {
  return fmt::format(
      "{} frame of {} payload bytes fails its CRC32C (0x{:08x} in the trailer, 0x{:08x} computed)",
      type_name(h.type), h.payload_length, stored, computed);
}

DecodeResult decode_frame(std::span<const std::byte> bytes, const DecoderLimits& limits,
                          bool check_crc) {
  DecodeResult r;
  if (bytes.size() < kHeaderSize) {
    // Refuse garbage as early as possible: the magic is known after 4 bytes.
    if (bytes.size() >= 4 && load_u32(bytes.data()) != kMagic) {
      r.status = DecodeStatus::kBad;
      r.error = check_header(FrameHeader{.magic = load_u32(bytes.data())}, bytes, limits);
    }
    return r;
  }
  r.header = read_header(bytes.first<kHeaderSize>());
  if (std::string why = check_header(r.header, bytes, limits); !why.empty()) {
    r.status = DecodeStatus::kBad;
    r.error = std::move(why);
    return r;
  }
  // A float body: its count must account for the payload, checked as soon as the head is in.
  if (const size_t head = float_body_head(r.header.type);
      head > 0 && bytes.size() >= kHeaderSize + head) {
    const uint64_t n = float_body_count(r.header.type, bytes.subspan(kHeaderSize, head));
    if (n > (r.header.payload_length - head) / sizeof(float) ||
        head + n * sizeof(float) != r.header.payload_length) {
      r.status = DecodeStatus::kBad;
      r.error = fmt::format("malformed {} payload: {} bytes, but its head announces {} floats "
                            "after {} bytes of fields",
                            type_name(r.header.type), r.header.payload_length, n, head);
      return r;
    }
  }
  const uint64_t total = r.header.frame_size();
  if (bytes.size() < total) return r;  // need more
  const size_t len = static_cast<size_t>(r.header.payload_length);
  if (check_crc) {
    const uint32_t stored = load_u32(bytes.data() + kHeaderSize + len);
    const uint32_t crc = crc32c(bytes.data() + kHeaderSize, len);
    if (crc != stored) {
      r.status = DecodeStatus::kBad;
      r.error = payload_crc_error(r.header, stored, crc);
      return r;
    }
  }
  r.status = DecodeStatus::kGood;
  r.consumed = static_cast<size_t>(total);
  r.payload = bytes.subspan(kHeaderSize, len);
  return r;
}

Message parse_payload(MessageType type, std::span<const std::byte> payload,
                      const FloatDestinationFn& dest) {
  Message msg;
  Reader r(type, payload);
  with_type(type, [&]<class T>() {
    T m;
    fields([&r](auto& f) { r.get(f); }, m);
    r.finish();
    if (FloatRange* field = float_field(m)) {
      const size_t n = r.floats_count();
      const std::span<const std::byte> src = r.floats();
      FloatDestination d;
      if (dest) d = dest(type, float_body_match(payload), n);
      if (d.dst.size() == n && n > 0) {
        std::memcpy(d.dst.data(), src.data(), src.size());
        *field = FloatRange::borrow(d.dst);
      } else {
        auto [owned, to] = FloatRange::allocate(n);
        if (n > 0) std::memcpy(to.data(), src.data(), src.size());
        *field = std::move(owned);
      }
    }
    msg = std::move(m);
  });
  check_sizes(msg, r);
  return msg;
}

Message assemble(MessageType type, std::span<const std::byte> head_payload, FloatRange floats) {
  Message msg;
  Reader r(type, head_payload);
  r.set_head_only();
  with_type(type, [&]<class T>() {
    T m;
    FloatRange* field = float_field(m);
    if (field == nullptr) {
      throw ProtocolError(fmt::format("{} has no floats to assemble", type_name(type)));
    }
    fields([&r](auto& f) { r.get(f); }, m);
    r.finish();
    if (r.floats_count() != floats.size()) {
      r.fail(fmt::format("its head announces {} floats, {} arrived", r.floats_count(),
                         floats.size()));
    }
    *field = std::move(floats);
    msg = std::move(m);
  });
  check_sizes(msg, r);
  return msg;
}

Message decode(std::span<const std::byte> frame, const DecoderLimits& limits, bool check_crc,
               const FloatDestinationFn& dest) {
  DecodeResult r = decode_frame(frame, limits, check_crc);
  switch (r.status) {
    case DecodeStatus::kBad:
      throw ProtocolError(r.error);
    case DecodeStatus::kNeedMore:
      throw ProtocolError(fmt::format("truncated frame: {} bytes, the header {}", frame.size(),
                                      frame.size() < kHeaderSize
                                          ? fmt::format("needs {}", kHeaderSize)
                                          : fmt::format("announces {}",
                                                        r.header.frame_size())));
    case DecodeStatus::kGood:
      break;
  }
  if (r.consumed != frame.size()) {
    throw ProtocolError(fmt::format("{} trailing bytes after a {}-byte {} frame",
                                    frame.size() - r.consumed, r.consumed,
                                    type_name(r.header.type)));
  }
  return parse_payload(r.header.type, r.payload, dest);
}

}  // namespace ptrain::proto
