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
// Small frames are staged in one reused buffer (`staging` bytes), several per read. A frame that
// does not fit there gets, once its header passed every check (magic, version, type, flags,
// payload length against the limit for its type, and the caller's admit()), one buffer of exactly
// its size (from `allocate`: a pool), and buffer() then points into it, so the payload is read
// straight into place with no second copy, in pieces of at most kPiece bytes whose CRC32C is
// computed as each piece is committed (while it is still in cache). Nothing is allocated for an
// announced length before its header has passed, and never more than that length.
// After kBad the decoder is unusable (the caller drops the peer); it holds no bytes.
#pragma once

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "common/proto/codec.hpp"

namespace ptrain::proto {

// One whole frame (header + payload) whose CRC32C has been checked.
struct Frame {
  FrameHeader header;
  std::vector<std::byte> bytes;
};

class FrameDecoder {
 public:
  static constexpr size_t kDefaultStaging = 256 * 1024;
  static constexpr size_t kPiece = 1024 * 1024;
  // An empty vector with capacity >= n (e.g. from a pool of receive buffers).
  using Allocate = std::function<std::vector<std::byte>(size_t n)>;
  // Called with each header that passed the codec's checks, before anything is allocated for
  // its payload: "" admits the frame, anything else refuses it (kBad with that reason).
  using Admit = std::function<std::string(const FrameHeader&)>;

  explicit FrameDecoder(DecoderLimits limits = {}, size_t staging = kDefaultStaging,
                        Allocate allocate = {}, Admit admit = {});

  // Where the next bytes of the stream go; never empty before kBad, empty after.
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
  // True while a frame too large for the staging buffer is being read into its own buffer:
  // buffer() is then a piece of that frame, which a reader may fill completely (one exact read).
  bool reading_large_frame() const { return direct_; }

 private:
  DecodeStatus fail(std::string why, std::string& error);

  DecoderLimits limits_;
  Allocate allocate_;
  Admit admit_;
  std::vector<std::byte> stage_;
  size_t lo_ = 0, hi_ = 0;  // unconsumed staged bytes: stage_[lo_, hi_)
  // A frame too large for the staging buffer, being read into its own buffer.
  bool direct_ = false;
  FrameHeader header_;
  std::vector<std::byte> big_;  // capacity >= the whole frame; [0, got_) received
  size_t got_ = 0;
  size_t total_ = 0;
  uint32_t crc_ = 0;  // CRC32C so far (header bytes [0,20) then the payload)
  bool bad_ = false;
  std::string bad_reason_;
};

}  // namespace ptrain::proto
