#include "worker/ps_client.hpp"

#include "common/error.hpp"
#include "common/proto/bf16.hpp"

#include <fmt/format.h>

#include <cstring>

namespace ptrain {

PsClient::PsClient(net::Transport& transport, std::vector<proto::KeyRange> server_ranges,
                   std::chrono::milliseconds send_timeout, proto::FloatEncoding encoding)
    : transport_(transport),
      ranges_(std::move(server_ranges)),
      send_timeout_(send_timeout),
      encoding_(encoding) {
  PTRAIN_ENFORCE(!ranges_.empty(), "a PsClient needs at least one server");
  int64_t at = 0;
  for (size_t k = 0; k < ranges_.size(); ++k) {
    PTRAIN_ENFORCE(ranges_[k].begin == at && ranges_[k].end >= at,
                   "server {} range [{}, {}) does not continue at {}", k, ranges_[k].begin,
                   ranges_[k].end, at);
    at = ranges_[k].end;
  }
  total_ = at;
  if (encoding_ == proto::FloatEncoding::kBf16) {
    packed_offsets_.push_back(0);
    for (const auto& r : ranges_) {
      packed_offsets_.push_back(packed_offsets_.back() +
                                static_cast<size_t>(proto::encoded_size(encoding_, r.size())));
    }
  }
}

PsClient::~PsClient() {
  if (pulls_.empty()) return;
  for (size_t k = 0; k < ranges_.size(); ++k) {
    transport_.cancel_receive(net::server_endpoint(static_cast<int32_t>(k)),
                              proto::MessageType::kPullReply);
  }
}

PsClient::Ticket PsClient::pull(int64_t version, std::span<float> dst) {
  PTRAIN_ENFORCE(static_cast<int64_t>(dst.size()) == total_, "pull into {} floats, need {}",
                 dst.size(), total_);
  const Ticket t = next_ticket_++;
  PullState& st = pulls_[t] = PullState{version, dst, static_cast<int>(ranges_.size())};
  const bool bf16 = encoding_ == proto::FloatEncoding::kBf16;
  if (bf16) {
    if (!packed_pool_.empty()) {
      st.packed = std::move(packed_pool_.back());
      packed_pool_.pop_back();
    }
    st.packed.resize(packed_offsets_.back());
  }
  for (size_t k = 0; k < ranges_.size(); ++k) {
    const net::Endpoint server = net::server_endpoint(static_cast<int32_t>(k));
    const auto& r = ranges_[k];
    // Posted before the request goes out: the reply's weights land in dst (bf16: in the packed
    // buffer, widened into dst on arrival) directly.
    const std::span<float> to =
        bf16 ? std::span<float>(st.packed).subspan(packed_offsets_[k],
                                                   packed_offsets_[k + 1] - packed_offsets_[k])
             : dst.subspan(static_cast<size_t>(r.begin), static_cast<size_t>(r.size()));
    transport_.post_receive(server, proto::MessageType::kPullReply, t, to);
    transport_.send(server, proto::PullRequest{t, version, r, encoding_});
  }
  return t;
}

PsClient::Ticket PsClient::push(const PushMeta& meta, std::span<const float> grads) {
  return push_to(meta, grads, 0, ranges_.size());
}

PsClient::Ticket PsClient::push_to(const PushMeta& meta, std::span<const float> grads,
                                   size_t first, size_t last) {
  PTRAIN_ENFORCE(static_cast<int64_t>(grads.size()) == total_, "push of {} floats, need {}",
                 grads.size(), total_);
  PTRAIN_ENFORCE(first <= last && last <= ranges_.size(), "push to servers [{}, {}) of {}", first,
                 last, ranges_.size());
  const bool bf16 = encoding_ == proto::FloatEncoding::kBf16;
  if (bf16) push_packed_.resize(packed_offsets_.back());  // once: the size never changes
  for (size_t k = first; k < last; ++k) {
    const auto& r = ranges_[k];
    const auto slice = grads.subspan(static_cast<size_t>(r.begin), static_cast<size_t>(r.size()));
    proto::GradPush m;
    m.step = meta.step;
    m.membership_epoch = meta.membership_epoch;
    m.worker_id = meta.worker_id;
    m.tokens = meta.tokens;
    m.range = r;
    m.encoding = encoding_;
    if (bf16) {
      // Rounded server by server: server k's frame is on its way while k+1's slice is packed.
      const auto packed = std::span<float>(push_packed_)
                              .subspan(packed_offsets_[k], packed_offsets_[k + 1] - packed_offsets_[k]);
      proto::pack_bf16(slice, packed);
      m.grads = proto::FloatRange::borrow(packed);
    } else {
      m.grads = proto::FloatRange::borrow(slice);
    }
    transport_.send(net::server_endpoint(static_cast<int32_t>(k)), m);
  }
  transport_.flush(send_timeout_);  // the frames read `grads` (or push_packed_) until written
  return next_ticket_++;  // complete on return: nothing to wait for
}

void PsClient::dispatch(net::Envelope&& env) {
  if (auto* reply = std::get_if<proto::PullReply>(&env.message)) {
    auto it = pulls_.find(reply->request_id);
    if (it == pulls_.end()) {
      throw Error(ExitCode::kIo, fmt::format("{}: pull reply for unknown request {} from {}",
                                             transport_.self().str(), reply->request_id,
                                             env.from.str()));
    }
    PullState& st = it->second;
    if (reply->version > st.version) {
      st.newer = true;  // late: the job moved on (wait() says so)
    } else if (reply->version != st.version) {
      throw Error(ExitCode::kIo,
                  fmt::format("{}: asked {} for weights version {}, it sent version {}",
                              transport_.self().str(), env.from.str(), st.version,
                              reply->version));
    }
    const auto& r = reply->range;
    const auto k = static_cast<size_t>(env.from.id);
    if (env.from.role != net::Role::kServer || k >= ranges_.size() || r != ranges_[k]) {
      throw Error(ExitCode::kIo,
                  fmt::format("{}: {} answered a pull with range [{}, {}), not its own slice",
                              transport_.self().str(), env.from.str(), r.begin, r.end));
    }
    if (reply->encoding != encoding_) {
      throw Error(ExitCode::kIo,
                  fmt::format("{}: asked {} for weights in {}, it sent {}", transport_.self().str(),
                              env.from.str(), proto::encoding_name(encoding_),
                              proto::encoding_name(reply->encoding)));
    }
    PTRAIN_ENFORCE(r.begin >= 0 && r.end <= total_ &&
                       static_cast<int64_t>(reply->weights.size()) ==
                           proto::encoded_size(encoding_, r.size()),
                   "pull reply range [{}, {}) with {} elements in {}", r.begin, r.end,
                   reply->weights.size(), proto::encoding_name(encoding_));
    const auto to = st.dst.subspan(static_cast<size_t>(r.begin), static_cast<size_t>(r.size()));
    if (encoding_ == proto::FloatEncoding::kBf16) {
      proto::unpack_bf16(reply->weights, to);
    } else if (r.size() > 0 && reply->weights.data() != to.data()) {
      // Normally the transport read the weights into dst already (the posting); a reply that
      // did not match it (e.g. a second pull in flight to the same server) is copied.
      std::memcpy(st.dst.data() + r.begin, reply->weights.data(),
                  static_cast<size_t>(r.size()) * sizeof(float));
    }
    --st.remaining;
    return;
  }
  // A server refusing a request, or any peer's last words (e.g. the coordinator or a server
  // dropped this worker after cluster.peer_timeout_s of silence): the worker cannot go on.
  if (auto* f = std::get_if<proto::Failure>(&env.message);
      f && env.from.role != net::Role::kWorker) {
    throw Error(proto::failure_code(*f), fmt::format("{}: {}", env.from.str(), f->message));
  }
  others_.push_back(std::move(env));
}

bool PsClient::wait(Ticket ticket, std::chrono::milliseconds timeout) {
  auto it = pulls_.find(ticket);
  if (it == pulls_.end()) return true;  // a push, or already complete
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (it->second.remaining > 0) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      throw Error(ExitCode::kIo,
                  fmt::format("{}: {} of {} servers did not send weights version {} within {} s",
                              transport_.self().str(), it->second.remaining, ranges_.size(),
                              it->second.version,
                              std::chrono::duration_cast<std::chrono::seconds>(timeout).count()));
    }
    auto env = transport_.receive(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now));
    if (env) dispatch(std::move(*env));
  }
  const bool current = !it->second.newer;
  if (!it->second.packed.empty()) packed_pool_.push_back(std::move(it->second.packed));
  pulls_.erase(it);
  return current;
}

std::optional<net::Envelope> PsClient::next_other(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (others_.empty()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return std::nullopt;
    auto env = transport_.receive(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now));
    if (env) dispatch(std::move(*env));
  }
  net::Envelope e = std::move(others_.front());
  others_.pop_front();
  return e;
}

}  // namespace ptrain
