#include "paramserver/param_server.hpp"

#include "common/error.hpp"

#include <omp.h>

#include <algorithm>

namespace ptrain {

void run_param_server(const ParamServerOptions& options, UpdateRule rule,
                      net::Transport& transport) {
  omp_set_num_threads(std::max(1, options.omp_threads));
  RequestHandler handler(options.server, std::move(rule));
  try {
    while (!handler.stopped()) {
      std::optional<net::Envelope> env = transport.receive(options.poll);
      if (!env) continue;
      for (auto& o : handler.handle(env->from, std::move(env->message))) {
        transport.send(o.to, o.message);
      }
    }
  } catch (const net::TransportClosed&) {
    throw;
  } catch (const std::exception& e) {
    const auto* err = dynamic_cast<const Error*>(&e);
    const auto code = static_cast<int32_t>(err ? err->code() : ExitCode::kInternal);
    try {
      transport.send(net::coordinator_endpoint(), proto::Failure{code, e.what()});
    } catch (const std::exception&) {
    }
    throw;
  }
}

}  // namespace ptrain
