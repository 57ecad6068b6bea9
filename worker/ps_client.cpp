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

void PsClient::set_error_feedback(bool on) {
  PTRAIN_ENFORCE(!on || encoding_ == proto::FloatEncoding::kBf16,
                 "error feedback needs bf16 pushes (fp32 pushes are not rounded)");
  residual_.assign(on ? static_cast<size_t>(total_) : 0, 0.0f);
}

PsClient::~PsClient() {
  if (pulls_.empty()) return;
  for (size_t k = 0; k < ranges_.size(); ++k) {
    transport_.cancel_receive(net::server_endpoint(static_cast<int32_t>(k)),
                              proto::MessageType::kPullReply);
  }
}

PsClient::Ticket PsClient::pull_newest(int64_t min_version, std::span<float> dst) {
  const Ticket t = pull(min_version, dst);
  pulls_.at(t).newest = true;
  return t;
}

PsClient::Ticket PsClient::pull(int64_t version, std::span<float> dst, int64_t piece) {
  PTRAIN_ENFORCE(static_cast<int64_t>(dst.size()) == total_, "pull into {} floats, need {}",
                 dst.size(), total_);
  PTRAIN_ENFORCE(piece >= 0, "pull pieces of {} floats", piece);
  if (piece % 2 != 0) ++piece;
  const Ticket t = next_ticket_++;
  PullState& st = pulls_[t] = PullState{version, dst, 0};
  const bool bf16 = encoding_ == proto::FloatEncoding::kBf16;
  size_t packed = 0;
  for (size_t k = 0; k < ranges_.size(); ++k) {
    const auto& r = ranges_[k];
    int64_t at = r.begin;
    do {  // an empty slice is still asked for once: its reply says which version the server holds
      const int64_t end = piece > 0 ? std::min(r.end, at + piece) : r.end;
      st.pieces.push_back(Piece{k, {at, end}, packed, next_request_++, false});
      packed += static_cast<size_t>(proto::encoded_size(encoding_, end - at));
      at = end;
    } while (at < r.end);
  }
  st.remaining = static_cast<int>(st.pieces.size());
  if (bf16) {
    if (!packed_pool_.empty()) {
      st.packed = std::move(packed_pool_.back());
      packed_pool_.pop_back();
    }
    st.packed.resize(packed);
  }
  for (size_t i = 0; i < st.pieces.size(); ++i) requests_[st.pieces[i].request] = {t, i};
  // Each server's first piece is posted before any request goes out: its reply's weights land in
  // dst (bf16: in the packed buffer, widened into dst on arrival) directly; each later piece is
  // posted when the one before it arrives (one posting per server), else it is copied.
  for (size_t k = 0; k < ranges_.size(); ++k) post_next(st, k);
  for (const Piece& p : st.pieces) {
    transport_.send(net::server_endpoint(static_cast<int32_t>(p.server)),
                    proto::PullRequest{p.request, version, p.range, encoding_});
  }
  return t;
}

std::span<float> PsClient::piece_destination(PullState& st, const Piece& p) {
  if (encoding_ == proto::FloatEncoding::kBf16) {
    return std::span<float>(st.packed).subspan(
        p.packed_at, static_cast<size_t>(proto::encoded_size(encoding_, p.range.size())));
  }
  return st.dst.subspan(static_cast<size_t>(p.range.begin), static_cast<size_t>(p.range.size()));
}

void PsClient::post_next(PullState& st, size_t server) {
  for (const Piece& p : st.pieces) {
    if (p.server != server || p.arrived) continue;
    transport_.post_receive(net::server_endpoint(static_cast<int32_t>(server)),
                            proto::MessageType::kPullReply, p.request, piece_destination(st, p));
    return;
  }
}

PsClient::Ticket PsClient::push(const PushMeta& meta, std::span<const float> grads) {
  return push_to(meta, grads, 0, ranges_.size());
}

PsClient::Ticket PsClient::push_to(const PushMeta& meta, std::span<const float> grads,
                                   size_t first, size_t last) {
  PTRAIN_ENFORCE(first <= last && last <= ranges_.size(), "push to servers [{}, {}) of {}", first,
                 last, ranges_.size());
  // Server by server: with bf16, server k's frame is on its way while k+1's slice is packed.
  for (size_t k = first; k < last; ++k) push_range(meta, grads, ranges_[k]);
  flush_pushes();  // the frames read `grads` (or push_packed_) until written
  return next_ticket_++;  // complete on return: nothing to wait for
}

