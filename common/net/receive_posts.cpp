#include "common/net/receive_posts.hpp"

namespace ptrain::net {

void ReceivePosts::wait_unclaimed(std::unique_lock<std::mutex>& lock, const Key& key) {
  cv_.wait(lock, [&] { return closed_ || claimed_.count(key) == 0; });
}

void ReceivePosts::post(const Endpoint& from, proto::MessageType type, uint64_t match,
                        std::span<float> dst) {
  std::unique_lock lock(mu_);
  const Key key{from, type};
  wait_unclaimed(lock, key);
  posts_[key] = Post{match, dst};
}

void ReceivePosts::cancel(const Endpoint& from, proto::MessageType type) {
  std::unique_lock lock(mu_);
  const Key key{from, type};
  posts_.erase(key);
  wait_unclaimed(lock, key);
}

ReceivePosts::Claimed ReceivePosts::claim(const Endpoint& from, proto::MessageType type,
                                          uint64_t match, size_t count) {
  std::lock_guard lock(mu_);
  const Key key{from, type};
  auto it = posts_.find(key);
  if (it == posts_.end() || it->second.match != match || it->second.dst.size() != count) {
    return {};
  }
  Claimed c;
  c.dst = it->second.dst;
  posts_.erase(it);
  claimed_.insert(key);
  c.hold = std::shared_ptr<void>(nullptr, [self = shared_from_this(), key](void*) {
    std::lock_guard l(self->mu_);
    self->claimed_.erase(key);
    self->cv_.notify_all();
  });
  return c;
}

void ReceivePosts::close() {
  std::lock_guard lock(mu_);
  closed_ = true;
  cv_.notify_all();
}

}  // namespace ptrain::net
