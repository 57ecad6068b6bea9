// The MPI data plane (mpi_transport.hpp). Every MPI call goes through PTRAIN_MPI_CHECK, which
// throws Error(kIo) with the call, file:line and MPI's own message. Without MPI at build time,
// the public functions throw NotImplementedError (the second half of this file).
#include "common/net/mpi_transport.hpp"

#include "common/net/tcp_transport.hpp"
#include "ptrain/build_config.hpp"

#include <fmt/format.h>

#if PTRAIN_HAS_MPI

#include "common/proto/frame_decoder.hpp"
#include "common/util/hash.hpp"

// The C API only: without these, mpi.h also declares the removed C++ bindings, whose library
// ptrain does not link.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <spdlog/spdlog.h>

#include <array>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <thread>
#include <variant>

namespace ptrain::net {
namespace {

using Clock = std::chrono::steady_clock;

void mpi_check(int rc, const char* call, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(ExitCode::kIo, fmt::format("{}:{}: {} failed: {}", file, line, call,
                                         std::string(msg, static_cast<size_t>(len))));
}
#define PTRAIN_MPI_CHECK(call) ::ptrain::net::mpi_check((call), #call, __FILE__, __LINE__)

bool mpi_live() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

// Tags: every frame message carries kFrameTag; the float pieces and the trailer of frame number
// s (per sending wire) carry kBodyTagBase + s mod 2^30, so they match only the receives posted
// for them.
constexpr int kFrameTag = 1;
constexpr int kNudgeTag = 2;
constexpr int kBytesTag = 3;  // MpiComm::send_bytes / recv_bytes
constexpr int kBodyTagBase = 1 << 20;
constexpr uint32_t kBodyTagSpan = 1u << 30;
constexpr size_t kChunk = size_t{1} << 30;  // bytes per MPI call (counts are ints)

// The envelope in front of every frame message.
constexpr uint32_t kEnvelopeMagic = 0x49504d50;  // "PMPI"
constexpr size_t kEnvelopeSize = 32;
struct Envelope32 {
  Endpoint from, to;
  uint32_t body_tag = 0;
  uint32_t piece_bytes = 0;  // the floats' messages: this many bytes each (the last: the rest)
  uint64_t body_bytes = 0;   // 0: the message holds a whole frame
};

void store_envelope(std::byte* out, const Envelope32& e) {
  std::memset(out, 0, kEnvelopeSize);
  const uint8_t from_role = static_cast<uint8_t>(e.from.role), to_role = static_cast<uint8_t>(e.to.role);
  std::memcpy(out, &kEnvelopeMagic, 4);
  std::memcpy(out + 4, &from_role, 1);
  std::memcpy(out + 5, &to_role, 1);
  std::memcpy(out + 8, &e.from.id, 4);
  std::memcpy(out + 12, &e.to.id, 4);
  std::memcpy(out + 16, &e.body_tag, 4);
  std::memcpy(out + 20, &e.piece_bytes, 4);
  std::memcpy(out + 24, &e.body_bytes, 8);
}

std::optional<Envelope32> load_envelope(std::span<const std::byte> in) {
  if (in.size() < kEnvelopeSize) return std::nullopt;
  uint32_t magic = 0;
  std::memcpy(&magic, in.data(), 4);
  uint8_t from_role = 0, to_role = 0;
  std::memcpy(&from_role, in.data() + 4, 1);
  std::memcpy(&to_role, in.data() + 5, 1);
  if (magic != kEnvelopeMagic || from_role > 2 || to_role > 2) return std::nullopt;
  Envelope32 e;
  e.from.role = static_cast<Role>(from_role);
  e.to.role = static_cast<Role>(to_role);
  std::memcpy(&e.from.id, in.data() + 8, 4);
  std::memcpy(&e.to.id, in.data() + 12, 4);
  std::memcpy(&e.body_tag, in.data() + 16, 4);
  std::memcpy(&e.piece_bytes, in.data() + 20, 4);
  std::memcpy(&e.body_bytes, in.data() + 24, 8);
  return e;
}

}  // namespace

// ---- runtime ------------------------------------------------------------------------------------

bool mpi_built() { return true; }

void mpi_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    int init = 0;
    MPI_Initialized(&init);
    int provided = 0;
    if (init) {
      MPI_Query_thread(&provided);
    } else {
      PTRAIN_MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
    }
    if (provided < MPI_THREAD_MULTIPLE) {
      throw Error(ExitCode::kIo,
                  fmt::format("the MPI library provides thread level {} but ptrain needs "
                              "MPI_THREAD_MULTIPLE ({}): sends are posted from the role threads",
                              provided, MPI_THREAD_MULTIPLE));
    }
    // Errors come back as return codes (checked), not as a job abort inside the library.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  });
}

