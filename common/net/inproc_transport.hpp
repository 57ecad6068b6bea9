// The in-process transport: roles running as threads of one process exchange the same encoded
// frames that TCP carries, through a shared fabric of mailboxes (one per endpoint). Used by
// `cluster.launch: threads` and by the tests. A send copies borrowed floats once into the frame
// (so flush() has nothing to wait for); a receive copies them once into the posted destination.
#pragma once

#include "common/net/transport.hpp"

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>

namespace ptrain::net {

// The mailboxes of every endpoint of the process. Mailboxes are created on first use (by a send
// or an attach), so roles may start in any order. close() wakes and stops every endpoint: it is
// how a job stops all its threads after one of them failed.
class InprocFabric {
 public:
  // Queues a frame for `to`. Throws TransportClosed when the fabric is closed.
  void deliver(const Endpoint& to, RawFrame frame);
  // Waits up to `timeout` for a frame for `self`. Throws TransportClosed when closed.
  std::optional<RawFrame> take(const Endpoint& self, std::chrono::milliseconds timeout);
  void close(const std::string& reason);
  bool closed() const;

 private:
  struct Mailbox {
    std::deque<RawFrame> frames;
    std::condition_variable cv;
  };
  Mailbox& mailbox(const Endpoint& e);  // with mu_ held

  mutable std::mutex mu_;
  std::map<Endpoint, std::unique_ptr<Mailbox>> boxes_;
  bool closed_ = false;
  std::string reason_;
};

class InprocTransport final : public Transport {
 public:
  InprocTransport(Endpoint self, std::shared_ptr<InprocFabric> fabric,
                  proto::DecoderLimits limits = {});
  // Closes the whole fabric (every endpoint of the process).
  void close() override;

 protected:
  void send_frame(const Endpoint& to, proto::OutFrame frame) override;
  std::optional<RawFrame> receive_frame(std::chrono::milliseconds timeout) override;

 private:
  std::shared_ptr<InprocFabric> fabric_;
};

}  // namespace ptrain::net
