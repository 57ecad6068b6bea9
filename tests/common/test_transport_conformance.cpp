// One conformance suite for every Transport: each case is a doctest template applied to every
// harness in `AllTransports` (below). A harness builds a hub (server 0) and peers (workers) over
// one wire, and can inject raw bytes as a peer would send them. Adding a transport (MPI) is one
// harness class and one entry in AllTransports.
//
// Cases: ordering per sender (both ways, concurrent senders), frames past the 256 KiB staging
// buffer and past the 8 MiB receive-buffer pool threshold (bitwise, NaN payloads included), a peer
// lost in the middle of a frame, close flushing queued frames, heartbeat timeout of a silent
// peer (and no timeout for an idle live one), bad frames (garbage, bad CRC, wrong version,
// oversize: the sender is refused with a reason naming it, the transport keeps working); and the
// zero-copy data plane: floats received into posted destinations (gradient slot, pull
// destination), borrowed floats reusable once flush() returns, backpressure on a full peer queue.
// A case that cannot apply to a wire says why (doctest MESSAGE) and checks what does apply.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <thread>
#include <tuple>

#include "common/net/auth.hpp"
#include "common/net/host_port.hpp"
#include "common/net/inproc_transport.hpp"
#include "common/net/mpi_transport.hpp"
#include "common/net/tcp_transport.hpp"
#include "common/net/transport.hpp"
#include "common/proto/codec.hpp"
#include "ptrain/build_config.hpp"

