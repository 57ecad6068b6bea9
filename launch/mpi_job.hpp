// `cluster.launch: mpi`: every rank of an MPI job (`mpirun -n P ptrain run CONFIG`, or
// `srun --mpi=pmix ptrain run CONFIG` under SLURM) runs this with the same config:
//   - rank 0 is the coordinator, ranks 1..S the parameter servers (S = cluster.servers), the other
//     ranks the workers; P must be 1 + S + cluster.workers, else every rank refuses to start with
//     the number of ranks it needs;
//   - rank 0 makes the job secret (RUN_DIR/secret, 0600) and listens; the secret and the
//     coordinator's address reach every rank by MPI_Bcast, so nobody passes them by hand;
//   - the control plane (registration, heartbeats, checkpoints, status endpoint) is TCP as with
//     `cluster.launch: processes`; the data plane between servers and workers is MPI
//     (common/net/mpi_transport.hpp) or TCP (`cluster.transport: tcp`);
//   - every rank logs to stderr and to RUN_DIR/logs/rank-R-ROLE.log (with the SLURM job and task
//     ids in the name under SLURM: rank-R-ROLE.job-J.task-T.log), appended across requeues;
//   - a stop request (SIGINT, SIGTERM, SIGUSR1) received by any rank reaches rank 0 (the others
//     pass it on over MPI): the coordinator writes a checkpoint and stops every role; all exit 0;
//   - a rank that fails (or dies: the coordinator loses its connection and fails naming the
//     rank, its host and role) ends the whole MPI job with MPI_Abort, so no rank waits in a
//     collective or a receive for a peer that is gone.
#pragma once

#include "common/config/config.hpp"

#include <functional>
#include <string>

namespace ptrain {

struct MpiJobOptions {
  // True once this process was asked to stop (signals); polled.
  std::function<bool()> stop_requested;
  // SLURM's job and task ids when run under SLURM ("" otherwise), for the log file names.
  std::string slurm_job_id;
  std::string slurm_task_id;
  bool allow_config_change = false;  // CoordinatorOptions::allow_config_change (rank 0)
};

// Runs this rank's role. Returns the exit code (rank 0: the coordinator's; 0 for a role that ended
// on the coordinator's Shutdown). Throws ConfigError (on every rank, before any role starts) when
// the number of ranks does not fit the config; a failure after that ends the MPI job (MPI_Abort)
// and does not return.
int run_mpi_job(const Config& config, const MpiJobOptions& options);

}  // namespace ptrain
