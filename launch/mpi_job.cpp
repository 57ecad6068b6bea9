#include "launch/mpi_job.hpp"

#include "common/error.hpp"
#include "common/log.hpp"
#include "common/net/auth.hpp"
#include "common/net/mpi_transport.hpp"
#include "common/util/fs.hpp"
#include "launch/coordinator_process.hpp"
#include "launch/server_process.hpp"
#include "launch/worker_process.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <filesystem>
#include <thread>

namespace ptrain {
namespace {

namespace fs = std::filesystem;

const char* role_of_rank(int rank, int64_t servers) {
  if (rank == 0) return "coordinator";
  return rank <= servers ? "server" : "worker";
}

// Every line of this rank also goes to its own file; the console lines say which rank wrote them
// (mpirun and srun interleave the ranks' stderr).
void log_to_rank_file(const std::string& run_dir, int rank, const char* role,
                      const MpiJobOptions& o) {
  const fs::path dir = fs::path(run_dir) / "logs";
  make_dirs(dir.string());
  std::string name = fmt::format("rank-{}-{}", rank, role);
  if (!o.slurm_job_id.empty()) {
    name += fmt::format(".job-{}.task-{}", o.slurm_job_id,
                        o.slurm_task_id.empty() ? std::to_string(rank) : o.slurm_task_id);
  }
  // Appended: a requeued job (same SLURM job id) keeps the log of its earlier runs.
  auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>((dir / (name + ".log")).string(),
                                                                 /*truncate=*/false);
  spdlog::default_logger()->sinks().push_back(file);
  spdlog::default_logger()->set_pattern(log_pattern(fmt::format("[rank {} {}]", rank, role)));
  spdlog::flush_on(spdlog::level::info);
}

// The data plane of a server or worker over MPI: every member (ranks 1..P-1, on `members`)
// learns which rank each role id landed on (ids come from the coordinator's registration order),
// then one wire carries their frames.
std::unique_ptr<net::Transport> mpi_data_plane(const net::MpiComm& members, const net::Endpoint& self,
                                               std::shared_ptr<net::TcpNode> control) {
  const std::vector<std::string> all =
      members.allgather(fmt::format("{} {}", static_cast<int>(self.role), self.id));
  std::map<net::Endpoint, int> ranks;
  for (size_t r = 0; r < all.size(); ++r) {
    int role = 0, id = 0;
    if (std::sscanf(all[r].c_str(), "%d %d", &role, &id) != 2) {
      throw InternalError(fmt::format("MPI rank {} announced '{}' as its role", r + 1, all[r]));
    }
    ranks[net::Endpoint{static_cast<net::Role>(role), id}] = static_cast<int>(r);
  }
  auto wire = std::make_shared<net::MpiWire>(members.dup(), std::move(ranks));
  return net::make_transport(net::TransportOptions::mpi(self, std::move(wire), std::move(control)));
}

}  // namespace

int run_mpi_job(const Config& cfg, const MpiJobOptions& o) {
  net::mpi_init();
  const net::MpiComm world = net::MpiComm::world();
  const int rank = world.rank();
  const int size = world.size();
  const int64_t S = cfg.cluster.servers;
  const int64_t W = cfg.cluster.workers;
  const int64_t need = 1 + S + W;
  if (size != need) {
    net::mpi_finalize();
    throw ConfigError(fmt::format(
        "cluster.launch: mpi: this MPI job has {} rank(s) but {} needs {} (1 coordinator + "
        "cluster.servers {} + cluster.workers {}); start it with `mpirun -n {}` (or `srun -n {}`), "
        "or change cluster.servers / cluster.workers",
        size, cfg.source, need, S, W, need, need));
  }
  // Ranks 1..P-1 (servers and workers) share the data plane; rank 0 never joins it.
  const net::MpiComm members = world.split(rank == 0 ? -1 : 1, rank);
  const char* role = role_of_rank(rank, S);
  const std::string host = net::mpi_processor_name();
  log_to_rank_file(cfg.run.dir, rank, role, o);

  // Any rank's stop signal reaches rank 0: the others pass it on.
  std::atomic<bool> done{false};
  std::thread relay;
  if (rank != 0 && o.stop_requested) {
    relay = std::thread([&] {
      while (!done.load()) {
        if (o.stop_requested()) {
          spdlog::info("stop requested: passing it to the coordinator (rank 0)");
          world.nudge(0);
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  }
  auto end_relay = [&] {
    done = true;
    if (relay.joinable()) relay.join();
  };

  int rc = 0;
  try {
    if (rank == 0) {
      make_dirs(cfg.run.dir);
      const std::string secret_file = (fs::path(cfg.run.dir) / "secret").string();
      std::error_code ec;
      fs::remove(secret_file, ec);
      net::Secret secret = net::write_secret_file(secret_file, net::OverwriteSecret::kYes);
      const std::span<const unsigned char> key = secret.key();
      world.broadcast(std::string(key.begin(), key.end()), 0);
      CoordinatorProcessOptions co;
      co.config = cfg;
      co.listen = "0.0.0.0:0";
      co.allow_config_change = o.allow_config_change;
      bool relayed = false;
      co.stop_requested = [&] {
        if (!relayed && world.nudged()) {
          spdlog::info("a stop request reached another rank: checkpointing and stopping");
          relayed = true;
        }
        return relayed || (o.stop_requested && o.stop_requested());
      };
      co.on_listening = [&](const std::string& addr) {
        spdlog::info("coordinator at {} on {}; {} server rank(s), {} worker rank(s), data plane {}",
                     addr, host, S, W,
                     effective_transport(cfg.cluster) == DataTransport::kMpi ? "MPI" : "TCP");
        world.broadcast(addr, 0);
      };
      log_run_summary(run_coordinator_process(co, std::move(secret)));
    } else {
      net::Secret secret(world.broadcast("", 0));
      const std::string coordinator = world.broadcast("", 0);
      const std::string name = fmt::format("{}, MPI rank {}", host, rank);
      std::function<std::unique_ptr<net::Transport>(const net::Endpoint&,
                                                    std::shared_ptr<net::TcpNode>)>
          data_plane;
      if (effective_transport(cfg.cluster) == DataTransport::kMpi) {
        data_plane = [&members](const net::Endpoint& self, std::shared_ptr<net::TcpNode> node) {
          return mpi_data_plane(members, self, std::move(node));
        };
      }
      if (rank <= S) {
        ServerProcessOptions so;
        so.coordinator = coordinator;
        so.listen = "0.0.0.0:0";
        so.member_name = name;
        so.data_plane = data_plane;
        run_server_process(so, std::move(secret));
      } else {
        WorkerProcessOptions wo;
        wo.coordinator = coordinator;
        wo.member_name = name;
        wo.data_plane = data_plane;
        run_worker_process(wo, std::move(secret));
      }
    }
  } catch (const std::exception& e) {
    const auto* err = dynamic_cast<const Error*>(&e);
    rc = static_cast<int>(err ? err->code() : ExitCode::kInternal);
    spdlog::error("MPI rank {} ({} on {}) failed: {}", rank, role, host, e.what());
    if (rank != 0) {
      // The coordinator usually knows why (a rank lost, a bad input): give it a moment to say
      // so before the whole job is ended.
      std::this_thread::sleep_for(std::chrono::seconds(2));
    }
    spdlog::default_logger()->flush();
    end_relay();
    net::mpi_abort(rc);
  }
  end_relay();
  spdlog::default_logger()->flush();
  net::mpi_finalize();
  return rc;
}

}  // namespace ptrain
