#include "launch/coordinator_process.hpp"

#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/net/host_port.hpp"
#include "common/net/tcp_transport.hpp"
#include "common/proto/codec.hpp"
#include "common/tensor/param_layout.hpp"
#include "common/util/fs.hpp"
#include "common/util/run_lock.hpp"
#include "coordinator/registrar.hpp"
#include "status/status_http.hpp"
#include "status/status_service.hpp"

#include <spdlog/spdlog.h>

#include <filesystem>

namespace ptrain {
namespace {

std::chrono::milliseconds ms(double s) {
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

}  // namespace

void log_run_summary(const RunSummary& s) {
  if (s.final_step > s.start_step) {
    spdlog::info("done: step {} | loss {:.4f} | {:.0f} tok/s | {:.3f} s/step | {}", s.final_step,
                 s.final_loss, s.tokens_per_s, s.mean_step_s,
                 s.last_checkpoint.empty() ? "no checkpoint" : s.last_checkpoint);
  }
  if (s.interrupted) {
    spdlog::info("interrupted at step {}; the checkpoint {} resumes it", s.final_step,
                 s.last_checkpoint);
  }
}

RunSummary run_coordinator_process(const CoordinatorProcessOptions& o, net::Secret secret) {
  const Config& cfg = o.config;
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(cfg.data.tokenizer);
  const ParamLayout layout(model_dims(cfg.model, tokenizer->vocab_size()));
  // One job per run directory: the lock of the `ptrain run` that spawned us (joined), or our own.
  const RunLock run_lock = RunLock::acquire_or_join_parent(cfg.run.dir);
  std::vector<proto::KeyRange> ranges;
  for (const auto& [b, e] : layout.shard_ranges(cfg.cluster.servers)) ranges.push_back({b, e});
  make_dirs(cfg.run.dir);
  const int64_t S = cfg.cluster.servers;
  const int64_t W = cfg.cluster.workers;

  // Who is in the job: registrations join it, dropped connections are losses (with the node's
  // cause). The node never stops the coordinator on a loss itself (peer_lost false): the
  // coordinator drains the membership's events and decides.
  auto registrar = std::make_shared<Registrar>(S, W, cfg.cluster.max_workers);
  net::TcpNodeOptions no;
  no.self_role = net::Role::kCoordinator;
  no.heartbeat = ms(cfg.cluster.heartbeat_s);
  no.peer_timeout = ms(cfg.cluster.peer_timeout_s);
  no.peer_lost = [registrar](const net::Endpoint& e, const std::string& cause) {
    return registrar->connection_lost(e, cause);
  };
  auto node = std::make_shared<net::TcpNode>(std::move(secret), no);
  const net::HostPort listen = net::parse_host_port(o.listen, "--listen");
  const std::string& host = listen.host;
  const std::string addr = node->listen(
      host, listen.port,
      [registrar](const proto::Message& m, const std::string& peer) {
        return registrar->identify(m, peer);
      });
  write_coordinator_addr(cfg.run.dir, addr, run_lock.job_id());
  if (o.on_listening) o.on_listening(addr);
  // The status endpoint on the same host (its own small io_context thread, as in threads mode).
  StatusService status(host, static_cast<uint16_t>(cfg.status.port),
                       (std::filesystem::path(cfg.run.dir) / "status.addr").string());
  spdlog::info("coordinator listening on {}; waiting for {} server(s) and {} worker(s)", addr, S, W);

  const std::unique_ptr<net::Transport> transport_ptr =
      net::make_transport(net::TransportOptions::tcp(net::coordinator_endpoint(), node));
  net::Transport& transport = *transport_ptr;
  int64_t registered = 0;
  std::vector<net::Member> starters;  // welcomed below; later joiners are welcomed by the job
  // Every server and at least cluster.workers workers, counted apart: more workers may register
  // first (`ptrain worker --run-dir` joining a restarted job) and must not stand in for a server
  // that is still starting.
  int64_t servers_in = 0, workers_in = 0;
  while (servers_in < cfg.cluster.servers || workers_in < cfg.cluster.workers) {
    if (o.stop_requested && o.stop_requested()) {
      throw Error(ExitCode::kInterrupted,
                  fmt::format("stopped before the job started ({} of {} roles registered)",
                              registered, registrar->expected()));
    }
    // Register frames arrive here too (their registration is already in the membership).
    if (std::optional<net::Envelope> env = transport.receive(std::chrono::milliseconds(200))) {
      if (auto* f = std::get_if<proto::Failure>(&env->message)) {
        throw Error(proto::failure_code(*f),
                    fmt::format("{} failed: {}", env->from.str(), f->message));
      }
      continue;  // a member's Failure, queued before its loss, is seen first
    }
    for (const net::MembershipEvent& ev : registrar->take_events()) {
      if (ev.change != net::MembershipChange::kJoined) {
        throw net::PeerLost(fmt::format("{} before the job started", ev.reason));
      }
      ++registered;
      ++(ev.member.endpoint.role == net::Role::kServer ? servers_in : workers_in);
      starters.push_back(ev.member);
      spdlog::info("{} registered{} ({} of {})", ev.member.label(),
                   ev.member.name.empty() ? "" : fmt::format(" from host {}", ev.member.name),
                   registered, registrar->expected());
    }
  }
  registrar->start();
  std::string addrs;
  for (const auto& a : registrar->server_addresses()) addrs += a + "\n";
  proto::Welcome w;
  w.membership_epoch = registrar->epoch();
  w.config_yaml = cfg.to_yaml();
  w.layout_hash = layout.hash();
  w.tokenizer_json = tokenizer->to_json();
  w.server_addresses = addrs;
  for (const net::Member& m : starters) {
    w.id = m.endpoint.id;
    transport.send(m.endpoint, w);
  }
  spdlog::info("job started: {} server(s), {} worker(s), membership epoch {}", S, W,
               registrar->epoch());

  CoordinatorOptions co;
  co.config = cfg;
  co.server_ranges = ranges;
  co.tokenizer_json = tokenizer->to_json();
  if (o.stop_requested) co.stop_requested = [f = o.stop_requested](int64_t) { return f(); };
  co.status = &status;
  // A worker joining the running job gets the same Welcome, with its id and the epoch now.
  co.welcome = [&transport, &registrar, w](const net::Member& m) mutable {
    w.id = m.endpoint.id;
    w.membership_epoch = registrar->epoch();
    try {
      transport.send(m.endpoint, w);
    } catch (const net::PeerLost& e) {
      registrar->report_lost(m.endpoint, e.what());
    }
  };
  co.allow_config_change = o.allow_config_change;
  RunSummary summary;
  try {
    summary = run_coordinator(co, layout, transport, *registrar);
  } catch (...) {
    node->close();
    throw;
  }
  node->close();
  return summary;
}

}  // namespace ptrain
