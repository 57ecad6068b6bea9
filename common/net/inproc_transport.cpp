#include "common/net/inproc_transport.hpp"

#include <fmt/format.h>

namespace ptrain::net {

InprocFabric::Mailbox& InprocFabric::mailbox(const Endpoint& e) {
  auto& box = boxes_[e];
  if (!box) box = std::make_unique<Mailbox>();
  return *box;
}

void InprocFabric::deliver(const Endpoint& to, RawFrame frame) {
  std::lock_guard lock(mu_);
  if (closed_) {
    throw TransportClosed(fmt::format("cannot send to {}: the job is stopping ({})", to.str(),
                                      reason_));
  }
  Mailbox& box = mailbox(to);
  box.frames.push_back(std::move(frame));
  box.cv.notify_one();
}

std::optional<RawFrame> InprocFabric::take(const Endpoint& self,
                                           std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  Mailbox& box = mailbox(self);
  const bool ready = box.cv.wait_for(lock, timeout,
                                     [&] { return closed_ || !box.frames.empty(); });
  if (closed_) {
    throw TransportClosed(fmt::format("{}: the job is stopping ({})", self.str(), reason_));
  }
  if (!ready) return std::nullopt;
  RawFrame f = std::move(box.frames.front());
  box.frames.pop_front();
  return f;
}

void InprocFabric::close(const std::string& reason) {
  std::lock_guard lock(mu_);
  if (closed_) return;
  closed_ = true;
  reason_ = reason;
  for (auto& [e, box] : boxes_) box->cv.notify_all();
}

bool InprocFabric::closed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

InprocTransport::InprocTransport(Endpoint self, std::shared_ptr<InprocFabric> fabric,
                                 proto::DecoderLimits limits)
    : Transport(self, limits), fabric_(std::move(fabric)) {}

void InprocTransport::close() { fabric_->close(fmt::format("closed by {}", self().str())); }

void InprocTransport::send_frame(const Endpoint& to, proto::OutFrame frame) {
  // The one copy of borrowed floats: the sender may reuse them once send() returns.
  fabric_->deliver(to, RawFrame{self(), proto::flatten(frame)});
}

std::optional<RawFrame> InprocTransport::receive_frame(std::chrono::milliseconds timeout) {
  return fabric_->take(self(), timeout);
}

}  // namespace ptrain::net
