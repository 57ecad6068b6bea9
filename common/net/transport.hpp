// The Transport interface: how a role (coordinator, parameter server, worker) sends messages to
// other roles and receives its own. The base class owns everything but the wire: encoding and
// decoding through the frame codec (common/proto/codec.hpp), receive postings, byte and frame
// counters. A subclass moves frames: the in-process transport between threads, TCP between
// processes (its reader cuts the byte stream with proto::FrameDecoder). Training code never sees
// which one runs.
//
// The data plane without copies (GradPush, PullReply):
//   - send: the message's floats are a BORROWED FloatRange; the frame is the encoded head plus
//     that range, written from where it lies (TCP: scatter-gather, CRC32C computed while
//     writing). The caller keeps the floats valid and unchanged until flush() returns.
//   - receive: post_receive() names the destination of the next such message from a peer (the
//     worker's pull destination, the server's gradient slot); its floats are read straight into
//     it (TCP: from the socket; in-process: copied once out of the frame), and the received
//     FloatRange views it. Without a posting, a buffer of exactly the message's size is used.
//   - sends are queued per peer up to a bound: a sender blocks (up to a timeout, then throws)
//     while too much is queued for that peer (backpressure).
// An MPI transport maps onto the same calls: a send is MPI_Isend of the head and of the range
// (flush = MPI_Waitall), a posting is MPI_Irecv of the range into the destination.
//
// One Transport object belongs to one role (its `self` endpoint). send() and flush() may be called
// from any thread; receive(), post_receive() and cancel_receive() from the role's loop.
#pragma once

#include "common/error.hpp"
#include "common/net/endpoint.hpp"
#include "common/net/receive_posts.hpp"
#include "common/proto/codec.hpp"
#include "common/proto/messages.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <compare>
#include <exception>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ptrain::net {

// A decoded message and who sent it.
struct Envelope {
  Endpoint from;
  proto::Message message;
};

// Raised by send()/receive() once the transport (or the fabric under it) is closed: the job is
// stopping. Carries no blame; the error that caused the stop is reported elsewhere.
class TransportClosed : public Error {
 public:
  explicit TransportClosed(const std::string& what) : Error(ExitCode::kInterrupted, what) {}
};

// Raised when a peer cannot be reached (unknown endpoint, connection lost).
class PeerLost : public Error {
 public:
  explicit PeerLost(const std::string& what) : Error(ExitCode::kIo, what) {}
};

struct TransportCounters {
  uint64_t frames_sent = 0;
  uint64_t frames_received = 0;
  uint64_t bytes_sent = 0;      // whole frames, header included
  uint64_t bytes_received = 0;
  // Bytes by message type (index = MessageType value), e.g. GradPush = bytes pushed.
  std::array<uint64_t, proto::kMaxMessageType + 1> bytes_sent_by_type{};
  std::array<uint64_t, proto::kMaxMessageType + 1> bytes_received_by_type{};
};

// A received frame and its sender, as a subclass hands it to the base: a whole encoded frame,
// or (split) a float-body frame whose floats the stream decoder already placed.
struct RawFrame {
  RawFrame() = default;
  // A whole encoded frame.
  RawFrame(Endpoint sender, std::vector<std::byte> frame, bool crc_already_checked = false)
      : from(sender), bytes(std::move(frame)), crc_checked(crc_already_checked) {}

  Endpoint from;
  std::vector<std::byte> bytes;  // whole: the frame; split: header + head payload
  // The subclass already checked the frame's CRC32C (the TCP reader does, while the bytes
  // arrive): receive() then skips its own pass over the payload.
  bool crc_checked = false;
  bool split = false;
  proto::FloatRange floats;  // split: the floats, in place
  size_t wire_size = 0;      // bytes on the wire (0: bytes.size())
};

class Transport {
 public:
  // `posts`: where the wire looks up receive postings (shared with a TCP node's reader); a new,
  // private set when null.
  Transport(Endpoint self, proto::DecoderLimits limits,
            std::shared_ptr<ReceivePosts> posts = nullptr);
  virtual ~Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  const Endpoint& self() const { return self_; }

  // Encodes `msg` and hands the frame to the wire: queued (TCP: for the writer of that peer's
  // connection; blocks while the peer's queue is over its bound, up to the send timeout) or
  // delivered (in-process). A FloatRange in `msg` is borrowed until flush() returns; everything
  // else is copied (or, for an owned FloatRange, shared) before send() returns. Thread-safe.
  // Throws TransportClosed, PeerLost, or Error(kIo) when the peer's queue stays full.
  void send(const Endpoint& to, const proto::Message& msg);

