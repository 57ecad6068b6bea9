// The frame codec: pure functions from messages to bytes and back, no I/O. Every transport
// (in-process, TCP) moves exactly these frames; a byte stream is cut into them by the incremental
// FrameDecoder (frame_decoder.hpp), which uses decode_frame's header checks.
//
// Frame = 24-byte header + payload, all little-endian:
//   offset  0  u32  magic            kMagic ("PTRN")
//   offset  4  u16  protocol version kProtocolVersion
//   offset  6  u16  message type     MessageType
//   offset  8  u32  flags            0 in version 1 (any other bit is refused)
//   offset 12  u64  payload length   bytes after the header
//   offset 20  u32  CRC32C           over header bytes [0,20) followed by the payload
// Payload fields are written in struct order: integers and floats at their fixed width, a vector
// as a u64 element count then the elements, a string as a u32 byte count then the bytes.
//
// Decoding checks, in order: magic, version, type, flags, payload length against the limit for
// that type (before anything is allocated), then — once the whole frame is there — the CRC, and
// while parsing the payload every count against the bytes that remain. Nothing is trusted.
#pragma once

#include "common/error.hpp"
#include "common/proto/messages.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ptrain::proto {

inline constexpr size_t kHeaderSize = 24;

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
  uint32_t crc = 0;
};

enum class DecodeStatus { kGood, kBad, kNeedMore };

struct DecodeResult {
  DecodeStatus status = DecodeStatus::kNeedMore;
  size_t consumed = 0;                 // kGood: header + payload bytes of the frame
  FrameHeader header;                  // kGood (and kBad once the header was readable)
  std::span<const std::byte> payload;  // kGood: a view into the input
  std::string error;                   // kBad: why
};

// Encodes `msg` as one frame.
std::vector<std::byte> encode(const Message& msg);

// Looks at the start of `bytes` for one frame. kNeedMore when the frame is not complete yet (a
// caller must not allocate the announced length before this returns; the length has already
// been checked against `limits` when it does), kBad with a reason, or kGood with the payload.
// `check_crc` = false skips the CRC32C pass: only for a frame whose CRC the caller has already
// verified (the TCP reader checks it while the bytes arrive).
DecodeResult decode_frame(std::span<const std::byte> bytes, const DecoderLimits& limits = {},
                          bool check_crc = true);

// Parses a payload of a frame that decode_frame accepted. Throws ProtocolError when it is
// malformed (short, trailing bytes, counts beyond the payload, inconsistent sizes).
Message parse_payload(MessageType type, std::span<const std::byte> payload);

// decode_frame + parse_payload on exactly one whole frame. Throws ProtocolError (with the reason)
// for a bad, incomplete or over-long input.
Message decode(std::span<const std::byte> frame, const DecoderLimits& limits = {},
               bool check_crc = true);

// Header checks that need only the header (magic, version, type, flags, payload length against
// `limits`): "" when acceptable, else the reason, as decode_frame reports it.
std::string check_header(const FrameHeader& header, const DecoderLimits& limits);
// The header fields of the first kHeaderSize bytes at `p` (unchecked).
FrameHeader read_header(std::span<const std::byte, kHeaderSize> bytes);

// The CRC32C of a frame as far as its header goes (bytes [0, 20)); continue it over the payload
// with crc32c(payload, n, crc_of_header(...)) and compare with FrameHeader::crc.
uint32_t crc_of_header(std::span<const std::byte, kHeaderSize> header);

}  // namespace ptrain::proto
