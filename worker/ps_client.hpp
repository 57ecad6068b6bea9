// The worker's side of the parameter servers, as small as ps-lite's KVWorker:
//   pull(version, dst) → ticket    push(meta, grads) → ticket    wait(ticket)
// Ranges are whole server slices of the flat parameter vector (few large messages), or, for a
// step that overlaps communication with compute (worker/overlap.hpp), slices of them: a pull may
// ask each server for its slice in pieces, in flat order, and wait_range() returns as soon as
// the pieces covering a range are in; push_range() sends any range, cut at server boundaries,
// and flush_pushes() waits until every frame sent so far is written. Any message
// that is not a pull reply (the coordinator's StepBegin, Shutdown, ...) is kept, in arrival order,
// for the owner's loop: next_other(). Single-threaded: one PsClient per role thread.
// No copies of the vectors: a pull posts each server's slice of `dst` as the destination of its
// reply (the transport reads the weights straight into it); a push sends each server its slice
// of `grads` as a borrowed range and returns once every frame is written (flush).
// With bf16 on the wire (cluster.wire_dtype: bf16) each push is first rounded into a packed
// buffer the client keeps (common/proto/bf16.hpp), and a pull's replies land in a packed buffer
// from a small pool (one per pull in flight) and are widened into `dst` as each arrives; both
// are reused, so a step allocates nothing. With error feedback on, what the rounding of each
// pushed element dropped is added to that element's next push.
#pragma once

#include "common/net/transport.hpp"
#include "common/proto/messages.hpp"

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <span>
#include <vector>

namespace ptrain {

struct PushMeta {
  int64_t step = 0;
  int64_t membership_epoch = 0;
  int32_t worker_id = 0;
  int64_t tokens = 0;
};

class PsClient {
 public:
  using Ticket = uint64_t;

  // server_ranges[k] = server k's slice; together they tile [0, total). `send_timeout` bounds a
  // push's wait for its frames to be written.
  // `encoding`: how pushes and pull replies carry their floats.
  PsClient(net::Transport& transport, std::vector<proto::KeyRange> server_ranges,
           std::chrono::milliseconds send_timeout = std::chrono::minutes(10),
           proto::FloatEncoding encoding = proto::FloatEncoding::kFp32);
  // Withdraws the pull destinations still posted.
  ~PsClient();
  PsClient(const PsClient&) = delete;
  PsClient& operator=(const PsClient&) = delete;

  // Requests every server's slice at `version` into `dst` (the whole flat vector, total floats).
  // `dst` must stay alive, and untouched, until wait() returns. `piece` > 0: each server's slice
  // is asked for in pieces of about that many floats (rounded up to even, so bf16 pieces stay
  // whole 4-byte elements), in flat order; 0: one request per server.
  Ticket pull(int64_t version, std::span<float> dst, int64_t piece = 0);
  // cluster.sync ssp and async: the same, but each server answers with the newest version it
  // holds, `min_version` or later (it waits until it has that one); a newer reply is not late.
  // After wait(), last_pulled_version() is the oldest version among the replies.
  Ticket pull_newest(int64_t min_version, std::span<float> dst);
  int64_t last_pulled_version() const { return last_pulled_version_; }

  // Sends each server its slice of `grads` (the whole flat vector). Complete (and `grads` free
  // to change) once it returns.
  Ticket push(const PushMeta& meta, std::span<const float> grads);
  // The same to servers [first, last) only (push() = all of them); a test's fault injection
  // stops between two servers with it.
  Ticket push_to(const PushMeta& meta, std::span<const float> grads, size_t first, size_t last);
  // Sends grads[r] (grads: the whole flat vector), one GradPush per server that r touches,
  // without waiting: grads[r] must stay unchanged until flush_pushes() returns. Returns the
  // number of messages sent.
  int push_range(const PushMeta& meta, std::span<const float> grads, proto::KeyRange r);
  // Waits until every push sent so far is written (then grads and bf16 buffers are free).
  void flush_pushes();

  // Blocks until the pieces of the ticket's pull that hold [begin, end) are in (throws as wait()
  // does). Returns false as soon as a server sent a NEWER version than asked (see wait()); the
  // caller then still wait()s for the ticket, which drains the rest.
  bool wait_range(Ticket ticket, int64_t begin, int64_t end, std::chrono::milliseconds timeout);

  // Blocks until the ticket's replies are in. Throws (naming the server) when a server answers
  // with a Failure or an older version than asked, and TimeoutError-like Error after `timeout`.
  // Returns false when a server sent a NEWER version than the pull asked for: the step that
  // version belongs to closed without this worker (it was late), so its StepBegin is stale.
  bool wait(Ticket ticket, std::chrono::milliseconds timeout);

  // The next message that is not a pull reply: from the queue, else from the transport.
  std::optional<net::Envelope> next_other(std::chrono::milliseconds timeout);

  const std::vector<proto::KeyRange>& server_ranges() const { return ranges_; }
  int64_t total() const { return total_; }
  proto::FloatEncoding encoding() const { return encoding_; }
  // bf16 pushes carry each element's rounding error into its next push (cluster.
  // wire_error_feedback; common/proto/bf16.hpp pack_bf16_feedback). The residuals live here, one
  // per element of the flat vector, from zero; they are not checkpointed.
  void set_error_feedback(bool on);
  bool error_feedback() const { return !residual_.empty(); }

 private:
  struct Piece {
    size_t server = 0;
    proto::KeyRange range;
    size_t packed_at = 0;  // bf16: where its packed floats start in PullState::packed
    uint64_t request = 0;
    bool arrived = false;
  };
  struct PullState {
    int64_t version = 0;
    std::span<float> dst;
    int remaining = 0;
    bool newer = false;  // a server sent a newer version than asked
    bool newest = false;  // pull_newest: a newer version is what was asked for
    int64_t oldest = INT64_MAX;  // the oldest version among the replies so far
    std::vector<float> packed;  // bf16: the replies' packed floats (from packed_pool_)
    std::vector<Piece> pieces;  // by flat offset; a server's pieces are consecutive
  };
  void dispatch(net::Envelope&& env);
  // Posts the destination of the first piece of `server` not yet in (one posting per server).
  void post_next(PullState& st, size_t server);
  std::span<float> piece_destination(PullState& st, const Piece& p);

  net::Transport& transport_;
  std::vector<proto::KeyRange> ranges_;
  std::chrono::milliseconds send_timeout_;
  int64_t total_ = 0;
  proto::FloatEncoding encoding_;
  std::vector<float> residual_;  // error feedback: what rounding dropped, per element
  // bf16: where server k's packed slice starts in a packed buffer (k = 0..S), in elements.
  std::vector<size_t> packed_offsets_;
  std::vector<float> push_packed_;  // rounded gradients of the pushes in flight (bump-allocated)
  size_t push_packed_used_ = 0;
  std::vector<std::vector<float>> packed_pool_;    // pull buffers not in use
  Ticket next_ticket_ = 1;
  uint64_t next_request_ = 1;
  std::map<Ticket, PullState> pulls_;
  std::map<uint64_t, std::pair<Ticket, size_t>> requests_;  // pull request id → (ticket, piece)
  std::deque<net::Envelope> others_;
  int64_t last_pulled_version_ = -1;
};

}  // namespace ptrain