  // Returns once no frame sent so far still reads borrowed floats (written, or dropped with its
  // connection). Throws Error(kIo) naming what is still queued after `timeout`.
  virtual void flush(std::chrono::milliseconds timeout) { (void)timeout; }

  // Posts `dst` as the destination of the floats of the next `type` message (GradPush,
  // PullReply) from `from` whose match value (request id, step) is `match` and whose float count
  // is dst.size(); see receive_posts.hpp. cancel_receive() withdraws it (and waits until nothing
  // writes into it); call it before `dst` goes away.
  void post_receive(const Endpoint& from, proto::MessageType type, uint64_t match,
                    std::span<float> dst);
  void cancel_receive(const Endpoint& from, proto::MessageType type);

  // The next message for this endpoint, waiting at most `timeout`; nullopt when none came.
  // Throws TransportClosed once closed, and ProtocolError (naming the sender) for a frame that
  // does not decode.
  std::optional<Envelope> receive(std::chrono::milliseconds timeout);

  // Stops this endpoint: pending and later receive()/send() calls throw TransportClosed.
  virtual void close() = 0;

  TransportCounters counters() const;

 protected:
  virtual void send_frame(const Endpoint& to, proto::OutFrame frame) = 0;
  virtual std::optional<RawFrame> receive_frame(std::chrono::milliseconds timeout) = 0;
  const std::shared_ptr<ReceivePosts>& posts() const { return posts_; }

 private:
  Endpoint self_;
  proto::DecoderLimits limits_;
  std::shared_ptr<ReceivePosts> posts_;
  std::atomic<uint64_t> frames_sent_{0}, frames_received_{0}, bytes_sent_{0}, bytes_received_{0};
  std::array<std::atomic<uint64_t>, proto::kMaxMessageType + 1> sent_by_type_{};
  std::array<std::atomic<uint64_t>, proto::kMaxMessageType + 1> received_by_type_{};
};

class InprocFabric;
class TcpNode;
class MpiWire;

enum class TransportKind { kInproc, kTcp, kMpi };

// What make_transport needs. The wire underneath is built first and passed in: the fabric of the
// process's threads, or the TCP node that has already listened / connected (tcp_transport.hpp).
struct TransportOptions {
  TransportKind kind = TransportKind::kInproc;
  Endpoint self;
  proto::DecoderLimits limits;
  // kInproc: the fabric shared by every endpoint of this process (inproc_transport.hpp).
  std::shared_ptr<InprocFabric> fabric;
  // kTcp: this process's network node (tcp_transport.hpp). kMpi: the control plane's node
  // (frames to and from the coordinator), or null when every endpoint is on the wire.
  std::shared_ptr<TcpNode> tcp_node;
  // kMpi: this process's MPI wire (mpi_transport.hpp).
  std::shared_ptr<MpiWire> mpi_wire;

  static TransportOptions inproc(Endpoint self, std::shared_ptr<InprocFabric> fabric,
                                 proto::DecoderLimits limits = {}) {
    return {TransportKind::kInproc, self, limits, std::move(fabric), nullptr, nullptr};
  }
  static TransportOptions tcp(Endpoint self, std::shared_ptr<TcpNode> node,
                              proto::DecoderLimits limits = {}) {
    return {TransportKind::kTcp, self, limits, nullptr, std::move(node), nullptr};
  }
  static TransportOptions mpi(Endpoint self, std::shared_ptr<MpiWire> wire,
                              std::shared_ptr<TcpNode> control, proto::DecoderLimits limits = {}) {
    return {TransportKind::kMpi, self, limits, nullptr, std::move(control), std::move(wire)};
  }
};

// A role's last word before it rethrows `e`: tells the coordinator (Failure with the exit code
// and message) so the job stops naming this role. Best effort: a send that fails is ignored,
// since the transport may be what broke.
void report_failure_to_coordinator(Transport& transport, const std::exception& e) noexcept;

// Builds the transport for `options.kind` over the fabric, node or wire it names. Throws UsageError
// when that wire is missing (a null fabric for kInproc, a null node for kTcp, a null wire for
// kMpi).
std::unique_ptr<Transport> make_transport(const TransportOptions& options);

}  // namespace ptrain::net
