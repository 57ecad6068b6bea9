// Destinations a receiver posts for the floats of its next bulk messages, so that a transport
// reads them straight into place (like MPI_Irecv into a user buffer): the worker posts its pull
// destination per server, the parameter server its per-worker gradient slot. Thread-safe: the
// role thread posts and cancels; the transport claims a posting where it decodes (the TCP
// reader on the I/O thread, Transport::receive for the in-process wire).
//
// A posting is keyed by (sender, message type) and carries a `match` value (PullReply: the
// request id; GradPush: the step) and a span of floats. A message of that type from that sender
// takes it only when its match value and float count agree; it is then consumed (one posting,
// one message) and claimed until every float has been written (or the connection died). Any
// other message gets a buffer of its own (FloatRange::allocate), so a stale push never lands in
// the current step's slot. Post again only after the message that consumed the previous posting
// has been received: until then its floats are in the posted memory.
#pragma once

#include "common/net/endpoint.hpp"
#include "common/proto/messages.hpp"

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>

namespace ptrain::net {

class ReceivePosts : public std::enable_shared_from_this<ReceivePosts> {
 public:
  // Posts `dst` for the next `type` message from `from` with this match value, replacing an
  // earlier posting for (from, type). Waits while a message is being written into the earlier
  // posting's memory.
  void post(const Endpoint& from, proto::MessageType type, uint64_t match, std::span<float> dst);
  // Withdraws the posting for (from, type), if any; returns once nothing writes into it.
  void cancel(const Endpoint& from, proto::MessageType type);

  // The transport's side: the posted span for a `type` message from `from` with `match` and
  // `count` floats, or an empty span. The span stays claimed (post/cancel for that key wait)
  // until the returned holder is destroyed.
  struct Claimed {
    std::span<float> dst;
    std::shared_ptr<void> hold;  // releases the claim when the last copy is destroyed
  };
  Claimed claim(const Endpoint& from, proto::MessageType type, uint64_t match, size_t count);

  // The wire is stopped (no reader runs any more): post/cancel no longer wait for claims.
  void close();

 private:
  using Key = std::pair<Endpoint, proto::MessageType>;
  struct Post {
    uint64_t match = 0;
    std::span<float> dst;
  };
  void wait_unclaimed(std::unique_lock<std::mutex>& lock, const Key& key);

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<Key, Post> posts_;
  std::set<Key> claimed_;
  bool closed_ = false;
};

}  // namespace ptrain::net