void mpi_finalize() {
  if (mpi_live()) MPI_Finalize();
}

void mpi_abort(int code) {
  if (mpi_live()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::string mpi_processor_name() {
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  PTRAIN_MPI_CHECK(MPI_Get_processor_name(name, &len));
  return std::string(name, static_cast<size_t>(len));
}

struct MpiComm::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  bool owned = false;
  ~Impl() {
    if (owned && comm != MPI_COMM_NULL && mpi_live()) MPI_Comm_free(&comm);
  }
};

MpiComm MpiComm::world() {
  MpiComm c;
  c.impl_ = std::make_shared<Impl>();
  c.impl_->comm = MPI_COMM_WORLD;
  return c;
}

MpiComm MpiComm::dup() const {
  MpiComm c;
  c.impl_ = std::make_shared<Impl>();
  PTRAIN_MPI_CHECK(MPI_Comm_dup(impl_->comm, &c.impl_->comm));
  c.impl_->owned = true;
  MPI_Comm_set_errhandler(c.impl_->comm, MPI_ERRORS_RETURN);
  return c;
}

MpiComm MpiComm::split(int color, int key) const {
  MPI_Comm out = MPI_COMM_NULL;
  PTRAIN_MPI_CHECK(MPI_Comm_split(impl_->comm, color < 0 ? MPI_UNDEFINED : color, key, &out));
  MpiComm c;
  if (out == MPI_COMM_NULL) return c;
  c.impl_ = std::make_shared<Impl>();
  c.impl_->comm = out;
  c.impl_->owned = true;
  MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN);
  return c;
}

int MpiComm::rank() const {
  int r = 0;
  PTRAIN_MPI_CHECK(MPI_Comm_rank(impl_->comm, &r));
  return r;
}

int MpiComm::size() const {
  int n = 0;
  PTRAIN_MPI_CHECK(MPI_Comm_size(impl_->comm, &n));
  return n;
}

std::vector<std::string> MpiComm::allgather(const std::string& mine) const {
  const int n = size();
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(static_cast<size_t>(n));
  PTRAIN_MPI_CHECK(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, impl_->comm));
  std::vector<int> displs(static_cast<size_t>(n));
  int total = 0;
  for (int i = 0; i < n; ++i) {
    displs[static_cast<size_t>(i)] = total;
    total += lens[static_cast<size_t>(i)];
  }
  std::string all(static_cast<size_t>(total), '\0');
  PTRAIN_MPI_CHECK(MPI_Allgatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(),
                                  displs.data(), MPI_CHAR, impl_->comm));
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(all.substr(static_cast<size_t>(displs[static_cast<size_t>(i)]),
                             static_cast<size_t>(lens[static_cast<size_t>(i)])));
  }
  return out;
}

std::string MpiComm::broadcast(const std::string& value, int root) const {
  uint64_t len = value.size();
  PTRAIN_MPI_CHECK(MPI_Bcast(&len, 1, MPI_UINT64_T, root, impl_->comm));
  std::string out = rank() == root ? value : std::string(len, '\0');
  PTRAIN_MPI_CHECK(MPI_Bcast(out.data(), static_cast<int>(len), MPI_CHAR, root, impl_->comm));
  return out;
}

void MpiComm::nudge(int dest) const {
  // A zero-byte message is sent eagerly: MPI_Send returns without a matching receive.
  PTRAIN_MPI_CHECK(MPI_Send(nullptr, 0, MPI_BYTE, dest, kNudgeTag, impl_->comm));
}

void MpiComm::send_bytes(int dest, std::span<const std::byte> bytes) const {
  for (size_t off = 0; off < bytes.size(); off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, bytes.size() - off));
    PTRAIN_MPI_CHECK(MPI_Send(bytes.data() + off, n, MPI_BYTE, dest, kBytesTag, impl_->comm));
  }
}

void MpiComm::recv_bytes(int src, std::span<std::byte> bytes) const {
  for (size_t off = 0; off < bytes.size(); off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, bytes.size() - off));
    PTRAIN_MPI_CHECK(
        MPI_Recv(bytes.data() + off, n, MPI_BYTE, src, kBytesTag, impl_->comm, MPI_STATUS_IGNORE));
  }
}