using namespace ptrain;
using namespace ptrain::net;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace conformance {

// Liveness settings short enough for a unit test.
constexpr auto kHeartbeat = 50ms;
constexpr auto kPeerTimeout = 400ms;

// Bytes that reach the hub as if worker `id` sent them, bypassing any encoder.
class RawSender {
 public:
  virtual ~RawSender() = default;
  virtual void send(std::span<const std::byte> bytes) = 0;
  // TCP: closes the connection (after a partial frame: the peer is lost mid-frame).
  virtual void close() = 0;
  // TCP: true once the hub has closed the connection (EOF or reset), waiting up to `limit`.
  virtual bool dropped_by_hub(std::chrono::milliseconds limit) = 0;
  // TCP: sends a heartbeat every kHeartbeat from now on (so the hub keeps a peer that never
  // reads anything).
  virtual void keep_alive() = 0;
};

// ---- in-process ---------------------------------------------------------------------------------

class InprocHarness {
 public:
  static constexpr const char* kName = "inproc";
  static constexpr bool kConnections = false;  // no connections: nothing to lose or time out

  InprocHarness() : fabric_(std::make_shared<InprocFabric>()) {
    hub_ = make_transport(TransportOptions::inproc(server_endpoint(0), fabric_));
  }
  Transport& hub() { return *hub_; }
  Transport& peer(int32_t id) {
    auto& p = peers_[id];
    if (!p) p = make_transport(TransportOptions::inproc(worker_endpoint(id), fabric_));
    return *p;
  }
  std::unique_ptr<RawSender> raw(int32_t id) {
    struct Raw final : RawSender {
      std::shared_ptr<InprocFabric> f;
      int32_t id;
      void send(std::span<const std::byte> b) override {
        f->deliver(server_endpoint(0),
                   RawFrame{worker_endpoint(id), std::vector<std::byte>(b.begin(), b.end())});
      }
      void close() override {}
      bool dropped_by_hub(std::chrono::milliseconds) override { return false; }
      void keep_alive() override {}
    };
    auto r = std::make_unique<Raw>();
    r->f = fabric_;
    r->id = id;
    return r;
  }

 private:
  std::shared_ptr<InprocFabric> fabric_;
  std::unique_ptr<Transport> hub_;
  std::map<int32_t, std::unique_ptr<Transport>> peers_;
};

// ---- TCP
// ------------------------------------------------------------------------------------------

const Secret& test_secret() {
  static const Secret s("conformance-suite-secret");
  return s;
}

TcpNodeOptions tcp_options(Role role) {
  TcpNodeOptions o;
  o.self_role = role;
  o.heartbeat = kHeartbeat;
  o.peer_timeout = kPeerTimeout;
  return o;  // peer_lost empty: every peer's loss is reported by receive()
}

void send_all(int fd, std::span<const std::byte> b) {
  size_t off = 0;
  while (off < b.size()) {
    const ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
    REQUIRE(n > 0);
    off += static_cast<size_t>(n);
  }
}

// A raw socket that authenticates and identifies itself as worker `id`, then sends what the test
// gives it. Reads nothing it does not need (the hub's heartbeats pile up in the socket buffer).
class TcpRaw final : public RawSender {
 public:
  TcpRaw(const std::string& hub_addr, int32_t id) {
    const HostPort hp = parse_host_port(hub_addr, "hub address");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(hp.port);
    REQUIRE(inet_pton(AF_INET, hp.host.c_str(), &a.sin_addr) == 1);
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ClientHandshake hs(test_secret(), Role::kWorker);
    send_all(fd_, hs.hello());
    std::vector<std::byte> buf;
    for (;;) {
      AuthDecodeResult r = decode_auth(buf);
      if (r.status == proto::DecodeStatus::kNeedMore) {
        std::byte c[1];  // one byte at a time: never read past the auth frames
        REQUIRE(::recv(fd_, c, 1, 0) == 1);
        buf.push_back(c[0]);
        continue;
      }
      REQUIRE(r.status == proto::DecodeStatus::kGood);
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(r.frame_size));
      const AuthStep st = hs.on_frame(r.frame);
      if (!st.send.empty()) send_all(fd_, st.send);
      if (st.state == AuthState::kAccepted) break;
      REQUIRE(st.state == AuthState::kContinue);
    }
    send_all(fd_, proto::encode(proto::PeerHello{static_cast<uint8_t>(Role::kWorker), id, 0}));
  }
  ~TcpRaw() override { close(); }
  void send(std::span<const std::byte> b) override { send_all(fd_, b); }
  void close() override {
    if (beats_.joinable()) {
      stop_ = true;
      beats_.join();
    }
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void keep_alive() override {
    beats_ = std::thread([this] {
      const auto hb = proto::encode(proto::Heartbeat{1});
      while (!stop_) {
        (void)::send(fd_, hb.data(), hb.size(), MSG_NOSIGNAL);
        std::this_thread::sleep_for(kHeartbeat);
      }
    });
  }
  bool dropped_by_hub(std::chrono::milliseconds limit) override {
    const auto until = Clock::now() + limit;
    std::byte c[4096];
    while (Clock::now() < until) {
      const ssize_t n = ::recv(fd_, c, sizeof c, 0);
      if (n > 0) continue;  // heartbeats, a Failure
      if (n == 0) return true;
      if (errno == EINTR) continue;
      return errno == ECONNRESET || errno == EPIPE;  // EAGAIN: still open after 5 s
    }
    return false;
  }

 private:
  int fd_ = -1;
  std::thread beats_;
  std::atomic<bool> stop_{false};
};

class TcpHarness {
 public:
  static constexpr const char* kName = "tcp";
  static constexpr bool kConnections = true;

  // The hub's send queue per peer is bounded small, so that backpressure is reachable.
  static constexpr size_t kMaxQueued = 8u << 20;
  static constexpr auto kSendTimeout = 2s;

  TcpHarness() {
    TcpNodeOptions o = tcp_options(Role::kServer);
    o.max_queued_bytes = kMaxQueued;
    o.send_timeout = kSendTimeout;
    hub_node_ = std::make_shared<TcpNode>(test_secret(), o);
    addr_ = hub_node_->listen("127.0.0.1", 0, [](const proto::Message& m, const std::string&) {
      const auto* h = std::get_if<proto::PeerHello>(&m);
      if (h == nullptr) throw proto::ProtocolError("expected a PeerHello");
      return Identity{worker_endpoint(h->id), false};
    });
    hub_ = make_transport(TransportOptions::tcp(server_endpoint(0), hub_node_));
  }
  ~TcpHarness() {
    for (auto& [id, p] : peers_) p.node->close();
    hub_node_->close();
  }
  Transport& hub() { return *hub_; }
  Transport& peer(int32_t id) {
    Peer& p = peers_[id];
    if (!p.transport) {
      p.node = std::make_shared<TcpNode>(test_secret(), tcp_options(Role::kWorker));
      p.node->connect(addr_, server_endpoint(0),
                      proto::PeerHello{static_cast<uint8_t>(Role::kWorker), id, 0}, 5s);
      p.transport = make_transport(TransportOptions::tcp(worker_endpoint(id), p.node));
    }
    return *p.transport;
  }
  std::unique_ptr<RawSender> raw(int32_t id) { return std::make_unique<TcpRaw>(addr_, id); }

 private:
  struct Peer {
    std::shared_ptr<TcpNode> node;
    std::unique_ptr<Transport> transport;
  };
  std::shared_ptr<TcpNode> hub_node_;
  std::string addr_;
  std::unique_ptr<Transport> hub_;
  std::map<int32_t, Peer> peers_;
};

// ---- MPI ----------------------------------------------------------------------------------------
// This test process is an MPI world of one rank (MPI_Init without mpirun): every endpoint lives on
// rank 0 of a fresh duplicate of MPI_COMM_WORLD, so the frames take the real MPI path (envelope,
// MPI_Isend of borrowed floats, MPI_Improbe/Mrecv, MPI_Irecv into the posted destination) through
// Open MPI's loopback. Like the in-process wire there are no connections (membership is fixed,
// a dead rank is the control plane's to detect), and close() stops every endpoint of the process.
#if PTRAIN_HAS_MPI
class MpiHarness {
 public:
  static constexpr const char* kName = "mpi";
  static constexpr bool kConnections = false;

  MpiHarness() {
    mpi_init();
    std::map<Endpoint, int> ranks{{server_endpoint(0), 0}};
    for (int32_t id = 0; id < 64; ++id) ranks[worker_endpoint(id)] = 0;
    wire_ = std::make_shared<MpiWire>(MpiComm::world().dup(), ranks);
    hub_ = make_transport(TransportOptions::mpi(server_endpoint(0), wire_, nullptr));
  }
  ~MpiHarness() {
    peers_.clear();
    hub_.reset();
    wire_->close("end of the test");
  }
  Transport& hub() { return *hub_; }
  Transport& peer(int32_t id) {
    auto& p = peers_[id];
    if (!p) p = make_transport(TransportOptions::mpi(worker_endpoint(id), wire_, nullptr));
    return *p;
  }
  std::unique_ptr<RawSender> raw(int32_t id) {
    struct Raw final : RawSender {
      std::shared_ptr<MpiWire> w;
      int32_t id;
      void send(std::span<const std::byte> b) override {
        w->send_raw(worker_endpoint(id), server_endpoint(0),
                    std::vector<std::byte>(b.begin(), b.end()));
        w->flush(worker_endpoint(id), std::chrono::seconds(10));
      }
      void close() override {}
      bool dropped_by_hub(std::chrono::milliseconds) override { return false; }
      void keep_alive() override {}
    };
    auto r = std::make_unique<Raw>();
    r->w = wire_;
    r->id = id;
    return r;
  }

 private:
  std::shared_ptr<MpiWire> wire_;
  std::unique_ptr<Transport> hub_;
  std::map<int32_t, std::unique_ptr<Transport>> peers_;
};
#endif

}  // namespace conformance

