#include "launch/worker_process.hpp"

#include "common/config/job_from_welcome.hpp"
#include "launch/threads_job.hpp"
#include "common/error.hpp"
#include "common/net/cluster_join.hpp"
#include "common/tensor/param_layout.hpp"
#include "worker/worker.hpp"

#include <omp.h>
#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <thread>
#include <spdlog/spdlog.h>

namespace ptrain {

namespace {

// The first Failure a server or the coordinator sent that is still queued or arrives within a
// second ("server 0: dropped worker 3: nothing received from it for 5 s ..."): a woken process's
// I/O thread may still be reading the sockets its main thread found closed.
std::optional<std::string> last_words(net::Transport& transport) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    try {
      std::optional<net::Envelope> env = transport.receive(left);
      if (!env) return std::nullopt;
      if (const auto* f = std::get_if<proto::Failure>(&env->message)) {
        return fmt::format("{}: {}", env->from.str(), f->message);
      }
    } catch (const net::TransportClosed&) {
      return std::nullopt;
    } catch (const Error&) {
      // a loss or an undecodable frame queued before them: look further
    }
  }
}

}  // namespace

void run_worker_process(const WorkerProcessOptions& o, net::Secret secret) {
  auto node = std::make_shared<net::TcpNode>(std::move(secret),
                                             net::member_node_options(net::Role::kWorker));
  net::Joined j = net::join_cluster(node, {o.coordinator, net::Role::kWorker, "", o.member_name});
  const JobFromWelcome job = job_from_welcome(j.welcome);
  node->set_liveness(job.heartbeat, job.peer_timeout);
  const Config& cfg = job.config;
  const ParamLayout layout(model_dims(cfg.model, job.tokenizer->vocab_size()));
  const int32_t id = j.welcome.id;
  const auto S = cfg.cluster.servers;
  if (static_cast<int64_t>(j.server_addresses.size()) != S) {
    throw proto::ProtocolError(fmt::format("the coordinator sent {} server addresses for {} servers",
                                           j.server_addresses.size(), S));
  }
  for (int32_t k = 0; k < S && !o.data_plane; ++k) {
    node->connect(j.server_addresses[static_cast<size_t>(k)], net::server_endpoint(k),
                  proto::PeerHello{static_cast<uint8_t>(net::Role::kWorker), id,
                                   j.welcome.membership_epoch},
                  std::chrono::milliseconds(30'000));
  }
  std::vector<proto::KeyRange> ranges;
  for (const auto& [b, e] : layout.shard_ranges(S)) ranges.push_back({b, e});
  WorkerOptions wo;
  wo.worker_id = id;
  wo.train_path = cfg.data.train;
  wo.val_path = cfg.data.val;
  wo.micro_batch = cfg.train.micro_batch;
  wo.seed = cfg.run.seed;
  wo.threads = o.threads > 0 ? o.threads : threads_per_role(cfg.run.threads, 1);
  wo.device = o.device.empty() ? device_type_name(cfg.device.type) : o.device;
  wo.device_config = cfg.device;
  wo.leave_requested = o.leave_requested;
  wo.fault_phase = o.fault_phase;
  wo.fault_step = o.fault_step;
  wo.wire_encoding = wire_encoding(cfg.cluster);
  wo.wire_error_feedback = cfg.cluster.wire_error_feedback;
  wo.local = local_steps_options(cfg);
  wo.leased = is_async_sync(cfg.cluster.sync);
  wo.bucket_mb = cfg.cluster.bucket_mb;
  wo.fault_delay_s = o.fault_delay_s;
  spdlog::info("worker {}: connected to {} server(s), device {}, {} thread(s)", id, S, wo.device,
               wo.threads);
  const std::unique_ptr<net::Transport> transport =
      o.data_plane ? o.data_plane(net::worker_endpoint(id), node)
                   : net::make_transport(net::TransportOptions::tcp(net::worker_endpoint(id), node));
  try {
    run_worker(wo, layout, std::move(ranges), *transport);
  } catch (const net::PeerLost& e) {
    // A connection closed under us. A peer that dropped this worker for its silence (it was
    // stopped past cluster.peer_timeout_s) said why before closing; its words may still wait
    // behind the failed send or the loss, and they are the answer.
    const std::optional<std::string> why = last_words(*transport);
    node->close();
    if (why) {
      throw net::PeerLost(fmt::format("worker {}: {}; `ptrain worker` started again joins as a "
                                      "new worker",
                                      id, *why));
    }
    throw net::PeerLost(fmt::format(
        "worker {}: {}; the coordinator dropped this worker (silent longer than "
        "cluster.peer_timeout_s = {} s) or stopped; `ptrain worker` started again joins as a new "
        "worker",
        id, e.what(), cfg.cluster.peer_timeout_s));
  } catch (...) {
    node->close();
    throw;
  }
  node->close();
  const bool left = o.leave_requested && o.leave_requested();
  spdlog::info("worker {}: {}", id, left ? "left the job" : "stopped");
}

namespace {

// RUN_DIR/coordinator.addr's line, or "" while there is none.
std::string try_read_addr(const std::string& run_dir) {
  std::ifstream in((std::filesystem::path(run_dir) / "coordinator.addr").string());
  std::string addr;
  if (in) std::getline(in, addr);
  return addr;
}

// The address once the file holds one other than `old` (any, for ""), waiting up to `limit`.
std::string wait_for_addr(const std::string& run_dir, const std::string& old,
                          std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    std::string addr = try_read_addr(run_dir);
    if (!addr.empty() && addr != old) return addr;
    if (std::chrono::steady_clock::now() >= until) return "";
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

void run_worker_in_run_dir(const WorkerProcessOptions& options, const std::string& run_dir,
                           const net::Secret& secret) {
  std::string addr = wait_for_addr(run_dir, "", std::chrono::seconds(60));
  if (addr.empty()) {
    throw IoError(fmt::format("--run-dir: no coordinator address in {}/coordinator.addr within 60 s "
                              "(is the job running, and is RUN_DIR its run.dir?)",
                              run_dir));
  }
  for (;;) {
    WorkerProcessOptions o = options;
    o.coordinator = addr;
    std::exception_ptr failure;
    try {
      run_worker_process(o, secret);
    } catch (const Error&) {
      // The coordinator or a server lost (PeerLost), or an error a restart explains: decided
      // below by what coordinator.addr does.
      failure = std::current_exception();
    }
    if (options.leave_requested && options.leave_requested()) {
      if (failure) std::rethrow_exception(failure);
      return;
    }
    // The job ended (a Shutdown) or the coordinator was lost. A restart removes
    // coordinator.addr at once and writes the new one within seconds; the same address after 5 s
    // means the job is over, or this worker was dropped from a job that goes on.
    const auto first = std::chrono::steady_clock::now();
    std::string now = addr;
    while (std::chrono::steady_clock::now() - first < std::chrono::seconds(5)) {
      now = try_read_addr(run_dir);
      if (now != addr) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (now == addr) {
      if (failure) std::rethrow_exception(failure);
      return;
    }
    now = wait_for_addr(run_dir, addr, std::chrono::seconds(60));
    if (now.empty()) {
      if (failure) std::rethrow_exception(failure);
      return;
    }
    spdlog::warn("the job restarted (coordinator now at {}): joining it again as a new worker", now);
    addr = now;
  }
}

}  // namespace ptrain