bool MpiComm::nudged() const {
  bool any = false;
  for (;;) {
    int flag = 0;
    MPI_Status st;
    PTRAIN_MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, kNudgeTag, impl_->comm, &flag, &st));
    if (!flag) return any;
    PTRAIN_MPI_CHECK(
        MPI_Recv(nullptr, 0, MPI_BYTE, st.MPI_SOURCE, kNudgeTag, impl_->comm, MPI_STATUS_IGNORE));
    any = true;
  }
}

// ---- the wire -----------------------------------------------------------------------------------

struct MpiWire::Impl : std::enable_shared_from_this<MpiWire::Impl> {
  struct Inbox {
    std::deque<std::variant<RawFrame, std::exception_ptr>> items;
    std::shared_ptr<ReceivePosts> posts;
  };
  struct Pending {
    Endpoint from;
    std::vector<MPI_Request> requests;
    std::vector<std::byte> message;  // envelope + head (the whole frame when it has no floats)
    std::array<std::byte, proto::kTrailerSize> trailer{};
    proto::OutFrame frame;  // keeps an owned body alive
    // False while the sender still computes the trailer: its message is not posted yet, so the
    // send is not complete even when every posted request is.
    bool sealed = true;
  };

  MpiComm comm;
  std::map<Endpoint, int> ranks;
  proto::DecoderLimits limits;
  size_t piece_bytes = kMpiBodyPiece;

  mutable std::mutex mu_;  // inboxes, closed
  std::condition_variable cv_;
  std::map<Endpoint, Inbox> inboxes;
  bool closed = false;
  std::string reason;

  std::mutex send_mu;  // orders each frame's messages; guards pending, next_seq
  std::condition_variable sent_cv;  // a pending send completed (with send_mu)
  std::list<Pending> pending;
  uint32_t next_seq = 0;

  std::thread receiver;
  std::atomic<bool> stop{false};

  MPI_Comm c() const { return comm.impl_->comm; }

  void push(const Endpoint& to, std::variant<RawFrame, std::exception_ptr> item) {
    std::lock_guard lock(mu_);
    auto it = inboxes.find(to);
    if (it == inboxes.end()) {
      spdlog::error("MPI rank {}: a frame for {}, which this rank does not host, is dropped",
                    comm.rank(), to.str());
      return;
    }
    it->second.items.push_back(std::move(item));
    cv_.notify_all();
  }

  // Tests pending sends and drops the completed ones. send_mu held.
  void reap_sends() {
    for (auto it = pending.begin(); it != pending.end();) {
      int done = 0;
      MPI_Testall(static_cast<int>(it->requests.size()), it->requests.data(), &done,
                  MPI_STATUSES_IGNORE);
      it = done && it->sealed ? pending.erase(it) : std::next(it);
    }
  }

  // Gives up a receive that will not be waited for (the wire is stopping).
  static void abandon(MPI_Request& req) {
    if (req == MPI_REQUEST_NULL) return;
    MPI_Cancel(&req);
    MPI_Request_free(&req);
  }

