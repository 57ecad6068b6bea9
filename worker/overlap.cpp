// Pieces in, buckets out (overlap.hpp).
#include "worker/overlap.hpp"

#include "common/error.hpp"

#include <algorithm>
#include <cmath>

namespace ptrain {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int64_t bucket_floats(double bucket_mb) {
  if (!(bucket_mb > 0.0)) return 0;
  return std::max<int64_t>(2, static_cast<int64_t>(std::llround(bucket_mb * 1024.0 * 1024.0 / 4.0)));
}

void PiecewisePull::start(int64_t version, std::span<float> dst) {
  PTRAIN_ENFORCE(!open_, "a pull of the previous step is still open");
  ticket_ = client_.pull(version, dst, piece_);
  open_ = true;
  stale_ = false;
  blocked_s_ = 0.0;
}

void PiecewisePull::wait_weights(int64_t begin, int64_t end) {
  PTRAIN_ENFORCE(open_, "wait_weights() outside a step");
  const auto t0 = Clock::now();
  const bool current = client_.wait_range(ticket_, begin, end, timeout_);
  blocked_s_ += since(t0);
  if (!current) {
    stale_ = true;
    throw StaleStep("a server already holds a newer version: the step closed without this worker");
  }
}

bool PiecewisePull::finish() {
  if (!open_) return !stale_;
  const auto t0 = Clock::now();
  open_ = false;
  const bool current = client_.wait(ticket_, timeout_) && !stale_;
  blocked_s_ += since(t0);
  return current;
}

void BucketPush::start(const PushMeta& meta) {
  meta_ = meta;
  grads_ = {};
  pending_.clear();
  pending_size_ = 0;
  seen_.clear();
  buckets_ = 0;
  push_s_ = 0.0;
}

void BucketPush::gradient_ready(std::span<const float> grads_host, int64_t begin, int64_t end) {
  const auto t0 = Clock::now();
  PTRAIN_ENFORCE(static_cast<int64_t>(grads_host.size()) == client_.total() && 0 <= begin &&
                     begin <= end && end <= client_.total(),
                 "gradient range [{}, {}) of a {}-float vector ({} parameters)", begin, end,
                 grads_host.size(), client_.total());
  PTRAIN_ENFORCE(grads_.empty() || grads_.data() == grads_host.data(),
                 "gradient ranges of one step must come from one buffer");
  grads_ = grads_host;
  seen_.push_back({begin, end});
  if (begin == end) return;
  // Backward hands ranges over from the end of the vector down: join a run that touches.
  if (!pending_.empty() && pending_.back().begin == end) {
    pending_.back().begin = begin;
  } else if (!pending_.empty() && pending_.back().end == begin) {
    pending_.back().end = end;
  } else {
    pending_.push_back({begin, end});
  }
  pending_size_ += end - begin;
  if (pending_size_ >= bucket_) send_pending();
  push_s_ += since(t0);
}

void BucketPush::send_pending() {
  if (pending_.empty()) return;
  for (const auto& r : pending_) {
    if (!after_message) {
      client_.push_range(meta_, grads_, r);
      continue;
    }
    for (const auto& s : client_.server_ranges()) {  // one message at a time
      const proto::KeyRange piece{std::max(r.begin, s.begin), std::min(r.end, s.end)};
      if (piece.begin >= piece.end) continue;
      client_.push_range(meta_, grads_, piece);
      client_.flush_pushes();
      after_message();
    }
  }
  pending_.clear();
  pending_size_ = 0;
  ++buckets_;
}

void BucketPush::finish() {
  const auto t0 = Clock::now();
  // Exactly once: the ranges, sorted, tile [0, total).
  std::sort(seen_.begin(), seen_.end(),
            [](const auto& a, const auto& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  int64_t at = 0;
  for (const auto& r : seen_) {
    PTRAIN_ENFORCE(r.begin == at, "the step's gradient ranges {} [{}, {}) (expected one from {})",
                   r.begin < at ? "overlap at" : "leave a gap before", r.begin, r.end, at);
    at = r.end;
  }
  PTRAIN_ENFORCE(at == client_.total(), "the step's gradient ranges end at {} of {}", at,
                 client_.total());
  send_pending();
  client_.flush_pushes();
  push_s_ += since(t0);
}

}  // namespace ptrain
