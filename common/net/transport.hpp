// The Transport interface: how a role (coordinator, parameter server, worker) sends messages to
// other roles and receives its own. The base class owns everything but the wire: encoding and
// decoding through the frame codec (common/proto/codec.hpp), byte and frame counters, logging.
// A subclass moves whole encoded frames: the in-process transport between threads today, TCP
// next (which will cut the byte stream into frames with proto::FrameDecoder and hand them up
// here unchanged). Training code never sees which one runs.
//
// One Transport object belongs to one role (its `self` endpoint). send() may be called from any
// thread; receive() from one thread at a time (the role's loop).
#pragma once

#include "common/error.hpp"
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

enum class Role : uint8_t { kCoordinator = 0, kServer = 1, kWorker = 2 };

// A role instance: (role, id). The coordinator is (kCoordinator, 0); servers and workers are
// numbered from 0.
struct Endpoint {
  Role role = Role::kCoordinator;
  int32_t id = 0;
  auto operator<=>(const Endpoint&) const = default;
  std::string str() const;  // "coordinator", "server 1", "worker 0"
};

inline Endpoint coordinator_endpoint() { return {Role::kCoordinator, 0}; }
inline Endpoint server_endpoint(int32_t id) { return {Role::kServer, id}; }
inline Endpoint worker_endpoint(int32_t id) { return {Role::kWorker, id}; }

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

// A whole encoded frame and its sender, as a subclass hands it to the base.
struct RawFrame {
  Endpoint from;
  std::vector<std::byte> bytes;
  // The subclass already checked the frame's CRC32C (the TCP reader does, while the bytes
  // arrive): receive() then skips its own pass over the payload.
  bool crc_checked = false;
};

class Transport {
 public:
  Transport(Endpoint self, proto::DecoderLimits limits);
  virtual ~Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  const Endpoint& self() const { return self_; }

  // Encodes `msg` and hands the frame to the wire. Returns once the frame is queued (inproc)
  // or written (TCP). Thread-safe. Throws TransportClosed or PeerLost.
  void send(const Endpoint& to, const proto::Message& msg);

  // The next message for this endpoint, waiting at most `timeout`; nullopt when none came.
  // Throws TransportClosed once closed, and ProtocolError (naming the sender) for a frame that
  // does not decode.
  std::optional<Envelope> receive(std::chrono::milliseconds timeout);

  // Stops this endpoint: pending and later receive()/send() calls throw TransportClosed.
  virtual void close() = 0;

  TransportCounters counters() const;

 protected:
  virtual void send_frame(const Endpoint& to, std::vector<std::byte> frame) = 0;
  virtual std::optional<RawFrame> receive_frame(std::chrono::milliseconds timeout) = 0;

 private:
  Endpoint self_;
  proto::DecoderLimits limits_;
  std::atomic<uint64_t> frames_sent_{0}, frames_received_{0}, bytes_sent_{0}, bytes_received_{0};
  std::array<std::atomic<uint64_t>, proto::kMaxMessageType + 1> sent_by_type_{};
  std::array<std::atomic<uint64_t>, proto::kMaxMessageType + 1> received_by_type_{};
};

class InprocFabric;
class TcpNode;

enum class TransportKind { kInproc, kTcp };

// What make_transport needs. The wire underneath is built first and passed in: the fabric of the
// process's threads, or the TCP node that has already listened / connected (tcp_transport.hpp).
struct TransportOptions {
  TransportKind kind = TransportKind::kInproc;
  Endpoint self;
  proto::DecoderLimits limits;
  // kInproc: the fabric shared by every endpoint of this process (inproc_transport.hpp).
  std::shared_ptr<InprocFabric> fabric;
  // kTcp: this process's network node (tcp_transport.hpp).
  std::shared_ptr<TcpNode> tcp_node;

  static TransportOptions inproc(Endpoint self, std::shared_ptr<InprocFabric> fabric,
                                 proto::DecoderLimits limits = {}) {
    return {TransportKind::kInproc, self, limits, std::move(fabric), nullptr};
  }
  static TransportOptions tcp(Endpoint self, std::shared_ptr<TcpNode> node,
                              proto::DecoderLimits limits = {}) {
    return {TransportKind::kTcp, self, limits, nullptr, std::move(node)};
  }
};

// A role's last word before it rethrows `e`: tells the coordinator (Failure with the exit code
// and message) so the job stops naming this role. Best effort: a send that fails is ignored,
// since the transport may be what broke.
void report_failure_to_coordinator(Transport& transport, const std::exception& e) noexcept;

// Builds the transport for `options.kind` over the fabric or node it names. Throws UsageError when
// that wire is missing (a null fabric for kInproc, a null node for kTcp).
std::unique_ptr<Transport> make_transport(const TransportOptions& options);

}  // namespace ptrain::net
