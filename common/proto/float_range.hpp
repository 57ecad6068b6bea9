// The floats of a bulk data-plane message (GradPush::grads, PullReply::weights), without a copy
// owned by the message:
//   - sending: a BORROWED view of the sender's memory (the worker's gradient slice, the server's
//     weights). The encoder writes it to the wire straight from there (scatter-gather, CRC32C
//     computed while writing); the sender keeps it valid and unchanged until Transport::flush()
//     returns (transport.hpp).
//   - receiving: a view of the destination the receiver posted (Transport::post_receive: the
//     worker's pull destination, the server's per-worker gradient slot), into which the floats
//     were read straight from the socket; or, when nothing was posted, a buffer of exactly the
//     message's size that this object shares ownership of.
// Copying a FloatRange copies the view (and shares an owned buffer), never the floats.
// Equality compares the floats (like std::vector<float>: NaN != NaN).
#pragma once

#include "common/util/huge_pages.hpp"

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace ptrain::proto {

class FloatRange {
 public:
  FloatRange() = default;
  // Borrowed: `view` must outlive every use of this object (see above).
  static FloatRange borrow(std::span<const float> view) {
    FloatRange r;
    r.view_ = view;
    return r;
  }
  // Owned: takes the vector (shared by copies).
  FloatRange(std::vector<float> floats) {  // NOLINT(google-explicit-constructor): message literals
    auto v = std::make_shared<std::vector<float>>(std::move(floats));
    view_ = *v;
    owner_ = std::move(v);
  }
  FloatRange(std::initializer_list<float> floats) : FloatRange(std::vector<float>(floats)) {}
  // Owned storage of `n` floats, uninitialised, and the writable view of it that a receiver
  // fills (a receive buffer the bytes are read into).
  static std::pair<FloatRange, std::span<float>> allocate(size_t n) {
    std::shared_ptr<float[]> p(new float[n]);  // no zero-filling pass
    advise_huge_pages(p.get(), n * sizeof(float));  // before the first touch
    const std::span<float> to(p.get(), n);
    FloatRange r;
    r.view_ = to;
    r.owner_ = std::move(p);
    return {std::move(r), to};
  }

  std::span<const float> view() const { return view_; }
  operator std::span<const float>() const { return view_; }  // NOLINT: reads like a span
  const float* data() const { return view_.data(); }
  size_t size() const { return view_.size(); }
  bool empty() const { return view_.empty(); }
  const float* begin() const { return view_.data(); }
  const float* end() const { return view_.data() + view_.size(); }
  const float& operator[](size_t i) const { return view_[i]; }
  // True when this object keeps the floats alive (received without a posted destination, or
  // built from a vector); false for a borrowed view.
  bool owned() const { return owner_ != nullptr; }
  // What keeps an owned buffer alive (null when borrowed): a sender's queue holds it.
  const std::shared_ptr<const void>& owner() const { return owner_; }

  friend bool operator==(const FloatRange& a, const FloatRange& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  }
  friend bool operator==(const FloatRange& a, const std::vector<float>& b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  }

 private:
  std::span<const float> view_;
  std::shared_ptr<const void> owner_;
};

}  // namespace ptrain::proto