  // Waits for `req` while the wire is open.
  bool wait_request(MPI_Request& req) {
    for (int spins = 0;; ++spins) {
      int done = 0;
      PTRAIN_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) return true;
      if (stop.load()) {
        abandon(req);
        return false;
      }
      // A body in flight: every MPI call moves it on (shared memory copies it fragment by
      // fragment as both sides call in), so yield the core rather than sleep.
      if (spins > 64) std::this_thread::yield();
    }
  }

  // Receives the pieces of a frame's floats into `dst` (`bytes` long, pieces of `piece` bytes)
  // and then its trailer, feeding each piece to `dec` (which checksums it) as soon as it landed.
  // The next message stays posted while one is checksummed: shared memory moves a message
  // fragment by fragment, and only while this process calls into MPI, so the checksum is taken
  // in slices with a progress call between them, and the next piece moves meanwhile. (One
  // ahead, not more: pieces posted together move together, and would land together at the end.)
  void receive_body(int src, int tag, std::byte* dst, uint64_t bytes, uint64_t piece,
                    proto::FrameDecoder& dec, std::array<std::byte, proto::kTrailerSize>& trailer) {
    constexpr uint64_t kAhead = 1;
    constexpr size_t kSlice = 256 * 1024;  // bytes checksummed between two progress calls
    const uint64_t pieces = (bytes + piece - 1) / piece;
    const uint64_t messages = pieces + 1;  // the trailer last
    std::array<MPI_Request, kAhead + 1> req;
    req.fill(MPI_REQUEST_NULL);
    uint64_t posted = 0;
    auto slot = [&](uint64_t i) -> MPI_Request& { return req[i % req.size()]; };
    auto post_upto = [&](uint64_t last) {
      for (; posted < messages && posted <= last; ++posted) {
        std::byte* at = trailer.data();
        uint64_t n = trailer.size();
        if (posted < pieces) {
          at = dst + posted * piece;
          n = std::min(piece, bytes - posted * piece);
        }
        PTRAIN_MPI_CHECK(
            MPI_Irecv(at, static_cast<int>(n), MPI_BYTE, src, tag, c(), &slot(posted)));
      }
    };
    try {
      for (uint64_t i = 0; i < messages; ++i) {
        post_upto(i + kAhead);
        if (!wait_request(slot(i))) {
          for (MPI_Request& r : req) abandon(r);
          throw TransportClosed("the MPI wire closed while floats were arriving");
        }
        if (i == pieces) break;  // the trailer: the caller feeds it
        for (uint64_t left = std::min(piece, bytes - i * piece); left > 0;) {
          const size_t n = std::min<uint64_t>({dec.buffer().size(), left, kSlice});
          PTRAIN_ENFORCE(n > 0, "the decoder has no room for the {} bytes left of a piece", left);
          dec.commit(n);  // the bytes are already there: this computes the CRC
          left -= n;
          for (MPI_Request& r : req) {
            int done = 0;
            if (r != MPI_REQUEST_NULL) PTRAIN_MPI_CHECK(MPI_Test(&r, &done, MPI_STATUS_IGNORE));
          }
        }
      }
    } catch (const TransportClosed&) {
      throw;
    } catch (...) {
      for (MPI_Request& r : req) abandon(r);
      throw;
    }
  }

  // Receives and drops every message of a refused frame's floats and trailer (`bytes` in all),
  // so that the sender's requests complete. False when the wire stopped first.
  bool drain_body(int src, int tag, uint64_t bytes) {
    std::vector<std::byte> sink;
    for (uint64_t got = 0; got < bytes;) {
      int flag = 0;
      MPI_Message m;
      MPI_Status st;
      PTRAIN_MPI_CHECK(MPI_Improbe(src, tag, c(), &flag, &m, &st));
      if (!flag) {
        if (stop.load()) return false;
        std::this_thread::yield();
        continue;
      }
      int n = 0;
      MPI_Get_count(&st, MPI_BYTE, &n);
      sink.resize(std::max(sink.size(), static_cast<size_t>(n)));
      MPI_Request req;
      PTRAIN_MPI_CHECK(MPI_Imrecv(sink.data(), n, MPI_BYTE, &m, &req));
      if (!wait_request(req)) return false;
      got += static_cast<uint64_t>(n);
    }
    return true;
  }

  // One frame message from rank `src`.
  void handle(int src, std::vector<std::byte> msg) {
    const std::optional<Envelope32> env = load_envelope(msg);
    if (!env) {
      spdlog::error("MPI rank {}: a message from rank {} without a ptrain envelope is dropped",
                    comm.rank(), src);
      return;
    }
    const auto known = ranks.find(env->from);
    if (known == ranks.end() || known->second != src) {
      push(env->to, std::make_exception_ptr(proto::ProtocolError(fmt::format(
                        "MPI rank {} sent a frame as {}, which is not that rank's role", src,
                        env->from.str()))));
      return;
    }
    std::vector<std::byte> frame(msg.begin() + kEnvelopeSize, msg.end());
    if (env->body_bytes == 0) {
      push(env->to, RawFrame{env->from, std::move(frame)});
      return;
    }
    // Head + trailer here, the floats in their own message(s).
    std::shared_ptr<ReceivePosts> posts;
    {
      std::lock_guard lock(mu_);
      if (auto it = inboxes.find(env->to); it != inboxes.end()) posts = it->second.posts;
    }
    const int tag = kBodyTagBase + static_cast<int>(env->body_tag % kBodyTagSpan);
    auto report = [&](const std::string& why) {
      push(env->to, std::make_exception_ptr(proto::ProtocolError(
                        fmt::format("bad frame from {}: {}", env->from.str(), why))));
    };
    // Before the floats were received: drain them and the trailer (so that the sender's requests
    // complete), then report.
    auto refuse = [&](const std::string& why) {
      if (drain_body(src, tag, env->body_bytes + proto::kTrailerSize)) report(why);
    };
    if (env->piece_bytes == 0 || env->piece_bytes > kChunk) {
      return refuse(fmt::format("its floats come in pieces of {} bytes", env->piece_bytes));
    }
    if (frame.size() < proto::kHeaderSize) return refuse("a short head");
    const std::span<const std::byte> head(frame);
    const proto::FrameHeader h =
        proto::read_header(std::span<const std::byte, proto::kHeaderSize>(head.data(), proto::kHeaderSize));
    const size_t head_payload = proto::float_body_head(h.type);
    if (head_payload == 0 || head.size() != proto::kHeaderSize + head_payload ||
        h.payload_length != head_payload + env->body_bytes) {
      return refuse(fmt::format("its head ({} bytes) and floats ({} bytes) do not make a frame",
                                head.size(), env->body_bytes));
    }
    const Endpoint from = env->from;
    proto::FrameDecoder dec(
        limits, 256, {}, {},
        [posts, from](proto::MessageType type, uint64_t match, size_t count) {
          if (!posts) return proto::FloatDestination{};
          ReceivePosts::Claimed cl = posts->claim(from, type, match, count);
          return proto::FloatDestination{cl.dst, std::move(cl.hold)};
        });
    proto::Frame out;
    std::string error;
    dec.feed(head);
    if (dec.next(out, error) == proto::DecodeStatus::kBad) return refuse(error);
    const std::span<std::byte> at = dec.buffer();
    if (!dec.reading_in_place() || at.empty()) return refuse("the head did not announce floats");
    std::array<std::byte, proto::kTrailerSize> trailer{};
    receive_body(src, tag, at.data(), env->body_bytes, env->piece_bytes, dec, trailer);
    if (dec.next(out, error) == proto::DecodeStatus::kBad) return report(error);
    dec.feed(trailer);
    const proto::DecodeStatus st = dec.next(out, error);
    if (st != proto::DecodeStatus::kGood) {
      return report(st == proto::DecodeStatus::kBad ? error : "an incomplete frame");
    }
    RawFrame rf;
    rf.from = from;
    rf.bytes = std::move(out.bytes);
    rf.split = true;
    rf.crc_checked = true;
    rf.floats = std::move(out.floats);
    rf.wire_size = out.wire_size();
    push(env->to, std::move(rf));
  }

  void run() {
    int idle = 0;
    while (!stop.load()) {
      int flag = 0;
      MPI_Message m;
      MPI_Status st;
      try {
        PTRAIN_MPI_CHECK(MPI_Improbe(MPI_ANY_SOURCE, kFrameTag, c(), &flag, &m, &st));
        if (flag) {
          int n = 0;
          MPI_Get_count(&st, MPI_BYTE, &n);
          std::vector<std::byte> msg(static_cast<size_t>(n));
          PTRAIN_MPI_CHECK(MPI_Mrecv(msg.data(), n, MPI_BYTE, &m, MPI_STATUS_IGNORE));
          handle(st.MPI_SOURCE, std::move(msg));
          idle = 0;
          continue;
        }
        {
          std::lock_guard lock(send_mu);
          const size_t before = pending.size();
          reap_sends();
          if (pending.size() != before) sent_cv.notify_all();
          // Sends in flight progress only while this process calls into MPI (a large message
          // crosses shared memory fragment by fragment, each needing a call on both sides):
          // sleeping here would hold every fragment up to a millisecond.
          if (!pending.empty()) idle = 0;
        }
      } catch (const TransportClosed&) {
        break;
      } catch (const std::exception& e) {
        // The wire itself failed: every endpoint here learns it.
        fail_all(std::current_exception());
        break;
      }
      // Idle (nothing arriving, nothing leaving): spin briefly (a reply is usually close), then
      // sleep up to 1 ms.
      ++idle;
      if (idle < 200) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000, (idle - 199) * 20)));
      }
    }
  }

  void fail_all(std::exception_ptr e) {
    std::lock_guard lock(mu_);
    for (auto& [ep, box] : inboxes) box.items.push_back(e);
    cv_.notify_all();
  }

  // Posts a frame's messages: the head (or the raw bytes), the floats' pieces from where they lie
  // (`wire_body` in their place when it is not empty: tests), and, once the payload CRC over the
  // floats is computed here while the pieces are in flight, the trailer.
  void post_send(const Endpoint& from, const Endpoint& to, proto::OutFrame frame,
                 std::vector<std::byte> raw, std::span<const std::byte> wire_body = {}) {
    const auto it = ranks.find(to);
    if (it == ranks.end()) {
      throw PeerLost(fmt::format("cannot send to {}: not a member of this MPI job", to.str()));
    }
    {
      std::lock_guard lock(mu_);
      if (closed) {
        throw TransportClosed(fmt::format("cannot send to {}: the job is stopping ({})", to.str(),
                                          reason));
      }
    }
    const std::span<const std::byte> body = frame.body;
    const std::span<const std::byte> on_wire = wire_body.empty() ? body : wire_body;
    PTRAIN_ENFORCE(on_wire.size() == body.size(), "a tampered body of {} bytes for {} floats' bytes",
                   on_wire.size(), body.size());
    const uint32_t head_crc = frame.head_crc;
    Pending p;
    p.from = from;
    Envelope32 env{from, to, 0, static_cast<uint32_t>(piece_bytes), body.size()};
    std::span<const std::byte> bytes = raw.empty() ? std::span<const std::byte>(frame.head) : raw;
    p.message.resize(kEnvelopeSize + bytes.size());
    std::memcpy(p.message.data() + kEnvelopeSize, bytes.data(), bytes.size());
    p.frame = std::move(frame);
    p.sealed = body.empty();
    p.requests.reserve(2 + (body.size() + piece_bytes - 1) / piece_bytes);
    std::unique_lock lock(send_mu);
    env.body_tag = next_seq++;
    store_envelope(p.message.data(), env);
    MPI_Request req;
    PTRAIN_MPI_CHECK(MPI_Isend(p.message.data(), static_cast<int>(p.message.size()), MPI_BYTE,
                               it->second, kFrameTag, c(), &req));
    p.requests.push_back(req);
    const int tag = kBodyTagBase + static_cast<int>(env.body_tag % kBodyTagSpan);
    for (size_t off = 0; off < on_wire.size(); off += piece_bytes) {
      const int n = static_cast<int>(std::min(piece_bytes, on_wire.size() - off));
      PTRAIN_MPI_CHECK(MPI_Isend(on_wire.data() + off, n, MPI_BYTE, it->second, tag, c(), &req));
      p.requests.push_back(req);
    }
    pending.push_back(std::move(p));
    if (body.empty()) return;
    // The list keeps its elements in place, and reap_sends() keeps an unsealed one.
    Pending& sent = pending.back();
    lock.unlock();
    // The receive thread moves the pieces meanwhile (it polls while sends are pending).
    const uint32_t crc = crc32c(body.data(), body.size(), head_crc);
    std::memcpy(sent.trailer.data(), &crc, proto::kTrailerSize);
    lock.lock();
    PTRAIN_MPI_CHECK(MPI_Isend(sent.trailer.data(), static_cast<int>(sent.trailer.size()),
                               MPI_BYTE, it->second, tag, c(), &req));
    sent.requests.push_back(req);
    sent.sealed = true;
  }

  // Waits until no pending send of `from` (every sender when null) remains; false on timeout.
  bool drain(const Endpoint* from, std::chrono::milliseconds timeout) {
    const auto until = Clock::now() + timeout;
    std::unique_lock lock(send_mu);
    for (;;) {
      bool left = false;
      for (const Pending& p : pending) left |= from == nullptr || p.from == *from;
      if (!left) return true;
      if (Clock::now() > until) return false;
      // The receive thread polls while sends are pending and signals each completion: testing
      // here as well would only make two threads of this process contend for MPI's lock and the
      // cores. A millisecond without news: test here too (the thread may have stopped).
      if (sent_cv.wait_for(lock, std::chrono::milliseconds(1)) == std::cv_status::timeout) {
        reap_sends();
      }
    }
  }
};

