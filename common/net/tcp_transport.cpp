// TcpNode / TcpTransport (tcp_transport.hpp). The only Asio-heavy translation unit of the
// transports. Threading: every Session field is touched only on the node's I/O thread, except the
// endpoint → session map, the inbox and the counters, which are guarded by Impl::mu (or atomic).
#include "common/net/tcp_transport.hpp"

#include "common/net/asio.hpp"
#include "common/net/frame_pool.hpp"
#include "common/proto/codec.hpp"
#include "common/proto/frame_decoder.hpp"
#include "common/util/hash.hpp"
#include "common/log.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <variant>

namespace ptrain::net {

namespace {

struct Lost {
  std::string message;
};
using InboxItem = std::variant<RawFrame, Lost>;

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double secs(std::chrono::milliseconds d) { return static_cast<double>(d.count()) / 1000.0; }

// Raises this process's soft limit on open files to its hard limit, once: the headroom keeps
// checkpoints and peers working while a listener sheds a flood.
void raise_fd_limit() {
  static std::once_flag once;
  std::call_once(once, [] {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      (void)::setrlimit(RLIMIT_NOFILE, &rl);
    }
  });
}

}  // namespace

struct Session {
  Session(tcp::socket s, std::string address)
      : sock(std::move(s)), addr(std::move(address)), wake(sock.get_executor()),
        tick(sock.get_executor()) {
    wake.expires_at(asio::steady_timer::time_point::max());
  }
  tcp::socket sock;
  std::string addr;          // the peer's HOST:PORT
  std::string local_host;    // this side's IP on the connection
  asio::steady_timer wake;   // the writer sleeps on it; cancel() = "queue not empty"
  asio::steady_timer tick;   // heartbeats and the watchdog
  // Frames for the writer, with their trailers once computed. A deque: references stay valid
  // while the writer pushes behind them.
  struct Queued {
    proto::OutFrame frame;
    std::array<std::byte, proto::kTrailerSize> trailer{};
  };
  std::deque<Queued> queue;
  int64_t queued = 0;  // bytes sent to this peer and not yet written or dropped (Impl::send_mu)
  bool accepting = true;  // false once dropped (Impl::send_mu)
  std::string drop_cause;  // why it was dropped, once it was (Impl::send_mu)
  std::optional<Endpoint> peer;
  Clock::time_point last_rx = Clock::now();
  bool open = true;
  bool goodbye = false;  // a Shutdown went either way: a later disconnect is expected
  std::string shed;      // why the listener dropped it before it authenticated (flood control)
  std::string label() const { return peer ? fmt::format("{} ({})", peer->str(), addr) : addr; }
};
using SessionPtr = std::shared_ptr<Session>;

struct TcpNode::Impl : std::enable_shared_from_this<TcpNode::Impl> {
  Impl(Secret s, TcpNodeOptions o) : secret(std::move(s)), opt(std::move(o)) {}

  Secret secret;
  TcpNodeOptions opt;
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard;
  std::thread thread;
  std::optional<tcp::acceptor> acceptor;
  IdentifyFn identify;
  std::set<SessionPtr> sessions;  // I/O thread only
  // Accepted connections still authenticating, oldest first (I/O thread only).
  std::list<SessionPtr> pending_auth;
  // A descriptor held in reserve: when accept fails for want of descriptors, it is given up for
  // a moment to take the waiting connection off the backlog and close it (else accept fails
  // again at once, forever).
  int reserve_fd = -1;
  LogLimiter refusal_log;
  LogLimiter accept_log;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<Endpoint, SessionPtr> bound;
  std::map<Endpoint, std::pair<std::string, std::string>> addresses;  // endpoint → (remote, local)
  // Peers whose connection was dropped (until one connects again as that endpoint): who and why,
  // for the PeerLost of a later send ("server 0 (127.0.0.1:40008): connection lost (...)").
  std::map<Endpoint, std::string> gone;
  std::deque<InboxItem> inbox;
  bool closed = false;
  std::atomic<bool> closing{false};
  // Postings the reader fills (shared with every TcpTransport over this node).
  std::shared_ptr<ReceivePosts> posts = std::make_shared<ReceivePosts>();

  // Send accounting, for backpressure, flush() and close(): bytes queued per session and in all,
  // and frames whose body is borrowed (not owned by the frame) still queued.
  std::mutex send_mu;
  std::condition_variable send_cv;
  int64_t queued_total = 0;
  int64_t borrowed_pending = 0;

