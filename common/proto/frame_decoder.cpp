#include "common/proto/frame_decoder.hpp"

#include "common/error.hpp"
#include "common/util/hash.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace ptrain::proto {

namespace {
uint32_t load_u32(const std::byte* p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  return x;
}
}  // namespace

std::vector<std::byte> wire_bytes(const Frame& f) {
  if (!f.split) return f.bytes;
  std::vector<std::byte> out = f.bytes;
  const auto floats = std::as_bytes(f.floats.view());
  out.insert(out.end(), floats.begin(), floats.end());
  out.resize(out.size() + kTrailerSize);
  std::memcpy(out.data() + out.size() - kTrailerSize, &f.payload_crc, 4);
  return out;
}

FrameDecoder::FrameDecoder(DecoderLimits limits, size_t staging, Allocate allocate, Admit admit,
                           FloatDestinationFn destination)
    : limits_(limits),
      allocate_(std::move(allocate)),
      admit_(std::move(admit)),
      destination_(std::move(destination)),
      stage_(std::max(staging, kMinStaging)) {}

FrameDecoder::~FrameDecoder() = default;

std::span<std::byte> FrameDecoder::buffer() {
  if (bad_) return {};
  if (phase_ == Phase::kLarge) {
    if (big_.size() == got_) {
      // Within the reserved capacity: no reallocation; zero-fills one piece, which the read
      // then overwrites while it is still in cache.
      big_.resize(std::min(static_cast<size_t>(header_.frame_size()), got_ + kPiece));
    }
    return {big_.data() + got_, big_.size() - got_};
  }
  if (phase_ == Phase::kFloats) {
    return dst_.subspan(dst_got_, std::min(kPiece, dst_.size() - dst_got_));
  }
  if (lo_ == hi_) {
    lo_ = hi_ = 0;
  } else if (lo_ > 0 && hi_ == stage_.size()) {
    // Room behind a partial frame: move it to the front (at most one staging buffer's worth).
    std::memmove(stage_.data(), stage_.data() + lo_, hi_ - lo_);
    hi_ -= lo_;
    lo_ = 0;
  }
  return {stage_.data() + hi_, stage_.size() - hi_};
}

void FrameDecoder::commit(size_t n) {
  if (bad_ || n == 0) return;
  if (phase_ == Phase::kLarge) {
    PTRAIN_ENFORCE(n <= big_.size() - got_, "committed {} bytes past the buffer", n);
    // Only payload bytes count for the CRC (not the trailer).
    const size_t payload_end = kHeaderSize + static_cast<size_t>(header_.payload_length);
    if (got_ < payload_end) {
      crc_ = crc32c(big_.data() + got_, std::min(n, payload_end - got_), crc_);
    }
    got_ += n;
    return;
  }
  if (phase_ == Phase::kFloats) {
    PTRAIN_ENFORCE(n <= dst_.size() - dst_got_, "committed {} bytes past the buffer", n);
    crc_ = crc32c(dst_.data() + dst_got_, n, crc_);
    dst_got_ += n;
    return;
  }
  PTRAIN_ENFORCE(n <= stage_.size() - hi_, "committed {} bytes past the buffer", n);
  hi_ += n;
}

size_t FrameDecoder::feed(std::span<const std::byte> bytes) {
  size_t taken = 0;
  while (taken < bytes.size()) {
    const std::span<std::byte> to = buffer();
    if (to.empty()) break;
    const size_t n = std::min(to.size(), bytes.size() - taken);
    std::memcpy(to.data(), bytes.data() + taken, n);
    commit(n);
    taken += n;
    if (phase_ == Phase::kStaging && n == to.size()) break;  // full: the caller takes frames
    if (phase_ == Phase::kFloats && dst_got_ == dst_.size()) break;  // next() moves on
  }
  return taken;
}

DecodeStatus FrameDecoder::fail(std::string why, std::string& error) {
  bad_ = true;
  bad_reason_ = std::move(why);
  error = bad_reason_;
  stage_ = {};
  big_ = {};
  head_ = {};
  floats_ = {};
  hold_.reset();
  dst_ = {};
  lo_ = hi_ = got_ = dst_got_ = 0;
  phase_ = Phase::kStaging;
  awaiting_trailer_ = false;
  return DecodeStatus::kBad;
}

DecodeStatus FrameDecoder::finish(Frame& frame, uint32_t stored, std::string& error) {
  if (stored != crc_) return fail(payload_crc_error(header_, stored, crc_), error);
  frame.header = header_;
  frame.payload_crc = stored;
  return DecodeStatus::kGood;
}