MpiWire::MpiWire(MpiComm comm, std::map<Endpoint, int> ranks, proto::DecoderLimits limits,
                 size_t piece_bytes)
    : impl_(std::make_shared<Impl>()) {
  if (piece_bytes == 0 || piece_bytes > kChunk) {
    throw ConfigError(fmt::format("MPI wire: pieces of {} bytes (1 .. {} allowed)", piece_bytes,
                                  kChunk));
  }
  impl_->piece_bytes = piece_bytes;
  impl_->comm = std::move(comm);
  impl_->ranks = std::move(ranks);
  impl_->limits = limits;
  impl_->receiver = std::thread([impl = impl_.get()] { impl->run(); });
}

MpiWire::~MpiWire() { close("the wire was destroyed"); }

void MpiWire::attach(const Endpoint& self, std::shared_ptr<ReceivePosts> posts) {
  std::lock_guard lock(impl_->mu_);
  impl_->inboxes[self].posts = std::move(posts);
}

void MpiWire::send(const Endpoint& from, const Endpoint& to, proto::OutFrame frame) {
  impl_->post_send(from, to, std::move(frame), {});
}

void MpiWire::send_raw(const Endpoint& from, const Endpoint& to, std::vector<std::byte> bytes) {
  impl_->post_send(from, to, proto::OutFrame{}, std::move(bytes));
}