  void push(InboxItem item) {
    std::lock_guard lock(mu);
    inbox.push_back(std::move(item));
    cv.notify_one();
  }

  bool stopped = false;  // close() finished (send_mu)
  static constexpr size_t kWritePiece = 1024 * 1024;
  // Control frames written by one writev at most (a step's StepWorkers, StepCommit, ... queued
  // together go out in one system call).
  static constexpr size_t kBatchFrames = 16;

  static bool borrowed(const proto::OutFrame& f) { return !f.body.empty() && !f.keep; }

  // Counts a frame in (any thread; with the backpressure wait done by the caller).
  void account_queued(Session& s, const proto::OutFrame& f) {
    s.queued += static_cast<int64_t>(f.size());
    queued_total += static_cast<int64_t>(f.size());
    if (borrowed(f)) ++borrowed_pending;
  }
  // Counts a frame out: written, or dropped with its connection (I/O thread).
  void account_done(Session& s, const proto::OutFrame& f) {
    std::lock_guard lock(send_mu);
    s.queued -= static_cast<int64_t>(f.size());
    queued_total -= static_cast<int64_t>(f.size());
    if (borrowed(f)) --borrowed_pending;
    send_cv.notify_all();
  }

  // ---- I/O thread ----

  void enqueue(const SessionPtr& s, proto::OutFrame frame) {
    if (!s->open) {
      account_done(*s, frame);
      return;
    }
    if (frame.type == proto::MessageType::kShutdown) s->goodbye = true;
    s->queue.push_back(Session::Queued{std::move(frame), {}});
    s->wake.cancel();
  }

  // Ends a session; `cause` says why, without naming the peer ("connection closed by the peer").
  void drop(const SessionPtr& s, const std::string& cause) {
    if (!s->open) return;
    s->open = false;
    // The owner hears of a real loss (and its cause) before a send to the peer can fail, so the
    // loss it records names the cause rather than a failed send.
    const bool lost = s->peer && !s->goodbye && !closing;
    const bool fatal = lost && (!opt.peer_lost || opt.peer_lost(*s->peer, cause));
    boost::system::error_code ignored;
    s->sock.shutdown(tcp::socket::shutdown_both, ignored);
    s->sock.close(ignored);
    s->wake.cancel();
    s->tick.cancel();
    {
      std::lock_guard lock(send_mu);
      s->accepting = false;
      s->drop_cause = cause;
    }
    for (auto& q : s->queue) account_done(*s, q.frame);
    s->queue.clear();
    sessions.erase(s);
    if (s->peer) {
      std::lock_guard lock(mu);
      auto it = bound.find(*s->peer);
      if (it != bound.end() && it->second == s) {
        bound.erase(it);
        gone[*s->peer] = fmt::format("{}: connection lost ({})", s->label(), cause);
      }
    }
    // Neutral wording: whether the job goes on is the owner's decision (peer_lost), not ours.
    const std::string what = lost ? fmt::format("lost {}: {}", s->label(), cause)
                                  : fmt::format("closed the connection {} {}: {}",
                                                s->peer ? "to" : "from", s->label(), cause);
    if (closing || s->goodbye) {
      spdlog::debug("{}", what);
    } else if (fatal) {
      spdlog::error("{}", what);
      push(Lost{what});
    } else {
      spdlog::warn("{}", what);
    }
  }

  // One auth frame. The header is read as it comes (never past it: a peer sends nothing more
  // before our answer) and checked after every read, so junk is refused at its first wrong byte,
  // not at the handshake deadline.
  awaitable<AuthFrame> read_auth(const SessionPtr& s) {
    std::array<std::byte, kMaxAuthFrame> buf{};
    size_t have = 0;
    AuthDecodeResult r;
    while (have < kAuthHeaderSize) {
      auto [ec, n] = co_await s->sock.async_read_some(
          asio::buffer(buf.data() + have, kAuthHeaderSize - have), nothrow_awaitable);
      if (ec) {
        throw IoError(ec == asio::error::eof
                          ? std::string("the peer closed the connection before authenticating")
                          : fmt::format("connection broken before authenticating ({})",
                                        ec.message()));
      }
      have += n;
      r = decode_auth(std::span(buf.data(), have));
      if (r.status == proto::DecodeStatus::kBad) throw IoError(r.error);
    }
    if (r.status == proto::DecodeStatus::kNeedMore && r.frame_size > kAuthHeaderSize &&
        r.frame_size <= kMaxAuthFrame) {
      co_await asio::async_read(
          s->sock, asio::buffer(buf.data() + kAuthHeaderSize, r.frame_size - kAuthHeaderSize),
          use_awaitable);
      r = decode_auth(std::span(buf.data(), r.frame_size));
    }
    if (r.status != proto::DecodeStatus::kGood) {
      throw IoError(r.error.empty() ? "an unreadable auth frame" : r.error);
    }
    co_return r.frame;
  }

