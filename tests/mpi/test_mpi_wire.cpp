// The MPI wire's float pieces (label `mpi`): a frame's floats travel as messages of the wire's
// piece size with the payload CRC32C trailer after them (common/net/mpi_transport.hpp). This
// process is an MPI world of one rank (MPI_Init without mpirun), every endpoint on rank 0 of a
// fresh duplicate of MPI_COMM_WORLD, so the messages take Open MPI's real path. A small piece size
// (a test knob of the wire) reaches many pieces and every edge with small frames: bodies one
// float short of a piece, exactly one, one float past, several, and a byte flipped in the first,
// a middle and the last piece (and at their edges) must be refused naming the sender.
#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/net/mpi_transport.hpp"
#include "common/net/transport.hpp"
#include "common/proto/codec.hpp"

using namespace ptrain;
using namespace ptrain::net;
using namespace std::chrono_literals;

namespace {

constexpr size_t kPiece = 4096;  // bytes: 1024 floats

// A hub (server 0) and a peer (worker `peer_id`) over one wire of `piece` bytes per piece.
struct Pair {
  std::shared_ptr<MpiWire> wire;
  std::unique_ptr<Transport> hub, peer;
  explicit Pair(size_t piece, int32_t peer_id = 0) {
    mpi_init();
    std::map<Endpoint, int> ranks{{server_endpoint(0), 0}};
    for (int32_t id = 0; id < 16; ++id) ranks[worker_endpoint(id)] = 0;
    wire = std::make_shared<MpiWire>(MpiComm::world().dup(), ranks, proto::DecoderLimits{}, piece);
    hub = make_transport(TransportOptions::mpi(server_endpoint(0), wire, nullptr));
    peer = make_transport(TransportOptions::mpi(worker_endpoint(peer_id), wire, nullptr));
  }
  ~Pair() {
    peer.reset();
    hub.reset();
    wire->close("end of the test");
  }
};

Envelope receive_one(Transport& t) {
  std::optional<Envelope> env = t.receive(10s);
  REQUIRE_MESSAGE(env.has_value(), t.self().str() << " received nothing within 10 s");
  return std::move(*env);
}

// n floats that differ per (seed, index), a NaN with a payload among them.
std::vector<float> pattern(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>((i * 2654435761u) ^ seed) * 1e-7f;
  if (n > 1) {
    const uint32_t nan_bits = 0x7fc05678u;
    std::memcpy(&v[1], &nan_bits, 4);
  }
  return v;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("mpi wire: floats in pieces arrive bit for bit at every piece edge - both ways - in order") {
  Pair p(kPiece);
  const size_t f = kPiece / 4;  // floats per piece
  for (const size_t n : {size_t{1}, f - 1, f, f + 1, 3 * f - 1, 3 * f, 3 * f + 1, 10 * f + 7}) {
    CAPTURE(n);
    const proto::KeyRange r{0, static_cast<int64_t>(n)};
    const std::vector<float> g = pattern(n, static_cast<uint32_t>(n));
    // Not posted (a buffer of its own), then a control frame behind it: order is kept.
    p.peer->send(server_endpoint(0), proto::GradPush{1, 0, 0, 1, r, proto::FloatRange::borrow(g)});
    p.peer->send(server_endpoint(0), proto::Shutdown{"behind the push"});
    p.peer->flush(10s);
    {
      const auto m = std::get<proto::GradPush>(receive_one(*p.hub).message);
      CHECK(m.grads.owned());
      CHECK(same_bits(m.grads, g));
    }
    CHECK(std::get<proto::Shutdown>(receive_one(*p.hub).message).reason == "behind the push");
    // Posted: the pieces land in the destination, nothing beyond it is touched.
    std::vector<float> dst(n + 2, 0.0f);
    const std::span<float> part = std::span<float>(dst).subspan(1, n);
    const std::vector<float> w = pattern(n, 1000 + static_cast<uint32_t>(n));
    p.peer->post_receive(server_endpoint(0), proto::MessageType::kPullReply, 9, part);
    p.hub->send(worker_endpoint(0), proto::PullReply{9, 1, r, proto::FloatRange::borrow(w)});
    p.hub->flush(10s);
    const auto m = std::get<proto::PullReply>(receive_one(*p.peer).message);
    CHECK(m.weights.data() == part.data());
    CHECK(same_bits(part, w));
    CHECK(dst.front() == 0.0f);
    CHECK(dst.back() == 0.0f);
  }
  // Several frames of many pieces in flight at once, then read: each whole and in order.
  const size_t n = 7 * f + 3;
  const proto::KeyRange r{0, static_cast<int64_t>(n)};
  std::vector<std::vector<float>> gs;
  for (uint32_t i = 0; i < 5; ++i) gs.push_back(pattern(n, 50 + i));
  for (int64_t i = 0; i < 5; ++i) {
    p.peer->send(server_endpoint(0),
                 proto::GradPush{i, 0, 0, 1, r, proto::FloatRange::borrow(gs[static_cast<size_t>(i)])});
  }
  p.peer->flush(10s);
  for (int64_t i = 0; i < 5; ++i) {
    const auto m = std::get<proto::GradPush>(receive_one(*p.hub).message);
    CHECK(m.step == i);
    CHECK(same_bits(m.grads, gs[static_cast<size_t>(i)]));
  }
}

TEST_CASE("mpi wire: the default piece size - a body just past one piece and of several") {
  Pair p(kMpiBodyPiece);
  const size_t f = kMpiBodyPiece / 4;
  for (const size_t n : {f + 1, 2 * f + f / 2}) {
    CAPTURE(n);
    const std::vector<float> g = pattern(n, 3);
    std::vector<float> slot(n, 0.0f);
    p.hub->post_receive(worker_endpoint(0), proto::MessageType::kGradPush, 2, slot);
    p.peer->send(server_endpoint(0), proto::GradPush{2, 0, 0, 1, {0, static_cast<int64_t>(n)},
                                                     proto::FloatRange::borrow(g)});
    p.peer->flush(10s);
    const auto m = std::get<proto::GradPush>(receive_one(*p.hub).message);
    CHECK(m.grads.data() == slot.data());
    CHECK(same_bits(slot, g));
  }
}

TEST_CASE("mpi wire: a byte corrupted in any piece fails the CRC32C naming the sender - the wire "
          "keeps working") {
  Pair p(kPiece, 3);
  const size_t n = 5 * kPiece / 4 - 100;  // 4 whole pieces and a short last one
  const size_t bytes = n * 4;
  const proto::KeyRange r{0, static_cast<int64_t>(n)};
  const std::vector<float> g = pattern(n, 77);
  for (const size_t at : {size_t{0}, kPiece - 1, kPiece, 2 * kPiece + 123, 4 * kPiece, bytes - 1}) {
    CAPTURE(at);
    const proto::GradPush push{4, 0, 3, 1, r, proto::FloatRange::borrow(g)};
    std::vector<std::byte> tampered(bytes);
    std::memcpy(tampered.data(), g.data(), bytes);
    tampered[at] ^= std::byte{0x10};
    // Posted (every other offset) or not, the frame is refused.
    std::vector<float> slot(n, 0.0f);
    if (at % 2 == 0) p.hub->post_receive(worker_endpoint(3), proto::MessageType::kGradPush, 4, slot);
    p.wire->send_tampered(worker_endpoint(3), server_endpoint(0), proto::encode_frame(push),
                          tampered);
    p.wire->flush(worker_endpoint(3), 10s);
    std::string what;
    try {
      (void)p.hub->receive(10s);
    } catch (const Error& e) {
      what = e.what();
    }
    CAPTURE(what);
    CHECK(what.find("worker 3") != std::string::npos);
    CHECK(what.find("CRC32C") != std::string::npos);
    if (at % 2 == 0) p.hub->cancel_receive(worker_endpoint(3), proto::MessageType::kGradPush);
    // The same frame untampered goes through.
    p.peer->send(server_endpoint(0), push);
    p.peer->flush(10s);
    const auto m = std::get<proto::GradPush>(receive_one(*p.hub).message);
    CHECK(same_bits(m.grads, g));
  }
}