void MpiWire::send_tampered(const Endpoint& from, const Endpoint& to, proto::OutFrame frame,
                            std::span<const std::byte> wire_body) {
  PTRAIN_ENFORCE(!frame.body.empty() && wire_body.size() == frame.body.size(),
                 "send_tampered: {} bytes for a body of {}", wire_body.size(), frame.body.size());
  impl_->post_send(from, to, std::move(frame), {}, wire_body);
}

void MpiWire::flush(const Endpoint& from, std::chrono::milliseconds timeout) {
  if (!impl_->drain(&from, timeout)) {
    std::lock_guard lock(impl_->send_mu);
    throw Error(ExitCode::kIo,
                fmt::format("{}: {} MPI send(s) still pending after {} ms (a peer rank not "
                            "receiving?)",
                            from.str(), impl_->pending.size(), timeout.count()));
  }
}

std::optional<RawFrame> MpiWire::take(const Endpoint& self, std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mu_);
  Impl::Inbox& box = impl_->inboxes[self];
  impl_->cv_.wait_for(lock, timeout, [&] { return impl_->closed || !box.items.empty(); });
  if (!box.items.empty()) {
    auto item = std::move(box.items.front());
    box.items.pop_front();
    if (auto* e = std::get_if<std::exception_ptr>(&item)) std::rethrow_exception(*e);
    return std::move(std::get<RawFrame>(item));
  }
  if (impl_->closed) {
    throw TransportClosed(fmt::format("{}: the job is stopping ({})", self.str(), impl_->reason));
  }
  return std::nullopt;
}

