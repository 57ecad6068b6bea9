// The incremental frame decoder: cuts a byte stream (a socket) into frames. Pure: no I/O, no
// threads. The TCP reader runs exactly this code, and the libFuzzer target (tests/fuzz) feeds it
// arbitrary streams in arbitrary pieces.
//
// The reader asks where the next bytes go (buffer()), reads into that span, says how many
// arrived (commit()), then takes every frame that completed (next() until kNeedMore):
//   for (;;) {
//     n = read_some(socket, dec.buffer());  dec.commit(n);
//     while ((st = dec.next(frame, error)) == kGood) handle(frame);
//     if (st == kBad) drop(peer, error);
//   }
// Small frames are staged in one reused buffer (`staging` bytes), several per read. Nothing is
// allocated for an announced length before the header has passed every check (magic, version,
// type, flags, payload length against the limit for its type, header CRC, and the caller's
// admit()), and never more than that length. Then:
//   - a message with a float body (GradPush, PullReply): once its head (fields + float count) is
//     in, the floats go straight into the destination the caller's Destination gives for it (a
//     posted buffer: the worker's pull destination, the server's gradient slot), or into a
//     buffer of exactly their size when it gives none. buffer() points into that destination, so
//     the socket read lands there; the frame comes out as its head bytes plus a FloatRange.
//   - another frame too large for the staging buffer gets one buffer of exactly its size (from
//     `allocate`: a pool), and buffer() points into it.
// Either way the payload's CRC32C is computed as each piece is committed (at most kPiece bytes,
// still in cache), and compared with the trailer. After kBad the decoder is unusable (the caller
// drops the peer); it holds no bytes and no destination.
#pragma once

#include "common/proto/codec.hpp"

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace ptrain::proto {

// One whole frame whose CRCs have been checked. A frame with a float body comes split: `bytes`
// holds the header and the payload's head (its fields and float count), `floats` the floats
// (where the Destination put them). Any other frame: `bytes` is the whole frame.
struct Frame {
  FrameHeader header;
  std::vector<std::byte> bytes;
  bool split = false;
  FloatRange floats;
  uint32_t payload_crc = 0;  // the trailer
  // Bytes the frame took on the wire.
  size_t wire_size() const { return static_cast<size_t>(header.frame_size()); }
};

// The frame's bytes exactly as they were on the wire (tests, the fuzzer).
std::vector<std::byte> wire_bytes(const Frame& frame);

class FrameDecoder {
 public:
  static constexpr size_t kDefaultStaging = 256 * 1024;
  static constexpr size_t kMinStaging = 128;  // a header plus any float-body head
  static constexpr size_t kPiece = 1024 * 1024;
  // An empty vector with capacity >= n (e.g. from a pool of receive buffers).
  using Allocate = std::function<std::vector<std::byte>(size_t n)>;
  // Called with each header that passed the codec's checks, before anything is allocated for
  // its payload: "" admits the frame, anything else refuses it (kBad with that reason).
  using Admit = std::function<std::string(const FrameHeader&)>;

  explicit FrameDecoder(DecoderLimits limits = {}, size_t staging = kDefaultStaging,
                        Allocate allocate = {}, Admit admit = {},
                        FloatDestinationFn destination = {});
  ~FrameDecoder();
  FrameDecoder(const FrameDecoder&) = delete;
  FrameDecoder& operator=(const FrameDecoder&) = delete;

  // Where the next bytes of the stream go; never empty before kBad (once next() said kNeedMore),
  // empty after.
  std::span<std::byte> buffer();
  // `n` bytes (n <= buffer().size()) were written at the start of buffer().
  void commit(size_t n);
  // Copies as much of `bytes` as buffer() takes and commits it; returns how many were taken
  // (fewer than offered when the staging buffer is full of whole frames: take them with next()).
  size_t feed(std::span<const std::byte> bytes);

  // kGood: `frame` holds the next whole frame; kNeedMore: no whole frame buffered; kBad: `error`
  // says why (the same reason on every later call).
  DecodeStatus next(Frame& frame, std::string& error);

  // Bytes received and not yet returned in a frame (a partial frame at the end of a stream).
  size_t buffered() const;
  // True while buffer() is a piece of one frame's payload (its own buffer, or a float
  // destination): a reader may fill it completely with one exact read.
  bool reading_in_place() const { return phase_ != Phase::kStaging; }

 private:
  enum class Phase { kStaging, kLarge, kFloats };
  DecodeStatus fail(std::string why, std::string& error);
  void start_floats();
  DecodeStatus finish(Frame& frame, uint32_t stored, std::string& error);

  DecoderLimits limits_;
  Allocate allocate_;
  Admit admit_;
  FloatDestinationFn destination_;
  std::vector<std::byte> stage_;
  size_t lo_ = 0, hi_ = 0;  // unconsumed staged bytes: stage_[lo_, hi_)
  Phase phase_ = Phase::kStaging;
  FrameHeader header_;
  uint32_t crc_ = 0;  // payload CRC32C so far
  // kLarge: the whole frame in its own buffer; capacity >= frame_size, [0, got_) received.
  std::vector<std::byte> big_;
  size_t got_ = 0;
  // kFloats: header + head in head_; the floats land in dst_ ([0, dst_got_) received); then the
  // trailer is read through the staging buffer (awaiting_trailer_).
  std::vector<std::byte> head_;
  std::span<std::byte> dst_;
  size_t dst_got_ = 0;
  FloatRange floats_;
  std::shared_ptr<void> hold_;
  bool awaiting_trailer_ = false;
  bool bad_ = false;
  std::string bad_reason_;
};

}  // namespace ptrain::proto
