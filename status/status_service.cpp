#include "status/status_service.hpp"

#include "common/net/asio.hpp"  // first: includes <utility> before Asio

#include <spdlog/spdlog.h>

#include <cmath>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

namespace ptrain {

struct StatusService::Impl {
  mutable std::mutex mu;
  JobStatus status;
  net::asio::io_context io{1};
  std::optional<StatusServer> server;  // destroyed before `io`
  std::thread thread;
  std::string address;
};

StatusService::StatusService(const std::string& host, uint16_t port, const std::string& addr_file)
    : impl_(std::make_unique<Impl>()) {
  impl_->status.loss = std::numeric_limits<double>::quiet_NaN();
  Impl* self = impl_.get();
  impl_->server.emplace(impl_->io, host, port, [self] {
    std::lock_guard lock(self->mu);
    return self->status;
  });
  impl_->address = impl_->server->advertised_endpoint();
  impl_->thread = std::thread([self] {
    try {
      self->io.run();
    } catch (const std::exception& e) {
      spdlog::warn("status endpoint stopped: {}", e.what());
    }
  });
  if (!addr_file.empty()) {
    try {
      write_addr_file(addr_file, impl_->server->local_endpoint());
    } catch (...) {
      impl_->server->stop();
      impl_->io.stop();
      impl_->thread.join();
      throw;
    }
  }
  spdlog::info("status endpoint on http://{}/ (/metrics, /status)", impl_->address);
}

StatusService::~StatusService() {
  impl_->server->stop();
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->server.reset();
}

void StatusService::update(const std::function<void(JobStatus&)>& change) {
  std::lock_guard lock(impl_->mu);
  change(impl_->status);
}

JobStatus StatusService::snapshot() const {
  std::lock_guard lock(impl_->mu);
  return impl_->status;
}

std::string StatusService::address() const { return impl_->address; }

}  // namespace ptrain