void MpiWire::deliver(const Endpoint& self, RawFrame frame) { impl_->push(self, std::move(frame)); }

void MpiWire::deliver_error(const Endpoint& self, std::exception_ptr error) {
  impl_->push(self, std::move(error));
}

void MpiWire::close(const std::string& reason) {
  {
    std::lock_guard lock(impl_->mu_);
    if (impl_->closed) return;
    impl_->closed = true;
    impl_->reason = reason;
    // What is queued but not taken is dropped: a closed endpoint receives nothing more.
    for (auto& [e, box] : impl_->inboxes) box.items.clear();
    impl_->cv_.notify_all();
  }
  const bool flushed = !mpi_live() || impl_->drain(nullptr, std::chrono::seconds(3));
  impl_->stop = true;
  if (impl_->receiver.joinable()) impl_->receiver.join();
  if (!flushed && mpi_live()) {
    // A peer never took them: the buffers must outlive the requests, so they are kept.
    static std::mutex graveyard_mu;
    static std::list<Impl::Pending> graveyard;
    std::lock_guard g(graveyard_mu);
    std::lock_guard lock(impl_->send_mu);
    spdlog::warn("MPI: {} send(s) never completed; closing anyway", impl_->pending.size());
    graveyard.splice(graveyard.end(), impl_->pending);
  }
}

bool MpiWire::closed() const {
  std::lock_guard lock(impl_->mu_);
  return impl_->closed;
}

// ---- the transport ------------------------------------------------------------------------------

// Moves the control node's frames into the wire's inbox for self, and its errors (the
// coordinator lost) with them.
struct MpiTransport::Pump {
  std::thread thread;
  std::atomic<bool> stop{false};
};

MpiTransport::MpiTransport(Endpoint self, std::shared_ptr<MpiWire> wire,
                           std::shared_ptr<TcpNode> control, proto::DecoderLimits limits)
    : Transport(self, limits), wire_(std::move(wire)), control_(std::move(control)) {
  wire_->attach(self, posts());
  if (control_) {
    pump_ = std::make_unique<Pump>();
    pump_->thread = std::thread([this, me = self] {
      while (!pump_->stop.load()) {
        try {
          if (std::optional<RawFrame> f = control_->take(std::chrono::milliseconds(100))) {
            wire_->deliver(me, std::move(*f));
          }
        } catch (const TransportClosed&) {
          return;
        } catch (const std::exception&) {
          wire_->deliver_error(me, std::current_exception());
        }
      }
    });
  }
}