  awaitable<void> write_bytes(const SessionPtr& s, const std::vector<std::byte>& b) {
    co_await asio::async_write(s->sock, asio::buffer(b), use_awaitable);
  }

  // Sends what a handshake step produced and says whether the handshake is over. A refusal's
  // last words (a Result naming the reason) are written without caring whether the peer still
  // listens: the reason thrown is ours, not a broken pipe.
  awaitable<bool> after_step(const SessionPtr& s, const AuthStep& step) {
    if (step.state == AuthState::kRefused) {
      if (!step.send.empty()) {
        (void)co_await asio::async_write(s->sock, asio::buffer(step.send), nothrow_awaitable);
      }
      throw IoError(step.reason);
    }
    if (!step.send.empty()) co_await write_bytes(s, step.send);
    co_return step.state == AuthState::kAccepted;
  }

  awaitable<void> server_handshake(SessionPtr s) {
    ServerHandshake hs(secret, opt.self_role);
    while (!co_await after_step(s, hs.on_frame(co_await read_auth(s)))) {
    }
  }

  awaitable<void> client_handshake(SessionPtr s) {
    ClientHandshake hs(secret, opt.self_role);
    co_await write_bytes(s, hs.hello());
    while (!co_await after_step(s, hs.on_frame(co_await read_auth(s)))) {
    }
  }

  awaitable<void> writer(SessionPtr s) {
    while (s->open) {
      if (s->queue.empty()) {
        s->wake.expires_at(asio::steady_timer::time_point::max());
        co_await s->wake.async_wait(nothrow_awaitable);
        continue;
      }
      // The head, then the body straight from where it lies (borrowed floats) in pieces, the
      // payload CRC32C computed over each piece just before it is written (in cache for the
      // kernel's copy); the first piece goes out with the head and the trailer with the last
      // piece (gather: one writev each). Frames without a body (control messages) queued behind
      // each other go out together in one writev, up to kBatchFrames of them.
      Session::Queued& q = s->queue.front();
      const proto::OutFrame& f = q.frame;
      boost::system::error_code ec;
      if (f.body.empty()) {
        std::array<asio::const_buffer, kBatchFrames> heads;
        size_t n = 0;
        while (n < s->queue.size() && n < kBatchFrames && s->queue[n].frame.body.empty()) {
          heads[n] = asio::buffer(s->queue[n].frame.head);
          ++n;
        }
        std::tie(ec, std::ignore) = co_await asio::async_write(
            s->sock, std::span<const asio::const_buffer>(heads.data(), n), nothrow_awaitable);
        if (!s->open) co_return;
        for (size_t i = 0; i + 1 < n; ++i) {  // the last is popped below
          account_done(*s, s->queue.front().frame);
          s->queue.pop_front();
        }
      } else {
        uint32_t crc = f.head_crc;
        size_t at = 0;
        while (!ec && at < f.body.size()) {
          const size_t n = std::min(kWritePiece, f.body.size() - at);
          crc = crc32c(f.body.data() + at, n, crc);
          const bool last = at + n == f.body.size();
          if (last) std::memcpy(q.trailer.data(), &crc, proto::kTrailerSize);
          const std::array<asio::const_buffer, 3> bufs{
              asio::buffer(f.head.data(), at == 0 ? f.head.size() : 0),
              asio::buffer(f.body.data() + at, n),
              asio::buffer(q.trailer.data(), last ? q.trailer.size() : 0)};
          std::tie(ec, std::ignore) =
              co_await asio::async_write(s->sock, bufs, nothrow_awaitable);
          if (!s->open) co_return;  // dropped: the frame (and its borrowed body) is let go
          at += n;
        }
      }
      if (!s->open) co_return;
      account_done(*s, s->queue.front().frame);
      s->queue.pop_front();
      if (ec) {
        drop(s, fmt::format("write failed ({})", ec.message()));
        co_return;
      }
    }
  }

