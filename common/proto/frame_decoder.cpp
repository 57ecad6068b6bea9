#include "common/proto/frame_decoder.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "common/error.hpp"
#include "common/util/hash.hpp"

namespace ptrain::proto {

FrameDecoder::FrameDecoder(DecoderLimits limits, size_t staging, Allocate allocate, Admit admit)
    : limits_(limits),
      allocate_(std::move(allocate)),
      admit_(std::move(admit)),
      stage_(std::max(staging, kHeaderSize)) {}

std::span<std::byte> FrameDecoder::buffer() {
  if (bad_) return {};
  if (direct_) {
    if (big_.size() == got_) {
      // Within the reserved capacity: no reallocation; zero-fills one piece, which the read
      // then overwrites while it is still in cache.
      big_.resize(std::min(total_, got_ + kPiece));
    }
    return {big_.data() + got_, big_.size() - got_};
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
  if (direct_) {
    PTRAIN_ENFORCE(n <= big_.size() - got_, "committed {} bytes past the buffer", n);
    crc_ = crc32c(big_.data() + got_, n, crc_);
    got_ += n;
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
    if (!direct_ && n == to.size()) break;  // staging full: the caller takes frames first
  }
  return taken;
}

DecodeStatus FrameDecoder::fail(std::string why, std::string& error) {
  bad_ = true;
  bad_reason_ = std::move(why);
  error = bad_reason_;
  stage_ = {};
  big_ = {};
  lo_ = hi_ = got_ = 0;
  direct_ = false;
  return DecodeStatus::kBad;
}

DecodeStatus FrameDecoder::next(Frame& frame, std::string& error) {
  if (bad_) {
    error = bad_reason_;
    return DecodeStatus::kBad;
  }
  if (direct_) {
    if (got_ < total_) return DecodeStatus::kNeedMore;
    direct_ = false;
    if (crc_ != header_.crc) {
      return fail(fmt::format("{} frame of {} payload bytes fails its CRC32C (0x{:08x} in the "
                              "header, 0x{:08x} computed)",
                              type_name(header_.type), header_.payload_length, header_.crc, crc_),
                  error);
    }
    frame.header = header_;
    frame.bytes = std::move(big_);
    big_ = {};
    return DecodeStatus::kGood;
  }
  const std::span<const std::byte> avail(stage_.data() + lo_, hi_ - lo_);
  DecodeResult r = decode_frame(avail, limits_);
  if (r.status == DecodeStatus::kBad) return fail(std::move(r.error), error);
  if (avail.size() < kHeaderSize) return DecodeStatus::kNeedMore;
  // The header passed decode_frame's checks (or the frame is whole): the caller's turn.
  if (admit_) {
    if (std::string why = admit_(r.header); !why.empty()) return fail(std::move(why), error);
  }
  if (r.status == DecodeStatus::kGood) {
    frame.header = r.header;
    frame.bytes.assign(avail.begin(), avail.begin() + static_cast<std::ptrdiff_t>(r.consumed));
    lo_ += r.consumed;
    return DecodeStatus::kGood;
  }
  const size_t total = kHeaderSize + static_cast<size_t>(r.header.payload_length);
  if (total <= stage_.size()) return DecodeStatus::kNeedMore;  // it will fit: read more
  // Too large to stage: one buffer of exactly the frame's size; what is staged moves there.
  header_ = r.header;
  total_ = total;
  big_ = allocate_ ? allocate_(total) : std::vector<std::byte>();
  big_.clear();
  big_.reserve(total);
  big_.insert(big_.end(), avail.begin(), avail.end());
  got_ = big_.size();
  crc_ = crc_of_header(std::span<const std::byte, kHeaderSize>(big_.data(), kHeaderSize));
  crc_ = crc32c(big_.data() + kHeaderSize, got_ - kHeaderSize, crc_);
  lo_ = hi_ = 0;
  direct_ = true;
  return next(frame, error);
}

size_t FrameDecoder::buffered() const { return direct_ ? got_ : hi_ - lo_; }

}  // namespace ptrain::proto