MpiTransport::~MpiTransport() {
  if (pump_) {
    pump_->stop = true;
    if (pump_->thread.joinable()) pump_->thread.join();
  }
}

void MpiTransport::close() {
  if (control_) control_->close();
  wire_->close(fmt::format("closed by {}", self().str()));
}

void MpiTransport::flush(std::chrono::milliseconds timeout) {
  wire_->flush(self(), timeout);
  if (control_) control_->flush(timeout);
}

void MpiTransport::send_frame(const Endpoint& to, proto::OutFrame frame) {
  if (control_ && to.role == Role::kCoordinator) {
    control_->send_frame(to, std::move(frame));
    return;
  }
  wire_->send(self(), to, std::move(frame));
}

std::optional<RawFrame> MpiTransport::receive_frame(std::chrono::milliseconds timeout) {
  return wire_->take(self(), timeout);
}

}  // namespace ptrain::net

#else  // !PTRAIN_HAS_MPI

namespace ptrain::net {
namespace {
[[noreturn]] void no_mpi() {
  throw NotImplementedError(
      "MPI is not implemented yet in this build of ptrain (configured without MPI: install "
      "libopenmpi-dev and configure with -DPTRAIN_MPI=ON or auto)");
}
}  // namespace

bool mpi_built() { return false; }
void mpi_init() { no_mpi(); }
void mpi_finalize() {}
void mpi_abort(int code) { std::_Exit(code); }
std::string mpi_processor_name() { no_mpi(); }
struct MpiComm::Impl {};
MpiComm MpiComm::world() { no_mpi(); }
MpiComm MpiComm::dup() const { no_mpi(); }
MpiComm MpiComm::split(int, int) const { no_mpi(); }
int MpiComm::rank() const { no_mpi(); }
int MpiComm::size() const { no_mpi(); }
std::vector<std::string> MpiComm::allgather(const std::string&) const { no_mpi(); }
std::string MpiComm::broadcast(const std::string&, int) const { no_mpi(); }
void MpiComm::nudge(int) const { no_mpi(); }
bool MpiComm::nudged() const { no_mpi(); }
void MpiComm::send_bytes(int, std::span<const std::byte>) const { no_mpi(); }
void MpiComm::recv_bytes(int, std::span<std::byte>) const { no_mpi(); }
struct MpiWire::Impl {};
MpiWire::MpiWire(MpiComm, std::map<Endpoint, int>, proto::DecoderLimits, size_t) { no_mpi(); }
MpiWire::~MpiWire() = default;
void MpiWire::attach(const Endpoint&, std::shared_ptr<ReceivePosts>) { no_mpi(); }
void MpiWire::send(const Endpoint&, const Endpoint&, proto::OutFrame) { no_mpi(); }
void MpiWire::send_raw(const Endpoint&, const Endpoint&, std::vector<std::byte>) { no_mpi(); }
void MpiWire::send_tampered(const Endpoint&, const Endpoint&, proto::OutFrame,
                            std::span<const std::byte>) {
  no_mpi();
}
void MpiWire::flush(const Endpoint&, std::chrono::milliseconds) { no_mpi(); }
std::optional<RawFrame> MpiWire::take(const Endpoint&, std::chrono::milliseconds) { no_mpi(); }
void MpiWire::deliver(const Endpoint&, RawFrame) { no_mpi(); }
void MpiWire::deliver_error(const Endpoint&, std::exception_ptr) { no_mpi(); }
void MpiWire::close(const std::string&) {}
bool MpiWire::closed() const { return true; }
struct MpiTransport::Pump {};
MpiTransport::MpiTransport(Endpoint self, std::shared_ptr<MpiWire>, std::shared_ptr<TcpNode>,
                           proto::DecoderLimits limits)
    : Transport(self, limits) {
  no_mpi();
}
MpiTransport::~MpiTransport() = default;
void MpiTransport::close() {}
void MpiTransport::flush(std::chrono::milliseconds) {}
void MpiTransport::send_frame(const Endpoint&, proto::OutFrame) { no_mpi(); }
std::optional<RawFrame> MpiTransport::receive_frame(std::chrono::milliseconds) { no_mpi(); }

}  // namespace ptrain::net

#endif  // PTRAIN_HAS_MPI