  // A peer silent past the peer timeout is dropped: its last words from us say so, when nothing
  // else is being written to it (a frame cannot be cut in two). A stopped process (SIGSTOP) that
  // wakes up reads them from its socket and can say it was dropped, instead of guessing.
  void tell_dropped(const SessionPtr& s, const std::string& cause) {
    if (!s->peer || !s->queue.empty()) return;
    const std::vector<std::byte> b = proto::encode(proto::Failure{
        static_cast<int32_t>(ExitCode::kIo),
        fmt::format("dropped {}: {} (cluster.peer_timeout_s); a member dropped for its silence "
                    "is not taken back",
                    s->peer->str(), cause)});
    boost::system::error_code ec;
    s->sock.non_blocking(true, ec);  // never wait here: the I/O thread serves every peer
    if (!ec) (void)s->sock.write_some(asio::buffer(b), ec);
  }

  awaitable<void> ticker(SessionPtr s) {
    auto last_tick = Clock::now();
    while (s->open) {
      s->tick.expires_after(opt.heartbeat);
      co_await s->tick.async_wait(nothrow_awaitable);
      if (!s->open) co_return;
      // Stopping (close() half-closed the socket): a heartbeat now would fail and drop the
      // session at once, closing it on unread bytes: a reset that can cost the peer our last frames.
      if (closing) continue;
      // This process itself did not run for longer than the peer timeout (SIGSTOP, a suspended
      // machine): the silence is ours, not the peer's. The reader first takes what the peer sent
      // meanwhile (perhaps why it dropped us); the next tick judges the peer again.
      const auto now = Clock::now();
      const bool we_stalled = now - last_tick > opt.peer_timeout;
      last_tick = now;
      if (!we_stalled && now - s->last_rx > opt.peer_timeout) {
        const std::string cause = fmt::format("missed heartbeats for {:g} s", secs(opt.peer_timeout));
        tell_dropped(s, fmt::format("nothing received from it for {:g} s", secs(opt.peer_timeout)));
        drop(s, cause);
        co_return;
      }
      proto::OutFrame hb = proto::encode_frame(proto::Heartbeat{unix_ms()});
      {
        std::lock_guard lock(send_mu);
        account_queued(*s, hb);
      }
      enqueue(s, std::move(hb));
    }
  }

  // One whole frame from an authenticated connection. Throws Error to drop the peer.
  // Its header has been checked and its CRCs verified by the decoder; a float-body frame comes
  // split, its floats already in place.
  awaitable<void> handle(const SessionPtr& s, proto::Frame&& f) {
    const proto::MessageType t = f.header.type;
    std::vector<std::byte>& frame = f.bytes;
    if (t == proto::MessageType::kHeartbeat) co_return;
    if (t == proto::MessageType::kShutdown) s->goodbye = true;
    if (s->peer) {
      RawFrame raw(*s->peer, std::move(frame), /*crc_already_checked=*/true);
      raw.split = f.split;
      raw.floats = std::move(f.floats);
      raw.wire_size = f.wire_size();
      push(std::move(raw));
      co_return;
    }
    // Not identified yet: a control frame (the decoder's admit() refused bulk ones) that must
    // decode and identify the peer.
    const proto::Message m = proto::decode(frame, opt.limits, /*check_crc=*/false);
    Identity id;
    std::exception_ptr refused;
    std::vector<std::byte> reply;
    try {
      if (!identify) throw proto::ProtocolError("this node accepts no connections");
      id = identify(m, s->addr);
    } catch (const Error& e) {
      reply = proto::encode(proto::Failure{static_cast<int32_t>(e.code()), e.what()});
      refused = std::current_exception();
    }
    if (refused) {  // tell the peer why before dropping it
      (void)co_await asio::async_write(s->sock, asio::buffer(reply), nothrow_awaitable);
      std::rethrow_exception(refused);
    }
    {
      std::lock_guard lock(mu);
      if (bound.count(id.endpoint)) {
        throw proto::ProtocolError(
            fmt::format("claims to be {}, which is already connected", id.endpoint.str()));
      }
      bound[id.endpoint] = s;
      gone.erase(id.endpoint);
      boost::system::error_code ec;
      const auto local = s->sock.local_endpoint(ec);
      addresses[id.endpoint] = {s->addr, ec ? std::string() : local.address().to_string()};
    }
    s->peer = id.endpoint;
    spdlog::info("{} connected from {}", id.endpoint.str(), s->addr);
    if (id.deliver) push(RawFrame{id.endpoint, std::move(frame), true});
  }

