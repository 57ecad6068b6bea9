// The MPI data plane: a Transport whose frames between servers and workers travel as MPI
// point-to-point messages, for jobs started by mpirun or srun with every role in one MPI world
// (`cluster.transport: mpi`, docs/distributed.md). The control plane (registration, heartbeats,
// checkpoint orders, the status endpoint) stays on TCP: an MpiTransport built with a control
// TcpNode sends every frame for the coordinator over that node and hands up what the node
// receives, so the coordinator and monitoring work as with `cluster.transport: tcp`.
//
// On the wire (one MpiWire per process and communicator):
//   - a frame without floats is one message (tag kFrameTag): a 32-byte envelope (sender and
//     receiver Endpoint, body tag, body size) followed by the whole encoded frame;
//   - a frame with floats (GradPush, PullReply) is that message holding the header and head
//     payload (the envelope also names the piece size), then the floats in pieces of the wire's
//     piece size (kMpiBodyPiece unless a test asks for less), each an MPI_Isend straight from
//     the sender's borrowed range (no copy), then the frame's 4-byte trailer as a message of its
//     own; pieces and trailer travel under a tag of the frame's own, so that no other message
//     can match them, and MPI keeps them in order. The trailer comes last so that the sender
//     computes the payload CRC32C while its pieces are in flight, as the TCP writer does while
//     it writes, instead of a whole pass over the floats before the first byte leaves. The
//     receiver checks the head with the same fuzzed frame decoder the TCP reader uses, then
//     MPI_Irecv's the pieces straight into the destination the role posted (receive_posts.hpp)
//     or a buffer of their own, the next piece posted while one lands, and feeds each piece to
//     the decoder (which checksums it) as soon as it landed while the next one arrives; the
//     trailer then goes to the decoder as on TCP, and a mismatch is reported naming the sender.
//     The pieces are this wire's own business: the frame the codec sees (header, payload,
//     trailer, the CRCs) is the one every transport moves.
// Threading: MPI_THREAD_MULTIPLE (required; mpi_init() refuses less). Sends are posted by the
// calling role thread itself (no hand-off, no copy); one receive thread per wire probes for
// frames (MPI_Improbe, backing off to 1 ms sleeps when idle so that an idle rank does not spin a
// core), receives them and tests pending sends so that their buffers are released. While sends
// are pending it does not sleep: a large message crosses shared memory fragment by fragment, each
// moving only while both sides call into MPI. flush() waits for its signal instead of testing the
// sends itself (two polling threads per process would contend for MPI's lock). A dedicated
// progress thread that also posted sends would need a copy or a hand-off per send; with
// MPI_THREAD_MULTIPLE the zero-copy send path stays in the caller.
// Membership is fixed: an Endpoint is a rank of the communicator (the map given to the wire).
// MPI cannot tell that a rank died; the TCP control plane does (the coordinator loses that
// rank's connection and stops the job), so no receive here waits without a timeout.
//
// Without MPI at build time (PTRAIN_MPI=OFF or none found) everything here throws
// NotImplementedError naming the build option.
#pragma once

#include "common/net/transport.hpp"

#include <chrono>
#include <cstddef>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace ptrain::net {

class TcpNode;

// True when this ptrain was built with MPI.
bool mpi_built();

// MPI_Init_thread(MPI_THREAD_MULTIPLE) once per process (later calls do nothing). Throws
// NotImplementedError without MPI, Error(kIo) when the library provides less than
// MPI_THREAD_MULTIPLE.
void mpi_init();
// MPI_Finalize, when initialized and not finalized yet. Only when every rank is alive: it waits
// for the others.
void mpi_finalize();
// Ends every rank of the MPI job with `code` (MPI_Abort on MPI_COMM_WORLD). Does not return.
[[noreturn]] void mpi_abort(int code);

