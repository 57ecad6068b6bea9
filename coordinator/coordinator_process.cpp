#include "coordinator/coordinator_process.hpp"

#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/net/host_port.hpp"
#include "common/net/tcp_transport.hpp"
#include "common/proto/codec.hpp"
#include "common/tensor/param_layout.hpp"
#include "common/util/fs.hpp"
#include "coordinator/status_http.hpp"
#include "coordinator/status_service.hpp"
#include "coordinator/threads_job.hpp"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <mutex>

namespace ptrain {
namespace {

// Ids in arrival order; refuses roles beyond the job's size. Called on the network thread.
class Registrar {
 public:
  Registrar(int64_t servers, int64_t workers) : S_(servers), W_(workers) {}

  net::Identity identify(const proto::Message& first, const std::string& peer) {
    const auto* reg = std::get_if<proto::Register>(&first);
    if (reg == nullptr) {
      throw proto::ProtocolError(fmt::format("the first frame must be Register, not {}",
                                             proto::type_name(proto::type_of(first))));
    }
    std::lock_guard lock(mu_);
    if (reg->role == static_cast<uint8_t>(net::Role::kServer)) {
      if (next_server_ >= S_) {
        throw ConfigError(fmt::format("the job already has its {} server(s) (cluster.servers)", S_));
      }
      const net::HostPort listen = net::parse_host_port(
          reg->listen_address, "the listen address in a server's Register",
          {.allow_empty_host = true, .allow_port_zero = false});
      // ":PORT": the host we see the server as.
      const std::string addr = net::format_host_port(
          listen.host.empty() ? net::parse_host_port(peer, "the server's address").host
                              : listen.host,
          listen.port);
      server_addrs_.push_back(addr);
      return {net::server_endpoint(next_server_++), true};
    }
    if (reg->role == static_cast<uint8_t>(net::Role::kWorker)) {
      if (next_worker_ >= W_) {
        throw ConfigError(fmt::format("the job already has its {} worker(s) (cluster.workers)", W_));
      }
      return {net::worker_endpoint(next_worker_++), true};
    }
    throw proto::ProtocolError(fmt::format("Register with an invalid role {}", reg->role));
  }

  std::vector<std::string> server_addresses() const {
    std::lock_guard lock(mu_);
    return server_addrs_;
  }

 private:
  int64_t S_, W_;
  mutable std::mutex mu_;
  int32_t next_server_ = 0;
  int32_t next_worker_ = 0;
  std::vector<std::string> server_addrs_;
};

std::chrono::milliseconds ms(double s) {
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

}  // namespace

RunSummary run_coordinator_process(const CoordinatorProcessOptions& o, net::Secret secret) {
  const Config& cfg = o.config;
  if (cfg.cluster.sync != SyncMode::kBsp) {
    throw NotImplementedError("cluster.sync: only bsp is implemented yet");
  }
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(cfg.data.tokenizer);
  const ParamLayout layout(model_dims(cfg.model, tokenizer->vocab_size()));
  std::vector<proto::KeyRange> ranges;
  for (const auto& [b, e] : layout.shard_ranges(cfg.cluster.servers)) ranges.push_back({b, e});
  make_dirs(cfg.run.dir);
  const int64_t S = cfg.cluster.servers;
  const int64_t W = cfg.cluster.workers;

  net::TcpNodeOptions no;
  no.self_role = net::Role::kCoordinator;
  no.heartbeat = ms(cfg.cluster.heartbeat_s);
  no.peer_timeout = ms(cfg.cluster.peer_timeout_s);
  auto node = std::make_shared<net::TcpNode>(std::move(secret), no);
  auto registrar = std::make_shared<Registrar>(S, W);
  const net::HostPort listen = net::parse_host_port(o.listen, "--listen");
  const std::string& host = listen.host;
  const std::string addr = node->listen(
      host, listen.port,
      [registrar](const proto::Message& m, const std::string& peer) {
        return registrar->identify(m, peer);
      });
  write_addr_file((std::filesystem::path(cfg.run.dir) / "coordinator.addr").string(), addr);
  // The status endpoint on the same host (its own small io_context thread, as in threads mode).
  StatusService status(host, static_cast<uint16_t>(cfg.status.port),
                       (std::filesystem::path(cfg.run.dir) / "status.addr").string());
  spdlog::info("coordinator listening on {}; waiting for {} server(s) and {} worker(s)", addr, S, W);

  const std::unique_ptr<net::Transport> transport_ptr =
      net::make_transport(net::TransportOptions::tcp(net::coordinator_endpoint(), node));
  net::Transport& transport = *transport_ptr;
  int64_t registered = 0;
  while (registered < S + W) {
    if (o.stop_requested && o.stop_requested()) {
      throw Error(ExitCode::kInterrupted,
                  fmt::format("stopped before the job started ({} of {} roles registered)",
                              registered, S + W));
    }
    std::optional<net::Envelope> env = transport.receive(std::chrono::milliseconds(200));
    if (!env) continue;
    if (std::holds_alternative<proto::Register>(env->message)) {
      ++registered;
      spdlog::info("{} registered ({} of {})", env->from.str(), registered, S + W);
    } else if (auto* f = std::get_if<proto::Failure>(&env->message)) {
      throw Error(proto::failure_code(*f), fmt::format("{} failed: {}", env->from.str(), f->message));
    }
  }
  std::string addrs;
  for (const auto& a : registrar->server_addresses()) addrs += a + "\n";
  proto::Welcome w;
  w.membership_epoch = 0;
  w.config_yaml = cfg.to_yaml();
  w.layout_hash = layout.hash();
  w.tokenizer_json = tokenizer->to_json();
  w.server_addresses = addrs;
  for (int32_t k = 0; k < S; ++k) {
    w.id = k;
    transport.send(net::server_endpoint(k), w);
  }
  for (int32_t k = 0; k < W; ++k) {
    w.id = k;
    transport.send(net::worker_endpoint(k), w);
  }
  spdlog::info("job started: {} server(s), {} worker(s), membership epoch 0", S, W);

  CoordinatorOptions co;
  co.config = cfg;
  co.server_ranges = ranges;
  co.tokenizer_json = tokenizer->to_json();
  co.threads = resolve_threads(cfg.run.threads);
  if (o.stop_requested) co.stop_requested = [f = o.stop_requested](int64_t) { return f(); };
  co.status = &status;
  co.member_host = [&node](const net::Endpoint& e) -> std::string {
    if (e.role == net::Role::kCoordinator) return "";
    const std::string a = node->address_of(e);
    return a.empty() ? a : net::parse_host_port(a, e.str()).host;
  };
  RunSummary summary;
  try {
    summary = run_coordinator(co, layout, transport);
  } catch (...) {
    node->close();
    throw;
  }
  node->close();
  return summary;
}

}  // namespace ptrain
