// The TCP transport: roles in separate processes (or hosts) exchange the same encoded frames as
// the in-process transport, over Boost.Asio TCP. Two pieces:
//   - TcpNode: one process's network endpoint — an io_context on its own thread, an optional
//     listener, and one session per connection. Every connection runs the HMAC handshake
//     (auth.hpp) before any protocol frame; then the byte stream is cut into frames by the fuzzed
//     incremental decoder (proto::FrameDecoder: header checked before any allocation; the floats
//     of a GradPush / PullReply read straight into the destination the role posted; another
//     large payload into one pooled buffer of its size; CRC as the bytes arrive), one writer
//     coroutine per socket drains a bounded queue of frames (head + borrowed floats, written by
//     scatter-gather with the CRC computed while writing), and a ticker sends heartbeats and drops
//     a peer silent for peer_timeout. A peer that fails authentication, sends garbage, a
//     truncated/oversized/wrong-version frame, or is not identified by its first frame, is
//     dropped with a logged reason naming its address; the listener keeps going.
//     Floods: junk is refused at its first byte that cannot start a handshake; at most
//     max_pending_auth unauthenticated connections are held per listener (one more sheds the
//     oldest); accept errors (out of file descriptors) back off and shed the connection waiting
//     in the backlog with a reserved descriptor rather than spin; refusals and accept errors are
//     logged at a bounded rate (a few lines per 10 s, then a count). The process's soft limit on
//     open files is raised to its hard limit once, leaving room for checkpoints and peers.
//   - TcpTransport: the Transport (transport.hpp) of one role over a node. Several may share one
//     node (a provisional one for registration, then the role's own).
// A connection carries frames both ways; it is bound to the peer's Endpoint: by the connecting
// side when it connects (it knows whom it dials), by the accepting side from the first frame
// (the node's IdentifyFn: Register on the coordinator, PeerHello on a server).
//
// Losing a peer: when an identified peer's connection ends without a Shutdown either way (and the
// node is not closing), the node calls `peer_lost(endpoint, cause)` first — before any send to
// that peer can fail — with the cause in words ("connection closed by the peer", "connection reset
// by the peer", "missed heartbeats for 10 s", "bad frame: ..."), then drops the session and logs
// "lost worker 1 (127.0.0.1:41234): missed heartbeats for 10 s". If peer_lost says the loss is
// fatal, the next receive() throws PeerLost with that same text. send() to a peer that is not
// connected throws PeerLost; for a lost one it names the address and the cause ("cannot send to
// server 0 (127.0.0.1:40008): connection lost (connection closed by the peer)").
//
// This header does not include Asio; only tcp_transport.cpp does.
#pragma once

#include "common/net/auth.hpp"
#include "common/net/transport.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace ptrain::net {

struct TcpNodeOptions {
  Role self_role = Role::kWorker;  // proven in the handshake
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds peer_timeout{10'000};
  std::chrono::milliseconds handshake_timeout{5'000};
  // A listener holds at most this many connections that have not authenticated yet; one more
  // sheds the oldest of them (a flood of idle or slow connections cannot exhaust the process's
  // file descriptors, and a real peer arriving later still gets in).
  size_t max_pending_auth = 64;
  proto::DecoderLimits limits;
  // Told of each lost peer and why (the cause, without the peer's name: "missed heartbeats for
  // 10 s"), on the I/O thread; returns whether the loss stops this role (receive() throws
  // PeerLost). Empty = every loss is fatal.
  std::function<bool(const Endpoint&, const std::string& cause)> peer_lost;
  // Backpressure: a send blocks while more than this is queued for its peer (a larger frame
  // still goes once the peer's queue is empty), and throws after send_timeout.
  size_t max_queued_bytes = 256u << 20;
  std::chrono::milliseconds send_timeout{120'000};
};

// Who an accepted connection is, from its first frame. `deliver`: also hand that frame up to
// receive() (Register, so the coordinator sees registrations).
struct Identity {
  Endpoint endpoint;
  bool deliver = false;
};
// Called on the I/O thread with the first (decoded) frame of an authenticated accepted connection
// and the peer's "HOST:PORT". Throws Error to refuse it (the reason is logged and sent to the
// peer in a Failure frame).
using IdentifyFn = std::function<Identity(const proto::Message& first, const std::string& peer)>;

class TcpNode {
 public:
  TcpNode(Secret secret, TcpNodeOptions options);
  ~TcpNode();  // close()
  TcpNode(const TcpNode&) = delete;
  TcpNode& operator=(const TcpNode&) = delete;

  // Binds HOST:PORT (port 0 = a free one) and accepts connections. Returns the bound address as
  // others should dial it (advertised_endpoint: never 0.0.0.0). Throws IoError naming HOST:PORT.
  std::string listen(const std::string& host, uint16_t port, IdentifyFn identify);

  // Dials HOST:PORT, authenticates, binds the connection to `peer` and sends `first`. Blocks up to
  // `timeout`. Throws IoError naming the address and why (refused, wrong secret, timeout...).
  void connect(const std::string& host_port, const Endpoint& peer, const proto::Message& first,
               std::chrono::milliseconds timeout);

  // The local IP address of the connection to `peer` (what this host is called on that network).
  std::string local_host_of(const Endpoint& peer) const;
  // The remote "HOST:PORT" of `peer`'s connection ("" when not connected).
  std::string address_of(const Endpoint& peer) const;

  // Queues a frame for `peer` (thread-safe; never from the I/O thread). Blocks while the peer's
  // queue is over max_queued_bytes; throws Error(kIo) after send_timeout, TransportClosed,
  // PeerLost. A borrowed body must stay valid until flush() returns.
  void send_frame(const Endpoint& to, proto::OutFrame frame);
  // Returns once no queued frame reads a borrowed body any more (written, or dropped with its
  // connection), or the node is closed. Throws Error(kIo) after `timeout`.
  void flush(std::chrono::milliseconds timeout);
  // The postings the reader fills (float destinations), shared by every TcpTransport over it.
  std::shared_ptr<ReceivePosts> receive_posts() const;
  // The next frame from any peer, up to `timeout`. Throws TransportClosed once closed, PeerLost
  // once for a fatal peer's loss.
  std::optional<RawFrame> take(std::chrono::milliseconds timeout);

  // Heartbeat interval and peer timeout, once known (servers and workers learn them from the
  // coordinator's Welcome).
  void set_liveness(std::chrono::milliseconds heartbeat, std::chrono::milliseconds peer_timeout);

  // Flushes queued frames (up to 3 s), closes every connection, stops the I/O thread. Idempotent.
  void close();

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

class TcpTransport final : public Transport {
 public:
  TcpTransport(Endpoint self, std::shared_ptr<TcpNode> node, proto::DecoderLimits limits = {});
  // Closes the node (every transport over it).
  void close() override;
  void flush(std::chrono::milliseconds timeout) override;
  TcpNode& node() { return *node_; }

 protected:
  void send_frame(const Endpoint& to, proto::OutFrame frame) override;
  std::optional<RawFrame> receive_frame(std::chrono::milliseconds timeout) override;

 private:
  std::shared_ptr<TcpNode> node_;
};

}  // namespace ptrain::net
