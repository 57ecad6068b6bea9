// Communication that overlaps the step's compute (cluster.bucket_mb > 0), over a PsClient:
//   PiecewisePull — a WeightSource: the step's weights are asked for in pieces of the bucket size,
//                   in flat order (embeddings and first layers first), and forward waits only
//                   for the pieces it is about to read, so layer 0 runs while later layers arrive.
//   BucketPush    — a GradientSink: finished gradient ranges (backward order: last layers first)
//                   are grouped into buckets of the bucket size; each full bucket is pushed at
//                   once, cut at server boundaries, so the push of layer l travels while layer
//                   l−1's backward runs (PyTorch DDP's buckets, 25 MB by default as there).
// Both run on the compute thread (the PsClient is single-threaded); sends only queue frames (the
// transport writes them), so neither blocks the backward pass for long. The servers keep each
// push's range and count a worker for the step once its pieces cover their shard
// (paramserver/aggregator.hpp), so the sums, and bsp results, are bitwise those of one push.
#pragma once

#include "worker/ps_client.hpp"
#include "worker/step_transfers.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <vector>

namespace ptrain {

// Thrown by PiecewisePull::wait_weights when a server already holds a newer version: the step
// closed without this worker (see PsClient::wait).
class StaleStep : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// cluster.bucket_mb as a count of floats (0 = no overlap).
int64_t bucket_floats(double bucket_mb);

class PiecewisePull final : public WeightSource {
 public:
  PiecewisePull(PsClient& client, int64_t piece, std::chrono::milliseconds timeout)
      : client_(client), piece_(piece), timeout_(timeout) {}
  // Asks for every piece of `version` into `dst` (the whole flat vector).
  void start(int64_t version, std::span<float> dst);
  // Throws StaleStep (after draining the pull) when a server is past `version`.
  void wait_weights(int64_t begin, int64_t end) override;
  // Waits for whatever has not arrived (normally nothing) and ends the pull. Returns false when
  // the weights were stale (a StaleStep was thrown).
  bool finish();
  // Seconds the caller spent blocked in wait_weights since start().
  double blocked_s() const { return blocked_s_; }

 private:
  PsClient& client_;
  int64_t piece_;
  std::chrono::milliseconds timeout_;
  PsClient::Ticket ticket_ = 0;
  bool open_ = false;
  bool stale_ = false;
  double blocked_s_ = 0.0;
};

class BucketPush final : public GradientSink {
 public:
  // bucket: floats per bucket (> 0); a bucket is pushed once it holds at least that many.
  BucketPush(PsClient& client, int64_t bucket) : client_(client), bucket_(bucket) {}
  // A new step: its meta (token count known before the backward pass ends).
  void start(const PushMeta& meta);
  void gradient_ready(std::span<const float> grads_host, int64_t begin, int64_t end) override;
  // Pushes what is left, waits until every frame is written, and checks that the step handed
  // over every element exactly once.
  void finish();
  // Seconds spent in gradient_ready (packing, queuing) and finish since start().
  double push_s() const { return push_s_; }
  int64_t buckets() const { return buckets_; }
  // TEST ONLY (fault injection): called after each GradPush message is sent and written.
  std::function<void()> after_message;

 private:
  void send_pending();

  PsClient& client_;
  int64_t bucket_;
  PushMeta meta_;
  std::span<const float> grads_;
  std::vector<proto::KeyRange> pending_;  // contiguous runs of the current bucket
  int64_t pending_size_ = 0;
  std::vector<proto::KeyRange> seen_;     // every range of the step (exactly-once check)
  int64_t buckets_ = 0;
  double push_s_ = 0.0;
};

}  // namespace ptrain