  // Reads frames with the fuzzed incremental decoder (proto::FrameDecoder): small frames through
  // its reused staging buffer, several per read; a larger one, once its header passed the checks
  // (and, for a peer that has not identified itself, only if it is not a bulk frame: refused from
  // its header, before anything is allocated), straight into one pooled buffer of exactly its
  // size, in exact reads of one piece each, with the CRC32C computed piece by piece. No regrowth
  // copies, no second copy of the frame, no second CRC pass later (RawFrame::crc_checked).
  // The floats of a GradPush or PullReply go where the receiving role posted them
  // (ReceivePosts): straight from the socket into the worker's pull destination or the server's
  // gradient slot.
  awaitable<void> reader(SessionPtr s) {
    proto::FrameDecoder dec(
        opt.limits, proto::FrameDecoder::kDefaultStaging, take_frame_buffer,
        [s](const proto::FrameHeader& h) -> std::string {
          if (!s->peer && proto::is_bulk(h.type)) {
            return fmt::format("sent a {} frame before identifying itself",
                               proto::type_name(h.type));
          }
          return {};
        },
        [s, posts = posts](proto::MessageType type, uint64_t match, size_t count) {
          if (!s->peer) return proto::FloatDestination{};
          ReceivePosts::Claimed c = posts->claim(*s->peer, type, match, count);
          return proto::FloatDestination{c.dst, std::move(c.hold)};
        });
    std::string reason;
    try {
      proto::Frame frame;
      std::string error;
      while (s->open) {
        proto::DecodeStatus st;
        while ((st = dec.next(frame, error)) == proto::DecodeStatus::kGood) {
          co_await handle(s, std::move(frame));
          if (!s->open) co_return;
        }
        if (st == proto::DecodeStatus::kBad) throw proto::ProtocolError(error);
        const std::span<std::byte> to = dec.buffer();
        auto [ec, n] = dec.reading_in_place()
                           ? co_await asio::async_read(s->sock, asio::buffer(to.data(), to.size()),
                                                       nothrow_awaitable)
                           : co_await s->sock.async_read_some(
                                 asio::buffer(to.data(), to.size()), nothrow_awaitable);
        if (!s->open) co_return;
        dec.commit(n);
        if (ec) {
          if (ec == asio::error::eof) {
            reason = dec.buffered() > 0
                         ? fmt::format("connection closed by the peer in the middle of a frame "
                                       "({} bytes of a truncated frame)",
                                       dec.buffered())
                         : "connection closed by the peer";
          } else if (ec == asio::error::connection_reset) {
            reason = "connection reset by the peer";
          } else {
            reason = fmt::format("connection broken ({})", ec.message());
          }
          break;
        }
        s->last_rx = Clock::now();
      }
    } catch (const std::exception& e) {
      reason = fmt::format("bad frame: {}", e.what());
    }
    drop(s, reason);
  }

  void start(const SessionPtr& s) {
    sessions.insert(s);
    auto self = shared_from_this();
    asio::co_spawn(io, [self, s]() { return self->writer(s); }, asio::detached);
    asio::co_spawn(io, [self, s]() { return self->ticker(s); }, asio::detached);
    asio::co_spawn(io, [self, s]() { return self->reader(s); }, asio::detached);
  }

  awaitable<void> serve_accepted(SessionPtr s, std::list<SessionPtr>::iterator pending_at) {
    std::string refused;
    try {
      co_await with_deadline(server_handshake(s), opt.handshake_timeout,
                             fmt::format("authenticating {}", s->addr));
    } catch (const std::exception& e) {
      refused = e.what();
    }
    if (!s->shed.empty()) {
      refused = s->shed;  // the listener dropped it (and took it off pending_auth)
    } else {
      pending_auth.erase(pending_at);
    }
    if (!refused.empty()) {
      int64_t held = 0;
      if (refusal_log.allow(held)) {
        spdlog::warn("refused a connection from {}: {}; the job continues{}", s->addr, refused,
                     LogLimiter::held_note(held));
      }
      boost::system::error_code ignored;
      s->sock.close(ignored);
      co_return;
    }
    spdlog::debug("authenticated a connection from {}", s->addr);
    s->last_rx = Clock::now();
    start(s);
  }

