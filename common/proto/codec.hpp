// The frame codec: pure functions from messages to bytes and back, no I/O. Every transport
// (in-process, TCP) moves exactly these frames; a byte stream is cut into them by the incremental
// FrameDecoder (frame_decoder.hpp), which uses decode_frame's header checks.
//
// Frame = 24-byte header + payload + 4-byte trailer, all little-endian (protocol version 6):
//   offset  0  u32  magic            kMagic ("PTRN")
//   offset  4  u16  protocol version kProtocolVersion
//   offset  6  u16  message type     MessageType
//   offset  8  u32  flags            0 (any other bit is refused)
//   offset 12  u64  payload length   bytes between the header and the trailer
//   offset 20  u32  header CRC32C    over header bytes [0,20)
//   then the payload, then u32 payload CRC32C (over the payload bytes only)
// The payload's CRC comes after it so that a sender can compute it while it writes the payload
// from where it lies (borrowed floats, no copy), and the header is protected on its own.
// Payload fields are written in struct order (except that GradPush's and PullReply's `encoding`,
// declared after their floats, goes on the wire just before them): integers and floats at their fixed width, a vector
// (or a FloatRange) as a u64 element count then the elements, a string as a u32 byte count then
// the bytes. A FloatRange is always the last field of its message (GradPush, PullReply): its
// message has a "float body" (its payload = a fixed-size head + the floats).
//
// Decoding checks, in order: magic, version, type, flags, payload length against the limit for
// that type (before anything is allocated), the header CRC; for a message with a float body, as
// soon as its head is there, the payload length against the float count; then — once the whole
// frame is there — the payload CRC, and while parsing the payload every count against the bytes
// that remain. Nothing is trusted.
#pragma once

#include "common/error.hpp"
#include "common/proto/messages.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace ptrain::proto {

inline constexpr size_t kHeaderSize = 24;
inline constexpr size_t kTrailerSize = 4;

// A frame or payload refused by the codec (a peer's fault, recoverable: the peer is dropped).
class ProtocolError : public Error {
 public:
  explicit ProtocolError(const std::string& what) : Error(ExitCode::kIo, what) {}
};

// The exit code a Failure message carries, trusted only within 1..127 (else kInternal): a
// peer's failure must never turn into "success" or an out-of-range status here.
inline ExitCode failure_code(const Failure& f) {
  return f.code >= 1 && f.code <= 127 ? static_cast<ExitCode>(f.code) : ExitCode::kInternal;
}

struct DecoderLimits {
  uint64_t max_control_payload = 1ull << 20;  // non-bulk messages (small; 1 MiB)
  uint64_t max_bulk_payload = 16ull << 30;    // weights/gradients/moments (16 GiB)
  uint64_t max_payload(MessageType t) const {
    return is_bulk(t) ? max_bulk_payload : max_control_payload;
  }
};

struct FrameHeader {
  uint32_t magic = kMagic;
  uint16_t version = kProtocolVersion;
  MessageType type = MessageType::kShutdown;
  uint32_t flags = 0;
  uint64_t payload_length = 0;
  uint32_t crc = 0;  // of header bytes [0, 20)
  // Header + payload + trailer.
  uint64_t frame_size() const { return kHeaderSize + payload_length + kTrailerSize; }
};

enum class DecodeStatus { kGood, kBad, kNeedMore };

struct DecodeResult {
  DecodeStatus status = DecodeStatus::kNeedMore;
  size_t consumed = 0;                 // kGood: header + payload + trailer bytes of the frame
  FrameHeader header;                  // kGood (and kBad once the header was readable)
  std::span<const std::byte> payload;  // kGood: a view into the input
  std::string error;                   // kBad: why
};

// A frame ready to be written: `head` (the header and the payload up to the floats), then
// `body` (the message's floats, borrowed from wherever its FloatRange points; empty for messages
// without floats), then the trailer. When there is no body, `head` is the whole frame, trailer
// included. Otherwise the trailer is crc32c(body, head_crc) as a u32, computed by whoever writes
// the body (the TCP writer while it writes, flatten() while it copies).
struct OutFrame {
  MessageType type = MessageType::kShutdown;
  std::vector<std::byte> head;
  std::span<const std::byte> body;
  std::shared_ptr<const void> keep;  // an owned FloatRange's buffer (null when borrowed)
  uint32_t head_crc = 0;             // CRC32C of head's payload bytes (when there is a body)
  size_t size() const { return head.size() + body.size() + (body.empty() ? 0 : kTrailerSize); }
};

// Encodes `msg` without copying its floats (see OutFrame). Everything else is copied into head.
OutFrame encode_frame(const Message& msg);
// One contiguous frame: head, then the body copied (its CRC computed as each piece is copied),
// then the trailer.
std::vector<std::byte> flatten(const OutFrame& frame);
// encode_frame + flatten.
std::vector<std::byte> encode(const Message& msg);

// ---- messages with a float body (GradPush, PullReply) ----
// Payload bytes before the floats (the fields, then the u64 float count); 0 for a message type
// without a float body.
size_t float_body_head(MessageType t);
// What a receiver matches a posted destination against (PullReply: the request id; GradPush:
// the step): the u64 at the start of the payload.
uint64_t float_body_match(std::span<const std::byte> head_payload);
// The float count: the u64 that ends the head.
uint64_t float_body_count(MessageType t, std::span<const std::byte> head_payload);

// Where a received message's floats go: a destination of exactly the announced count (a posted
// buffer; `hold` keeps it claimed until released), or an empty `dst` for a buffer of their own.
struct FloatDestination {
  std::span<float> dst;
  std::shared_ptr<void> hold;
};
using FloatDestinationFn =
    std::function<FloatDestination(MessageType type, uint64_t match, size_t count)>;

// The message of a float-body frame received in two parts: its head payload (fields + count, as
// the stream decoder split it) and its floats (already placed). Throws ProtocolError when the head
// is malformed or disagrees with the floats (count, range size).
Message assemble(MessageType type, std::span<const std::byte> head_payload, FloatRange floats);

// Looks at the start of `bytes` for one frame. kNeedMore when the frame is not complete yet (a
// caller must not allocate the announced length before this returns; the length has already
// been checked against `limits` when it does), kBad with a reason, or kGood with the payload.
// `check_crc` = false skips the CRC32C pass: only for a frame whose CRC the caller has already
// verified (the TCP reader checks it while the bytes arrive).
DecodeResult decode_frame(std::span<const std::byte> bytes, const DecoderLimits& limits = {},
                          bool check_crc = true);

// Parses a payload of a frame that decode_frame accepted. Throws ProtocolError when it is
// malformed (short, trailing bytes, counts beyond the payload, inconsistent sizes). The floats
// of a float-body message are copied into the destination `dest` gives (when it gives one of the
// right size), else into a buffer of their own.
Message parse_payload(MessageType type, std::span<const std::byte> payload,
                      const FloatDestinationFn& dest = {});

// decode_frame + parse_payload on exactly one whole frame. Throws ProtocolError (with the reason)
// for a bad, incomplete or over-long input.
Message decode(std::span<const std::byte> frame, const DecoderLimits& limits = {},
               bool check_crc = true, const FloatDestinationFn& dest = {});

// "GradPush frame of N payload bytes fails its CRC32C (...)": the one wording of a payload CRC
// mismatch, whoever detects it.
std::string payload_crc_error(const FrameHeader& header, uint32_t stored, uint32_t computed);

// The header fields of the first kHeaderSize bytes (unchecked).
FrameHeader read_header(std::span<const std::byte, kHeaderSize> bytes);

}  // namespace ptrain::proto