// A communicator (shared handle; freed with its last copy, unless MPI is finalized by then).
class MpiComm {
 public:
  static MpiComm world();
  // A new communicator over the same ranks (collective): one wire per duplicate, so that frames
  // of one wire never match receives of another.
  MpiComm dup() const;
  // MPI_Comm_split (collective); a rank passing color < 0 gets an empty handle.
  MpiComm split(int color, int key) const;
  bool valid() const { return impl_ != nullptr; }
  int rank() const;
  int size() const;
  // Every rank's `mine`, in rank order (collective; strings of any length).
  std::vector<std::string> allgather(const std::string& mine) const;
  // `root`'s `value` on every rank (collective).
  std::string broadcast(const std::string& value, int root) const;
  // A one-way nudge to rank `dest` (an empty message under a tag of its own; does not wait), and
  // whether one has arrived here since the last call (never blocks): how a rank that received a
  // stop signal tells rank 0.
  void nudge(int dest) const;
  bool nudged() const;
  // Blocking MPI_Send / MPI_Recv of plain bytes under a tag of their own, in pieces of at most
  // 1 GiB (MPI counts are ints): the plain copy a benchmark compares the data plane with.
  void send_bytes(int dest, std::span<const std::byte> bytes) const;
  void recv_bytes(int src, std::span<std::byte> bytes) const;

  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// This host's name as MPI reports it (MPI_Get_processor_name).
std::string mpi_processor_name();

// One process's MPI endpoint on a communicator: the receive thread, the inboxes of the roles
// this process hosts, the pending sends. Endpoints hosted here attach an inbox (an MpiTransport
// does); a frame for an endpoint not hosted here is refused with a logged reason.
// Bytes per message of a frame's floats on the MPI wire: large enough that a piece's rendezvous
// is small beside its copy, small enough that checksumming one piece hides behind the next.
inline constexpr size_t kMpiBodyPiece = size_t{4} << 20;

class MpiWire {
 public:
  // `ranks`: every Endpoint of the job and its rank in `comm`. `piece_bytes` (1 .. 1 GiB): the
  // size of the pieces this wire sends floats in (a receiver takes the size from each frame's
  // envelope); tests pass a small one to reach many pieces and their edges with small frames.
  MpiWire(MpiComm comm, std::map<Endpoint, int> ranks, proto::DecoderLimits limits = {},
          size_t piece_bytes = kMpiBodyPiece);
  ~MpiWire();  // close()
  MpiWire(const MpiWire&) = delete;
  MpiWire& operator=(const MpiWire&) = delete;

  // Hosts `self` here: frames for it go to its inbox; the floats of its GradPush / PullReply
  // frames to the postings in `posts`.
  void attach(const Endpoint& self, std::shared_ptr<ReceivePosts> posts);
  // Posts the frame's messages to `to`'s rank (thread-safe). Borrowed floats must stay valid
  // until flush() returns. Throws PeerLost for an endpoint outside the job, TransportClosed.
  void send(const Endpoint& from, const Endpoint& to, proto::OutFrame frame);
  // Bytes as one frame message, unchecked (tests: what a broken peer would send).
  void send_raw(const Endpoint& from, const Endpoint& to, std::vector<std::byte> bytes);
  // As send(), but the pieces carry `wire_body` (as many bytes as the frame's floats) while the
  // trailer is computed over the frame's own floats (tests: what a link that corrupts a byte of
  // a piece would deliver). `wire_body` must stay valid until flush() returns.
  void send_tampered(const Endpoint& from, const Endpoint& to, proto::OutFrame frame,
                     std::span<const std::byte> wire_body);
  // Returns once every frame `from` sent so far has left its buffers. Throws Error(kIo) after
  // `timeout`, naming what is still pending.
  void flush(const Endpoint& from, std::chrono::milliseconds timeout);
  // The next frame (or error) for `self`, up to `timeout`. Throws TransportClosed once closed.
  std::optional<RawFrame> take(const Endpoint& self, std::chrono::milliseconds timeout);
  // Hands a frame (or an error, rethrown by take()) to `self`'s inbox: how the control plane's
  // frames join the data plane's.
  void deliver(const Endpoint& self, RawFrame frame);
  void deliver_error(const Endpoint& self, std::exception_ptr error);
  // Flushes pending sends (up to 3 s), stops the receive thread; later calls throw
  // TransportClosed. Idempotent.
  void close(const std::string& reason);
  bool closed() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// The Transport of one role over a wire; with a `control` node, frames to and from the
// coordinator go over TCP (see the top of this file). close() closes the wire (every endpoint of
// this process, as the in-process fabric does) and the control node.
class MpiTransport final : public Transport {
 public:
  MpiTransport(Endpoint self, std::shared_ptr<MpiWire> wire, std::shared_ptr<TcpNode> control,
               proto::DecoderLimits limits = {});
  ~MpiTransport() override;
  void close() override;
  void flush(std::chrono::milliseconds timeout) override;

 protected:
  void send_frame(const Endpoint& to, proto::OutFrame frame) override;
  std::optional<RawFrame> receive_frame(std::chrono::milliseconds timeout) override;

 private:
  struct Pump;
  std::shared_ptr<MpiWire> wire_;
  std::shared_ptr<TcpNode> control_;
  std::unique_ptr<Pump> pump_;  // control frames into the wire's inbox for self
};

}  // namespace ptrain::net