  // Out of descriptors: gives up the reserve for a moment to accept the connection at the head
  // of the backlog and close it at once.
  void shed_backlog() {
    if (reserve_fd < 0) return;
    ::close(reserve_fd);
    reserve_fd = -1;
    const int fd = ::accept4(acceptor->native_handle(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) ::close(fd);
    reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  }

  awaitable<void> accept_loop() {
    std::chrono::milliseconds backoff{0};
    for (;;) {
      auto [ec, sock] = co_await acceptor->async_accept(nothrow_awaitable);
      if (closing || !acceptor->is_open()) co_return;
      if (ec) {
        // Never a tight loop: back off (10 ms doubling to 1 s) and log at a bounded rate.
        const bool no_fds = ec == asio::error::no_descriptors || ec.value() == ENFILE;
        if (no_fds) shed_backlog();
        backoff = std::clamp(backoff * 2, std::chrono::milliseconds(10),
                             std::chrono::milliseconds(1000));
        int64_t held = 0;
        if (accept_log.allow(held)) {
          spdlog::warn("accepting on {} failed: {}{}; retrying in {} ms{}",
                       format_endpoint(acceptor->local_endpoint()), ec.message(),
                       no_fds ? " (new connections are shed until descriptors free up)" : "",
                       backoff.count(), LogLimiter::held_note(held));
        }
        asio::steady_timer pause(io, backoff);
        co_await pause.async_wait(nothrow_awaitable);
        continue;
      }
      backoff = std::chrono::milliseconds(0);
      boost::system::error_code e2;
      const auto remote = sock.remote_endpoint(e2);
      sock.set_option(tcp::no_delay(true), e2);
      auto s = std::make_shared<Session>(std::move(sock),
                                         e2 ? std::string("?") : format_endpoint(remote));
      // Flood control: one more than max_pending_auth sheds the oldest still authenticating.
      if (pending_auth.size() >= std::max<size_t>(1, opt.max_pending_auth)) {
        SessionPtr oldest = pending_auth.front();
        pending_auth.pop_front();
        oldest->shed = fmt::format(
            "dropped unauthenticated after {:.1f} s: more than {} connections were waiting to "
            "authenticate on this listener (the oldest is dropped first)",
            std::chrono::duration<double>(Clock::now() - oldest->last_rx).count(),
            opt.max_pending_auth);
        boost::system::error_code ignored;
        oldest->sock.close(ignored);
      }
      s->last_rx = Clock::now();
      pending_auth.push_back(s);
      asio::co_spawn(io, serve_accepted(s, std::prev(pending_auth.end())), asio::detached);
    }
  }
};

TcpNode::TcpNode(Secret secret, TcpNodeOptions options)
    : impl_(std::make_shared<Impl>(std::move(secret), std::move(options))) {
  raise_fd_limit();
  impl_->guard.emplace(impl_->io.get_executor());
  impl_->thread = std::thread([impl = impl_.get()] {
    for (;;) {
      try {
        impl->io.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("network thread: {}", e.what());
      }
    }
  });
}

TcpNode::~TcpNode() { close(); }

std::string TcpNode::listen(const std::string& host, uint16_t port, IdentifyFn identify) {
  Impl& im = *impl_;
  std::promise<std::string> done;
  auto fut = done.get_future();
  asio::post(im.io, [&] {
    try {
      boost::system::error_code ec;
      const auto addr = asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
      if (ec) throw IoError(fmt::format("cannot listen on {}:{}: '{}' is not an IP address", host,
                                        port, host));
      im.identify = std::move(identify);
      im.acceptor.emplace(im.io);
      const tcp::endpoint ep(addr, port);
      im.acceptor->open(ep.protocol());
      im.acceptor->set_option(tcp::acceptor::reuse_address(true));
      im.acceptor->bind(ep, ec);
      if (ec) throw IoError(fmt::format("cannot listen on {}:{}: {}", host, port, ec.message()));
      im.acceptor->listen();
      if (im.reserve_fd < 0) im.reserve_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      asio::co_spawn(im.io, im.accept_loop(), asio::detached);
      done.set_value(advertised_endpoint(im.acceptor->local_endpoint()));
    } catch (...) {
      done.set_exception(std::current_exception());
    }
  });
  return fut.get();
}

void TcpNode::connect(const std::string& host_port, const Endpoint& peer,
                      const proto::Message& first, std::chrono::milliseconds timeout) {
  Impl& im = *impl_;
  const HostPort hp = parse_host_port(host_port, peer.str());
  proto::OutFrame hello = proto::encode_frame(first);
  auto self = impl_;
  auto op = [self, hp, host_port, peer, timeout,
             hello = std::move(hello)]() mutable -> awaitable<void> {
    Impl& im = *self;
    tcp::resolver resolver(im.io);
    auto results = co_await with_deadline(
        resolver.async_resolve(hp.host, std::to_string(hp.port), use_awaitable), timeout,
        "resolving the address");
    tcp::socket sock(im.io);
    co_await with_deadline(asio::async_connect(sock, results, use_awaitable), timeout,
                           "connecting");
    sock.set_option(tcp::no_delay(true));
    auto s = std::make_shared<Session>(std::move(sock), host_port);
    co_await with_deadline(im.client_handshake(s), im.opt.handshake_timeout, "authenticating");
    s->local_host = s->sock.local_endpoint().address().to_string();
    s->peer = peer;
    s->last_rx = Clock::now();
    {
      std::lock_guard lock(im.mu);
      im.bound[peer] = s;
      im.gone.erase(peer);
      im.addresses[peer] = {host_port, s->local_host};
    }
    im.start(s);
    {
      std::lock_guard lock(im.send_mu);
      im.account_queued(*s, hello);
    }
    im.enqueue(s, std::move(hello));
  };
  auto fut = asio::co_spawn(im.io, std::move(op), asio::use_future);
  try {
    fut.get();
  } catch (const std::exception& e) {
    throw IoError(fmt::format("cannot connect to {} at {}: {}", peer.str(), host_port, e.what()));
  }
}

void TcpNode::set_liveness(std::chrono::milliseconds heartbeat,
                           std::chrono::milliseconds peer_timeout) {
  asio::post(impl_->io, [impl = impl_, heartbeat, peer_timeout] {
    impl->opt.heartbeat = heartbeat;
    impl->opt.peer_timeout = peer_timeout;
  });
}

std::string TcpNode::local_host_of(const Endpoint& peer) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->addresses.find(peer);
  return it == impl_->addresses.end() ? std::string() : it->second.second;
}

