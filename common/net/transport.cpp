#include "common/net/transport.hpp"

#include "common/net/frame_pool.hpp"
#include "common/net/inproc_transport.hpp"
#include "common/net/mpi_transport.hpp"
#include "common/net/tcp_transport.hpp"
#include "common/util/huge_pages.hpp"

#include <fmt/format.h>

#include <atomic>
#include <mutex>

namespace ptrain::net {

namespace {
std::mutex pool_mu;
std::vector<std::vector<std::byte>> pool;  // guarded by pool_mu
std::atomic<bool> pool_used{false};
}  // namespace

std::vector<std::byte> take_frame_buffer(size_t bytes) {
  pool_used.store(true, std::memory_order_relaxed);
  if (bytes >= kMinPooledFrame) {
    std::lock_guard lock(pool_mu);
    for (auto it = pool.begin(); it != pool.end(); ++it) {
      if (it->capacity() >= bytes && it->capacity() / 2 <= bytes) {
        std::vector<std::byte> b = std::move(*it);
        pool.erase(it);
        b.clear();
        return b;
      }
    }
  }
  std::vector<std::byte> b;
  b.reserve(bytes);
  advise_huge_pages(b.data(), bytes);
  return b;
}

void give_frame_buffer(std::vector<std::byte>&& buf) {
  if (buf.capacity() < kMinPooledFrame || !pool_used.load(std::memory_order_relaxed)) return;
  std::vector<std::byte> b = std::move(buf);
  std::lock_guard lock(pool_mu);
  if (pool.size() >= kMaxFrameBuffers) pool.erase(pool.begin());  // keep the most recent
  pool.push_back(std::move(b));
}

std::string Endpoint::str() const {
  switch (role) {
    case Role::kCoordinator: return "coordinator";
    case Role::kServer: return fmt::format("server {}", id);
    case Role::kWorker: return fmt::format("worker {}", id);
  }
  return fmt::format("endpoint({}, {})", static_cast<int>(role), id);
}

Transport::Transport(Endpoint self, proto::DecoderLimits limits,
                     std::shared_ptr<ReceivePosts> posts)
    : self_(self),
      limits_(limits),
      posts_(posts ? std::move(posts) : std::make_shared<ReceivePosts>()) {}

void Transport::send(const Endpoint& to, const proto::Message& msg) {
  proto::OutFrame frame = proto::encode_frame(msg);
  const uint64_t n = frame.size();
  const auto type = static_cast<size_t>(frame.type);
  send_frame(to, std::move(frame));
  frames_sent_.fetch_add(1, std::memory_order_relaxed);
  bytes_sent_.fetch_add(n, std::memory_order_relaxed);
  sent_by_type_[type].fetch_add(n, std::memory_order_relaxed);
}

void Transport::post_receive(const Endpoint& from, proto::MessageType type, uint64_t match,
                             std::span<float> dst) {
  PTRAIN_ENFORCE(proto::float_body_head(type) > 0, "{} carries no floats to receive in place",
                 proto::type_name(type));
  posts_->post(from, type, match, dst);
}

void Transport::cancel_receive(const Endpoint& from, proto::MessageType type) {
  posts_->cancel(from, type);
}

std::optional<Envelope> Transport::receive(std::chrono::milliseconds timeout) {
  std::optional<RawFrame> raw = receive_frame(timeout);
  if (!raw) return std::nullopt;
  const uint64_t n = raw->wire_size > 0 ? raw->wire_size : raw->bytes.size();
  Envelope env{raw->from, {}};
  try {
    if (raw->split) {
      PTRAIN_ENFORCE(raw->bytes.size() >= proto::kHeaderSize, "a split frame without a header");
      const proto::FrameHeader h = proto::read_header(
          std::span<const std::byte, proto::kHeaderSize>(raw->bytes.data(), proto::kHeaderSize));
      env.message = proto::assemble(h.type, std::span(raw->bytes).subspan(proto::kHeaderSize),
                                    std::move(raw->floats));
    } else {
      // A whole frame (the in-process wire, or a frame without floats): its floats, if any, go
      // to the posted destination, copied once out of the frame.
      const Endpoint from = raw->from;
      env.message = proto::decode(
          raw->bytes, limits_, /*check_crc=*/!raw->crc_checked,
          [this, from](proto::MessageType type, uint64_t match, size_t count) {
            ReceivePosts::Claimed c = posts_->claim(from, type, match, count);
            return proto::FloatDestination{c.dst, std::move(c.hold)};
          });
    }
  } catch (const proto::ProtocolError& e) {
    throw proto::ProtocolError(
        fmt::format("{}: bad frame from {}: {}", self_.str(), raw->from.str(), e.what()));
  }
  frames_received_.fetch_add(1, std::memory_order_relaxed);
  bytes_received_.fetch_add(n, std::memory_order_relaxed);
  received_by_type_[static_cast<size_t>(proto::type_of(env.message))].fetch_add(
      n, std::memory_order_relaxed);
  give_frame_buffer(std::move(raw->bytes));
  return env;
}

TransportCounters Transport::counters() const {
  TransportCounters c;
  c.frames_sent = frames_sent_.load();
  c.frames_received = frames_received_.load();
  c.bytes_sent = bytes_sent_.load();
  c.bytes_received = bytes_received_.load();
  for (size_t i = 0; i < c.bytes_sent_by_type.size(); ++i) {
    c.bytes_sent_by_type[i] = sent_by_type_[i].load();
    c.bytes_received_by_type[i] = received_by_type_[i].load();
  }
  return c;
}

void report_failure_to_coordinator(Transport& transport, const std::exception& e) noexcept {
  const auto* err = dynamic_cast<const Error*>(&e);
  const auto code = static_cast<int32_t>(err ? err->code() : ExitCode::kInternal);
  try {
    transport.send(coordinator_endpoint(), proto::Failure{code, e.what()});
  } catch (const std::exception&) {
  }
}

std::unique_ptr<Transport> make_transport(const TransportOptions& options) {
  switch (options.kind) {
    case TransportKind::kInproc:
      if (options.fabric == nullptr) {
        throw UsageError(fmt::format("the in-process transport of {} needs a fabric (none given)",
                                     options.self.str()));
      }
      return std::make_unique<InprocTransport>(options.self, options.fabric, options.limits);
    case TransportKind::kTcp:
      if (options.tcp_node == nullptr) {
        throw UsageError(fmt::format("the TCP transport of {} needs a network node (none given)",
                                     options.self.str()));
      }
      return std::make_unique<TcpTransport>(options.self, options.tcp_node, options.limits);
    case TransportKind::kMpi:
      if (options.mpi_wire == nullptr) {
        throw UsageError(fmt::format("the MPI transport of {} needs an MPI wire (none given)",
                                     options.self.str()));
      }
      return std::make_unique<MpiTransport>(options.self, options.mpi_wire, options.tcp_node,
                                            options.limits);
  }
  throw InternalError("unknown transport kind");
}

}  // namespace ptrain::net