// The head of a float-body frame is staged: find the floats' destination, move what is already
// staged of them there, and read the rest in place.
void FrameDecoder::start_floats() {
  const size_t head = float_body_head(header_.type);
  const std::span<const std::byte> head_payload(stage_.data() + lo_ + kHeaderSize, head);
  const uint64_t n = float_body_count(header_.type, head_payload);  // checked by decode_frame
  FloatDestination d;
  if (destination_) d = destination_(header_.type, float_body_match(head_payload), n);
  if (d.dst.size() == n && n > 0) {
    floats_ = FloatRange::borrow(d.dst);
    hold_ = std::move(d.hold);
    dst_ = std::as_writable_bytes(d.dst);
  } else {
    auto [owned, to] = FloatRange::allocate(n);
    floats_ = std::move(owned);
    dst_ = std::as_writable_bytes(to);
  }
  head_.assign(stage_.begin() + static_cast<std::ptrdiff_t>(lo_),
               stage_.begin() + static_cast<std::ptrdiff_t>(lo_ + kHeaderSize + head));
  crc_ = crc32c(head_payload.data(), head);
  lo_ += kHeaderSize + head;
  const size_t k = std::min(hi_ - lo_, dst_.size());
  if (k > 0) {
    std::memcpy(dst_.data(), stage_.data() + lo_, k);
    crc_ = crc32c(dst_.data(), k, crc_);
    lo_ += k;
  }
  dst_got_ = k;
  phase_ = Phase::kFloats;
}

DecodeStatus FrameDecoder::next(Frame& frame, std::string& error) {
  if (bad_) {
    error = bad_reason_;
    return DecodeStatus::kBad;
  }
  if (phase_ == Phase::kLarge) {
    if (got_ < header_.frame_size()) return DecodeStatus::kNeedMore;
    phase_ = Phase::kStaging;
    const uint32_t stored = load_u32(big_.data() + big_.size() - kTrailerSize);
    if (finish(frame, stored, error) == DecodeStatus::kBad) return DecodeStatus::kBad;
    frame.bytes = std::move(big_);
    frame.split = false;
    frame.floats = {};
    big_ = {};
    return DecodeStatus::kGood;
  }
  if (phase_ == Phase::kFloats) {
    if (dst_got_ < dst_.size()) return DecodeStatus::kNeedMore;
    phase_ = Phase::kStaging;
    awaiting_trailer_ = true;  // read through the staging buffer, with whatever follows it
  }
  const std::span<const std::byte> avail(stage_.data() + lo_, hi_ - lo_);
  if (awaiting_trailer_) {
    if (avail.size() < kTrailerSize) return DecodeStatus::kNeedMore;
    const uint32_t stored = load_u32(avail.data());
    lo_ += kTrailerSize;
    awaiting_trailer_ = false;
    hold_.reset();  // every float is in place: the destination is the receiver's again
    dst_ = {};
    if (finish(frame, stored, error) == DecodeStatus::kBad) return DecodeStatus::kBad;
    frame.bytes = std::move(head_);
    head_ = {};
    frame.split = true;
    frame.floats = std::move(floats_);
    floats_ = {};
    return DecodeStatus::kGood;
  }
  // The header first (all of decode_frame's header checks), then the caller's admit().
  DecodeResult r = decode_frame(avail.first(std::min(avail.size(), kHeaderSize)), limits_);
  if (r.status == DecodeStatus::kBad) return fail(std::move(r.error), error);
  if (avail.size() < kHeaderSize) return DecodeStatus::kNeedMore;
  header_ = r.header;
  if (admit_) {
    if (std::string why = admit_(header_); !why.empty()) return fail(std::move(why), error);
  }
  if (const size_t head = float_body_head(header_.type); head > 0) {
    if (avail.size() < kHeaderSize + head) return DecodeStatus::kNeedMore;
    // decode_frame checks the float count against the payload length once the head is in.
    r = decode_frame(avail.first(kHeaderSize + head), limits_);
    if (r.status == DecodeStatus::kBad) return fail(std::move(r.error), error);
    start_floats();
    return next(frame, error);
  }
  r = decode_frame(avail, limits_);
  if (r.status == DecodeStatus::kBad) return fail(std::move(r.error), error);
  if (r.status == DecodeStatus::kGood) {
    frame.header = r.header;
    frame.bytes.assign(avail.begin(), avail.begin() + static_cast<std::ptrdiff_t>(r.consumed));
    frame.split = false;
    frame.floats = {};
    frame.payload_crc = load_u32(avail.data() + r.consumed - kTrailerSize);
    lo_ += r.consumed;
    return DecodeStatus::kGood;
  }
  const size_t total = static_cast<size_t>(header_.frame_size());
  if (total <= stage_.size()) return DecodeStatus::kNeedMore;  // it will fit: read more
  // Too large to stage: one buffer of exactly the frame's size; what is staged moves there.
  big_ = allocate_ ? allocate_(total) : std::vector<std::byte>();
  big_.clear();
  big_.reserve(total);
  big_.insert(big_.end(), avail.begin(), avail.end());
  got_ = big_.size();
  // The staged bytes may reach into the trailer; the CRC covers the payload only.
  crc_ = crc32c(big_.data() + kHeaderSize,
                std::min(got_, kHeaderSize + static_cast<size_t>(header_.payload_length)) -
                    kHeaderSize);
  lo_ = hi_ = 0;
  phase_ = Phase::kLarge;
  return next(frame, error);
}

size_t FrameDecoder::buffered() const {
  switch (phase_) {
    case Phase::kLarge: return got_;
    case Phase::kFloats: return head_.size() + dst_got_;
    case Phase::kStaging: break;
  }
  return hi_ - lo_ + (awaiting_trailer_ ? head_.size() + dst_.size() : 0);
}

}  // namespace ptrain::proto