std::string TcpNode::address_of(const Endpoint& peer) const {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->addresses.find(peer);
  return it == impl_->addresses.end() ? std::string() : it->second.first;
}

void TcpNode::send_frame(const Endpoint& to, proto::OutFrame frame) {
  Impl& im = *impl_;
  SessionPtr s;
  {
    std::lock_guard lock(im.mu);
    if (im.closed || im.closing) {
      throw TransportClosed(fmt::format("cannot send to {}: closed", to.str()));
    }
    auto it = im.bound.find(to);
    if (it == im.bound.end()) {
      const auto g = im.gone.find(to);
      throw PeerLost(g != im.gone.end()
                         ? fmt::format("cannot send to {}", g->second)
                         : fmt::format("cannot send to {}: not connected", to.str()));
    }
    s = it->second;
  }
  {
    // Backpressure: wait while this peer's queue is over its bound (a frame larger than the
    // bound still goes once the queue is empty).
    std::unique_lock lock(im.send_mu);
    const int64_t n = static_cast<int64_t>(frame.size());
    const int64_t bound = static_cast<int64_t>(im.opt.max_queued_bytes);
    const bool room = im.send_cv.wait_for(lock, im.opt.send_timeout, [&] {
      return !s->accepting || im.closing || s->queued == 0 || s->queued + n <= bound;
    });
    if (im.closing) throw TransportClosed(fmt::format("cannot send to {}: closed", to.str()));
    if (!s->accepting) {
      throw PeerLost(fmt::format("cannot send to {}: connection lost ({})", s->label(),
                                 s->drop_cause));
    }
    if (!room) {
      throw Error(ExitCode::kIo,
                  fmt::format("cannot send to {}: {} bytes have been queued for it for {:g} s "
                              "(bound {} bytes): it is not reading",
                              to.str(), s->queued, secs(im.opt.send_timeout), bound));
    }
    im.account_queued(*s, frame);
  }
  asio::post(im.io, [impl = impl_, s, f = std::move(frame)]() mutable {
    impl->enqueue(s, std::move(f));
  });
}