using namespace conformance;

// Every transport the suite runs against.
#if PTRAIN_HAS_MPI
using AllTransports =
    std::tuple<conformance::InprocHarness, conformance::TcpHarness, conformance::MpiHarness>;
TYPE_TO_STRING(conformance::MpiHarness);
#else
using AllTransports = std::tuple<conformance::InprocHarness, conformance::TcpHarness>;
#endif
TYPE_TO_STRING(conformance::InprocHarness);
TYPE_TO_STRING(conformance::TcpHarness);

namespace {

// ---- helpers ------------------------------------------------------------------------------------

Envelope receive_one(Transport& t, std::chrono::milliseconds limit = 10s) {
  std::optional<Envelope> env = t.receive(limit);
  REQUIRE_MESSAGE(env.has_value(), t.self().str() << " received nothing within the limit");
  return std::move(*env);
}

// The next receive() must fail with an Error whose message contains every one of `parts`.
using conformance::RawSender;

template <class H>
std::string expect_refusal(H& h, std::initializer_list<const char*> parts) {
  std::string what;
  const auto until = Clock::now() + 10s;
  while (what.empty() && Clock::now() < until) {
    try {
      if (auto env = h.hub().receive(200ms)) {
        FAIL_CHECK("expected a refusal, got a " << proto::type_name(proto::type_of(env->message))
                                                << " from " << env->from.str());
      }
    } catch (const Error& e) {
      what = e.what();
    }
  }
  CAPTURE(what);
  REQUIRE_FALSE(what.empty());
  for (const char* p : parts) CHECK(what.find(p) != std::string::npos);
  return what;
}

// After a refusal the hub still talks to a well-behaved peer, both ways.
template <class H>
void expect_hub_survives(H& h, int32_t good_peer) {
  h.peer(good_peer).send(server_endpoint(0), proto::Shutdown{"still here"});
  const Envelope env = receive_one(h.hub());
  CHECK(env.from == worker_endpoint(good_peer));
  CHECK(std::get<proto::Shutdown>(env.message).reason == "still here");
  h.hub().send(worker_endpoint(good_peer), proto::Heartbeat{42});
  // (Heartbeats are consumed by the TCP wire; the in-process one delivers them.)
  h.hub().send(worker_endpoint(good_peer), proto::Failure{3, "and back"});
  for (;;) {
    const Envelope back = receive_one(h.peer(good_peer));
    if (std::holds_alternative<proto::Heartbeat>(back.message)) continue;
    CHECK(std::get<proto::Failure>(back.message).message == "and back");
    break;
  }
}

// n floats with a pattern that differs per (seed, index), a NaN with a payload and infinities.
std::vector<float> pattern(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>((i * 2654435761u) ^ seed) * 1e-7f;
  if (n > 3) {
    const uint32_t nan_bits = 0x7fc01234u;
    std::memcpy(&v[1], &nan_bits, 4);
    v[2] = std::numeric_limits<float>::infinity();
    v[n - 1] = -0.0f;
  }
  return v;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::vector<std::byte> frame_of(const proto::Message& m) { return proto::encode(m); }

}  // namespace

// ---- the cases
// ------------------------------------------------------------------------------------

TEST_CASE_TEMPLATE_DEFINE("conformance: order per sender is kept - both ways - concurrent senders",
                          H, conformance_order) {
  H h;
  constexpr int kPeers = 3, kPer = 200;
  std::vector<std::thread> senders;
  for (int32_t p = 0; p < kPeers; ++p) {
    Transport& t = h.peer(p);  // connected before its thread starts
    senders.emplace_back([&t, p] {
      for (int i = 0; i < kPer; ++i) t.send(server_endpoint(0), proto::PushReceived{0, i, p, 1});
    });
  }
  std::vector<int64_t> last(kPeers, -1);
  int64_t sum = 0;
  for (int n = 0; n < kPeers * kPer; ++n) {
    const Envelope env = receive_one(h.hub());
    const auto& m = std::get<proto::PushReceived>(env.message);
    REQUIRE(env.from == worker_endpoint(m.worker_id));
    CHECK(m.step == last[static_cast<size_t>(m.worker_id)] + 1);
    last[static_cast<size_t>(m.worker_id)] = m.step;
    sum += m.worker_id;
  }
  for (auto& t : senders) t.join();
  CHECK(sum == int64_t{kPer} * kPeers * (kPeers - 1) / 2);
  for (int i = 0; i < kPer; ++i) h.hub().send(worker_endpoint(1), proto::StepBegin{i, 0, {i}});
  for (int i = 0; i < kPer; ++i) {
    const Envelope env = receive_one(h.peer(1));
    CHECK(env.from == server_endpoint(0));
    CHECK(std::get<proto::StepBegin>(env.message).step == i);
  }
  CHECK_FALSE(h.hub().receive(20ms));
}

TEST_CASE_TEMPLATE_DEFINE("conformance: frames past 256 KiB and past 8 MiB arrive bit for bit", H,
                          conformance_large) {
  H h;
  // 300 KiB: past the reader's staging buffer; 9 MiB: past the receive-buffer pool threshold.
  for (const size_t floats : {size_t{300} * 1024 / 4, size_t{9} * 1024 * 1024 / 4}) {
    CAPTURE(floats);
    for (uint32_t round = 0; round < 2; ++round) {  // twice: a pooled buffer is reused
      const std::vector<float> g = pattern(floats, 7 + round);
      const proto::KeyRange r{0, static_cast<int64_t>(floats)};
      h.peer(0).send(server_endpoint(0), proto::GradPush{round, 0, 0, 64, r, g});
      h.peer(1).send(server_endpoint(0), proto::Shutdown{"after the push"});
      // An EvalDone of as many bytes carries two vectors: a large frame that is not a push.
      proto::EvalDone big;
      big.worker_id = 0;
      big.loss_sums.assign(g.begin(), g.begin() + static_cast<std::ptrdiff_t>(floats / 4));
      big.tokens.assign(floats / 4, int64_t{round} + 1);
      h.peer(0).send(server_endpoint(0), big);
      int seen = 0;
      while (seen < 3) {
        const Envelope env = receive_one(h.hub());
        if (auto* p = std::get_if<proto::GradPush>(&env.message)) {
          CHECK(env.from == worker_endpoint(0));
          CHECK(p->step == round);
          CHECK(same_bits(p->grads, g));
        } else if (auto* l = std::get_if<proto::EvalDone>(&env.message)) {
          REQUIRE(l->loss_sums.size() == big.loss_sums.size());  // bit for bit (NaN included)
          CHECK(std::memcmp(l->loss_sums.data(), big.loss_sums.data(),
                            big.loss_sums.size() * sizeof(double)) == 0);
          CHECK(l->tokens == big.tokens);
        } else {
          CHECK(env.from == worker_endpoint(1));
        }
        ++seen;
      }
      const std::vector<float> w = pattern(floats, 100 + round);
      h.hub().send(worker_endpoint(0), proto::PullReply{5, round, r, w});
      const Envelope back = receive_one(h.peer(0));
      CHECK(same_bits(std::get<proto::PullReply>(back.message).weights, w));
    }
  }
  const TransportCounters c = h.hub().counters();
  CHECK(c.frames_received == 12);
  CHECK(c.bytes_received_by_type[static_cast<size_t>(proto::MessageType::kGradPush)] > 18u << 20);
}

TEST_CASE_TEMPLATE_DEFINE("conformance: a peer lost in the middle of a frame is dropped naming it",
                          H, conformance_lost_mid_frame) {
  H h;
  const std::vector<float> g = pattern(1 << 20, 3);  // 4 MiB: read into its own buffer
  const std::vector<std::byte> f = frame_of(proto::GradPush{0, 0, 7, 1, {0, 1 << 20}, g});
  int32_t id = 7;
  for (const size_t cut : {size_t{10}, f.size() / 2}) {  // inside the header, inside the payload
    CAPTURE(cut);
    auto raw = h.raw(++id);
    raw->send(std::span(f).first(cut));
    if constexpr (H::kConnections) {
      raw->close();
      const std::string id_text = worker_endpoint(id).str();
      expect_refusal(h, {id_text.c_str(), "in the middle of a frame", "truncated frame"});
    } else {
      MESSAGE(std::string(H::kName)
              << ": no connection to lose (frames are delivered whole); a truncated "
                 "frame delivered as one is refused naming its sender instead");
      const std::string id_text = worker_endpoint(id).str();
      expect_refusal(h, {id_text.c_str(), "truncated frame"});
    }
  }
  expect_hub_survives(h, 0);
}

TEST_CASE_TEMPLATE_DEFINE("conformance: close delivers every queued frame first", H,
                          conformance_close_flush) {
  H h;
  constexpr int kFrames = 24;
  const std::vector<float> g = pattern(256 * 1024, 9);  // 1 MiB each: they queue up
  Transport& p = h.peer(0);
  for (int i = 0; i < kFrames; ++i) {
    p.send(server_endpoint(0), proto::GradPush{i, 0, 0, 1, {0, 256 * 1024}, g});
  }
  p.send(server_endpoint(0), proto::Shutdown{"last"});
  if constexpr (H::kConnections) {
    p.close();  // returns once the queue is flushed
  } else {
    MESSAGE(std::string(H::kName)
            << ": close() stops the whole fabric at once and a send is in the "
               "receiver's mailbox when it returns (nothing is queued on the sender's "
               "side); checked instead: everything sent is received, then close() "
               "stops both ends");
  }
  for (int i = 0; i < kFrames; ++i) {
    const Envelope env = receive_one(h.hub());
    const auto& m = std::get<proto::GradPush>(env.message);
    CHECK(m.step == i);
    CHECK(same_bits(m.grads, g));
  }
  CHECK(std::get<proto::Shutdown>(receive_one(h.hub()).message).reason == "last");
  if constexpr (H::kConnections) {
    CHECK_FALSE(h.hub().receive(300ms));  // a goodbye, not a lost peer
  } else {
    p.close();
    CHECK_THROWS_AS(h.hub().receive(10ms), TransportClosed);
  }
  CHECK_THROWS_AS(p.send(server_endpoint(0), proto::Shutdown{}), TransportClosed);
}

TEST_CASE_TEMPLATE_DEFINE("conformance: a silent peer is declared lost within the timeout", H,
                          conformance_heartbeat) {
  H h;
  if constexpr (!H::kConnections) {
    MESSAGE(std::string(H::kName)
            << ": no connections (threads of one process, or MPI ranks whose loss the TCP "
               "control plane detects): no peer can fall silent here and there is no "
               "heartbeat; not applicable");
    (void)h.peer(0);
  } else {
    // A live but idle peer is kept (its node sends heartbeats) ...
    (void)h.peer(0);
    CHECK_FALSE(h.hub().receive(kPeerTimeout * 3));
    // ... a silent one is not.
    auto raw = h.raw(5);
    const auto t0 = Clock::now();
    expect_refusal(h, {"worker 5", "missed heartbeats"});
    const auto took = Clock::now() - t0;
    CHECK(took >= kPeerTimeout - kHeartbeat);
    CHECK(took <= kPeerTimeout + 3 * kHeartbeat + 1s);  // slack for a loaded machine
    CHECK(raw->dropped_by_hub(2s));
    expect_hub_survives(h, 0);
  }
}

TEST_CASE_TEMPLATE_DEFINE(
    "conformance: bad frames - the sender is refused with a reason - the "
    "transport survives",
    H, conformance_bad_frames) {
  H h;
  (void)h.peer(0);
  const std::vector<std::byte> good = frame_of(proto::Shutdown{"fine"});
  struct Bad {
    const char* what;
    std::vector<std::byte> bytes;
    const char* reason;
  };
  std::vector<Bad> cases;
  cases.push_back({"garbage", std::vector<std::byte>(64, std::byte{0x5a}), "bad magic"});
  {
    auto f = good;
    f.back() ^= std::byte{1};
    cases.push_back({"bad CRC", f, "CRC32C"});
  }
  {
    auto f = good;
    const uint16_t v = 99;
    std::memcpy(f.data() + 4, &v, 2);
    cases.push_back({"wrong version", f, "protocol version 99 is not supported"});
  }
  {
    auto f = good;
    const uint64_t len = 1ull << 40;
    std::memcpy(f.data() + 12, &len, 8);
    cases.push_back({"oversize", f, "over the"});
  }
  {
    const std::vector<float> g = pattern(1 << 20, 1);
    auto f = frame_of(proto::GradPush{0, 0, 0, 1, {0, 1 << 20}, g});
    f[f.size() / 2] ^= std::byte{4};
    cases.push_back({"bad CRC in a large frame", f, "CRC32C"});
  }
  int32_t id = 10;
  for (const Bad& b : cases) {
    CAPTURE(b.what);
    auto raw = h.raw(id);
    raw->send(b.bytes);
    const std::string who = worker_endpoint(id).str();
    expect_refusal(h, {who.c_str(), b.reason});
    if constexpr (H::kConnections) {
      CHECK_MESSAGE(raw->dropped_by_hub(5s), "the hub kept the connection of " << who);
    }
    ++id;
  }
  if constexpr (!H::kConnections) {
    MESSAGE(
        std::string(H::kName) << ": no connection to drop; receive() refuses the frame naming its "
                                 "sender, and the transport keeps working");
  }
  expect_hub_survives(h, 0);
}

TEST_CASE_TEMPLATE_DEFINE("conformance: floats are received into the posted destination - "
                          "both ways",
                          H, conformance_posted) {
  H h;
  const size_t n = 3u << 20;  // 12 MiB: past the staging buffer and the pool threshold
  const std::vector<float> g = pattern(n, 21);
  const proto::KeyRange r{0, static_cast<int64_t>(n)};
  Transport& p = h.peer(0);
  // The hub's gradient slot for worker 0, step 3.
  std::vector<float> slot(n, 0.0f);
  h.hub().post_receive(worker_endpoint(0), proto::MessageType::kGradPush, 3, slot);
  p.send(server_endpoint(0), proto::GradPush{4, 0, 0, 1, r, proto::FloatRange::borrow(g)});
  p.send(server_endpoint(0), proto::GradPush{3, 0, 0, 1, r, proto::FloatRange::borrow(g)});
  p.flush(10s);
  {
    const auto m = std::get<proto::GradPush>(receive_one(h.hub()).message);
    CHECK(m.step == 4);  // another step: not the posting's, a buffer of its own
    CHECK(m.grads.owned());
    CHECK(m.grads.data() != slot.data());
    CHECK(same_bits(m.grads, g));
  }
  {
    const auto m = std::get<proto::GradPush>(receive_one(h.hub()).message);
    CHECK(m.step == 3);
    CHECK_FALSE(m.grads.owned());
    CHECK(m.grads.data() == slot.data());  // received in place
    CHECK(same_bits(slot, g));
  }
  // The posting was used up: the same step again gets its own buffer.
  p.send(server_endpoint(0), proto::GradPush{3, 0, 0, 1, r, proto::FloatRange::borrow(g)});
  p.flush(10s);
  CHECK(std::get<proto::GradPush>(receive_one(h.hub()).message).grads.data() != slot.data());

  // A worker's pull destination: the reply's weights land there; a cancelled posting is not used.
  std::vector<float> dst(n + 8, 0.0f);
  const std::span<float> part = std::span<float>(dst).subspan(8, n);
  const std::vector<float> w = pattern(n, 22);
  p.post_receive(server_endpoint(0), proto::MessageType::kPullReply, 77, part);
  h.hub().send(worker_endpoint(0), proto::PullReply{77, 1, r, proto::FloatRange::borrow(w)});
  h.hub().flush(10s);
  {
    const auto m = std::get<proto::PullReply>(receive_one(p).message);
    CHECK(m.weights.data() == part.data());
    CHECK(same_bits(part, w));
    CHECK(dst[0] == 0.0f);  // nothing outside the posted range
  }
  p.post_receive(server_endpoint(0), proto::MessageType::kPullReply, 78, part);
  p.cancel_receive(server_endpoint(0), proto::MessageType::kPullReply);
  h.hub().send(worker_endpoint(0), proto::PullReply{78, 1, r, w});  // an owned range
  CHECK(std::get<proto::PullReply>(receive_one(p).message).weights.data() != part.data());
  const TransportCounters c = h.hub().counters();
  CHECK(c.bytes_received_by_type[static_cast<size_t>(proto::MessageType::kGradPush)] ==
        3 * proto::encode(proto::GradPush{3, 0, 0, 1, r, g}).size());
}

TEST_CASE_TEMPLATE_DEFINE("conformance: borrowed floats may be reused once flush returns", H,
                          conformance_flush_borrowed) {
  H h;
  const size_t n = 4u << 20;  // 16 MiB per frame, three frames in flight
  std::vector<float> g = pattern(n, 31);
  const std::vector<float> expect = g;
  const proto::KeyRange r{0, static_cast<int64_t>(n)};
  Transport& p = h.peer(0);
  for (int i = 0; i < 3; ++i) {
    p.send(server_endpoint(0), proto::GradPush{i, 0, 0, 1, r, proto::FloatRange::borrow(g)});
  }
  p.flush(30s);
  std::fill(g.begin(), g.end(), std::numeric_limits<float>::quiet_NaN());  // reused at once
  for (int i = 0; i < 3; ++i) {
    const auto m = std::get<proto::GradPush>(receive_one(h.hub()).message);
    CHECK(m.step == i);
    CHECK(same_bits(m.grads, expect));
  }
}

TEST_CASE_TEMPLATE_DEFINE("conformance: a sender blocks while its peer's queue is full - then "
                          "throws naming it",
                          H, conformance_backpressure) {
  H h;
  (void)h.peer(0);
  if constexpr (!H::kConnections) {
    MESSAGE(std::string(H::kName)
            << ": a send is in the receiver's mailbox when it returns; nothing queues on the "
               "sender's side, so there is nothing to bound; not applicable");
  } else {
    // A peer that keeps its connection alive but never reads: the kernel's socket buffers fill,
    // then the hub's queue for it reaches its bound.
    auto raw = h.raw(20);
    raw->keep_alive();
    // The hub binds the connection to worker 20 once its PeerHello is read: until then a send
    // says "not connected". Wait for that (a small frame goes through) before filling the queue.
    const std::vector<float> one{1.0f};
    for (const auto until = Clock::now() + 10s;;) {
      try {
        h.hub().send(worker_endpoint(20), proto::PullReply{0, 0, {0, 1}, proto::FloatRange(one)});
        break;
      } catch (const PeerLost& e) {
        REQUIRE_MESSAGE(Clock::now() < until, "worker 20 never connected: " << e.what());
        std::this_thread::sleep_for(10ms);
      }
    }
    const std::vector<float> w = pattern(1u << 20, 5);  // 4 MiB frames, owned by the message
    const proto::FloatRange owned(w);
    std::string what;
    Clock::duration blocked{};
    for (int i = 0; i < 64 && what.empty(); ++i) {
      const auto t0 = Clock::now();
      try {
        h.hub().send(worker_endpoint(20), proto::PullReply{1, 1, {0, 1 << 20}, owned});
      } catch (const Error& e) {
        what = e.what();
        blocked = Clock::now() - t0;
      }
    }
    CAPTURE(what);
    CHECK(what.find("worker 20") != std::string::npos);
    CHECK(what.find("not reading") != std::string::npos);
    CHECK(blocked >= H::kSendTimeout - 100ms);
    expect_hub_survives(h, 0);  // other peers are not held up
  }
}

TEST_CASE_TEMPLATE_APPLY(conformance_posted, AllTransports);
TEST_CASE_TEMPLATE_APPLY(conformance_flush_borrowed, AllTransports);
TEST_CASE_TEMPLATE_APPLY(conformance_backpressure, AllTransports);
TEST_CASE_TEMPLATE_APPLY(conformance_order, AllTransports);
TEST_CASE_TEMPLATE_APPLY(conformance_large, AllTransports);
TEST_CASE_TEMPLATE_APPLY(conformance_lost_mid_frame, AllTransports);
TEST_CASE_TEMPLATE_APPLY(conformance_close_flush, AllTransports);
TEST_CASE_TEMPLATE_APPLY(conformance_heartbeat, AllTransports);
TEST_CASE_TEMPLATE_APPLY(conformance_bad_frames, AllTransports);