int PsClient::push_range(const PushMeta& meta, std::span<const float> grads, proto::KeyRange r) {
  PTRAIN_ENFORCE(static_cast<int64_t>(grads.size()) == total_, "push of {} floats, need {}",
                 grads.size(), total_);
  PTRAIN_ENFORCE(0 <= r.begin && r.begin <= r.end && r.end <= total_,
                 "push of [{}, {}) outside [0, {})", r.begin, r.end, total_);
  const bool bf16 = encoding_ == proto::FloatEncoding::kBf16;
  if (bf16 && push_packed_.empty()) {
    // Room for every value of a step plus a pad half per piece; when full, flush and reuse.
    push_packed_.resize(packed_offsets_.back() + ranges_.size() + 1024);
  }
  int sent = 0;
  for (size_t k = 0; k < ranges_.size(); ++k) {
    const int64_t b = std::max(r.begin, ranges_[k].begin);
    const int64_t e = std::min(r.end, ranges_[k].end);
    // An empty shard at p gets its (empty) push with the range that holds position p
    // (r.begin <= p < r.end, or p = r.end = total), so that it hears from the worker once.
    const int64_t p = ranges_[k].begin;
    const bool empty_shard = ranges_[k].size() == 0 && r.begin <= p &&
                             (p < r.end || (p == r.end && p == total_ && r.size() > 0));
    if (b >= e && !empty_shard) continue;
    const auto slice = grads.subspan(static_cast<size_t>(b), static_cast<size_t>(e - b));
    proto::GradPush m;
    m.step = meta.step;
    m.membership_epoch = meta.membership_epoch;
    m.worker_id = meta.worker_id;
    m.tokens = meta.tokens;
    m.range = {b, e};
    m.encoding = encoding_;
    if (bf16) {
      const auto n = static_cast<size_t>(proto::encoded_size(encoding_, e - b));
      if (push_packed_used_ + n > push_packed_.size()) flush_pushes();
      const auto packed = std::span<float>(push_packed_).subspan(push_packed_used_, n);
      push_packed_used_ += n;
      if (residual_.empty()) {
        proto::pack_bf16(slice, packed);
      } else {
        proto::pack_bf16_feedback(
            slice, std::span<float>(residual_).subspan(static_cast<size_t>(b), slice.size()),
            packed);
      }
      m.grads = proto::FloatRange::borrow(packed);
    } else {
      m.grads = proto::FloatRange::borrow(slice);
    }
    transport_.send(net::server_endpoint(static_cast<int32_t>(k)), m);
    ++sent;
  }
  return sent;
}

void PsClient::flush_pushes() {
  transport_.flush(send_timeout_);
  push_packed_used_ = 0;
}

void PsClient::dispatch(net::Envelope&& env) {
  if (auto* reply = std::get_if<proto::PullReply>(&env.message)) {
    auto req = requests_.find(reply->request_id);
    if (req == requests_.end()) {
      throw Error(ExitCode::kIo, fmt::format("{}: pull reply for unknown request {} from {}",
                                             transport_.self().str(), reply->request_id,
                                             env.from.str()));
    }
    PullState& st = pulls_.at(req->second.first);
    Piece& piece = st.pieces[req->second.second];
    requests_.erase(req);
    st.oldest = std::min(st.oldest, reply->version);
    if (reply->version > st.version) {
      if (!st.newest) st.newer = true;  // late: the job moved on (wait() says so)
    } else if (reply->version != st.version) {
      throw Error(ExitCode::kIo,
                  fmt::format("{}: asked {} for weights version {}, it sent version {}",
                              transport_.self().str(), env.from.str(), st.version,
                              reply->version));
    }
    const auto& r = reply->range;
    if (env.from.role != net::Role::kServer || static_cast<size_t>(env.from.id) != piece.server ||
        r != piece.range) {
      throw Error(ExitCode::kIo,
                  fmt::format("{}: {} answered a pull of [{}, {}) from server {} with range [{}, {})",
                              transport_.self().str(), env.from.str(), piece.range.begin,
                              piece.range.end, piece.server, r.begin, r.end));
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
      // did not match it (a later piece that arrived before its posting, or a second pull in
      // flight to the same server) is copied.
      std::memcpy(to.data(), reply->weights.data(), static_cast<size_t>(r.size()) * sizeof(float));
    }
    piece.arrived = true;
    --st.remaining;
    post_next(st, piece.server);
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

bool PsClient::wait_range(Ticket ticket, int64_t begin, int64_t end,
                          std::chrono::milliseconds timeout) {
  auto it = pulls_.find(ticket);
  if (it == pulls_.end()) return true;  // a push, or already complete
  PullState& st = it->second;
  auto missing = [&] {
    for (const Piece& p : st.pieces) {
      if (!p.arrived && p.range.begin < end && begin < p.range.end) return true;
    }
    return false;
  };
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!st.newer && missing()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      throw Error(ExitCode::kIo,
                  fmt::format("{}: {} of {} pieces of weights version {} ([{}, {}) asked) did not "
                              "arrive within {} s",
                              transport_.self().str(), st.remaining, st.pieces.size(), st.version,
                              begin, end,
                              std::chrono::duration_cast<std::chrono::seconds>(timeout).count()));
    }
    auto env = transport_.receive(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now));
    if (env) dispatch(std::move(*env));
  }
  return !st.newer;
}

bool PsClient::wait(Ticket ticket, std::chrono::milliseconds timeout) {
  auto it = pulls_.find(ticket);
  if (it == pulls_.end()) return true;  // a push, or already complete
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (it->second.remaining > 0) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      throw Error(ExitCode::kIo,
                  fmt::format("{}: {} of {} pieces of weights version {} did not arrive within {} s",
                              transport_.self().str(), it->second.remaining,
                              it->second.pieces.size(), it->second.version,
                              std::chrono::duration_cast<std::chrono::seconds>(timeout).count()));
    }
    auto env = transport_.receive(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now));
    if (env) dispatch(std::move(*env));
  }
  const bool current = !it->second.newer;
  last_pulled_version_ = it->second.oldest;
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