void TcpNode::flush(std::chrono::milliseconds timeout) {
  Impl& im = *impl_;
  std::unique_lock lock(im.send_mu);
  if (!im.send_cv.wait_for(lock, timeout, [&] {
        return im.borrowed_pending == 0 || im.stopped;
      })) {
    throw Error(ExitCode::kIo,
                fmt::format("{} frame(s) with borrowed floats still unwritten after {:g} s ({} "
                            "bytes queued in all)",
                            im.borrowed_pending, secs(timeout), im.queued_total));
  }
}

std::shared_ptr<ReceivePosts> TcpNode::receive_posts() const { return impl_->posts; }

std::optional<RawFrame> TcpNode::take(std::chrono::milliseconds timeout) {
  Impl& im = *impl_;
  std::unique_lock lock(im.mu);
  const bool ready = im.cv.wait_for(lock, timeout, [&] { return im.closed || !im.inbox.empty(); });
  if (im.closed) throw TransportClosed("the network endpoint is closed");
  if (!ready) return std::nullopt;
  InboxItem item = std::move(im.inbox.front());
  im.inbox.pop_front();
  if (auto* lost = std::get_if<Lost>(&item)) throw PeerLost(lost->message);
  return std::move(std::get<RawFrame>(item));
}

void TcpNode::close() {
  Impl& im = *impl_;
  if (!im.thread.joinable()) return;
  im.closing = true;
  // Let queued frames (a final Shutdown, a reply) reach the wire.
  const auto deadline = Clock::now() + std::chrono::seconds(3);
  {
    std::unique_lock lock(im.send_mu);
    im.send_cv.wait_until(lock, deadline, [&] { return im.queued_total <= 0; });
  }
  // A lingering close: send FIN after the flushed frames and give the peers (≤ 3 s) to read them
  // and close their ends, our readers draining what they still send (heartbeats). Closing a socket
  // that holds unread bytes makes the kernel send a reset, and a reset can make the peer's kernel
  // discard frames it has received but not yet handed to the peer: the goodbye would be lost.
  asio::post(im.io, [impl = impl_] {
    boost::system::error_code ignored;
    if (impl->acceptor) impl->acceptor->close(ignored);
    for (const auto& s : impl->sessions) s->sock.shutdown(tcp::socket::shutdown_send, ignored);
  });
  const auto linger_until = Clock::now() + std::chrono::seconds(3);
  while (Clock::now() < linger_until) {
    auto none_left = std::make_shared<std::promise<bool>>();
    std::future<bool> answer = none_left->get_future();
    asio::post(im.io, [impl = impl_, none_left] { none_left->set_value(impl->sessions.empty()); });
    if (answer.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready ||
        answer.get()) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  asio::post(im.io, [impl = impl_] {
    auto all = impl->sessions;
    for (const auto& s : all) impl->drop(s, "this role is stopping");
  });
  im.guard.reset();
  const auto stop_by = Clock::now() + std::chrono::seconds(2);
  while (!im.io.stopped() && Clock::now() < stop_by) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  im.io.stop();
  im.thread.join();
  if (im.reserve_fd >= 0) {
    ::close(im.reserve_fd);
    im.reserve_fd = -1;
  }
  {
    std::lock_guard lock(im.send_mu);
    im.stopped = true;
    im.send_cv.notify_all();  // senders blocked on backpressure, flush()
  }
  im.posts->close();  // no reader writes into a posting any more
  std::lock_guard lock(im.mu);
  im.closed = true;
  im.bound.clear();
  im.cv.notify_all();
}

TcpTransport::TcpTransport(Endpoint self, std::shared_ptr<TcpNode> node,
                           proto::DecoderLimits limits)
    : Transport(self, limits, node->receive_posts()), node_(std::move(node)) {}

void TcpTransport::close() { node_->close(); }

void TcpTransport::flush(std::chrono::milliseconds timeout) { node_->flush(timeout); }

void TcpTransport::send_frame(const Endpoint& to, proto::OutFrame frame) {
  node_->send_frame(to, std::move(frame));
}

std::optional<RawFrame> TcpTransport::receive_frame(std::chrono::milliseconds timeout) {
  return node_->take(timeout);
}

}  // namespace ptrain::net
