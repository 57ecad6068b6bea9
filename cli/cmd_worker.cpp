// `ptrain worker (--coordinator HOST:PORT | --run-dir RUN_DIR) [--device D] [--secret-file PATH]
// [--threads N]`: a worker as its own process (launch/worker_process.hpp). Only parsing here.
// --run-dir reads RUN_DIR/coordinator.addr and (unless --secret-file or PTRAIN_SECRET_FILE names
// one) RUN_DIR/secret: a worker started at any time joins the running job at its next step
// boundary, and joins it again if `ptrain run` restarts it. SIGTERM or SIGINT: it leaves at the next step boundary and exits 0. --device (cpu, cuda, cuda:N) overrides
// the job's device.type for this worker; a device that is no device or not built is refused
// before the worker joins the job.
#include "cli/commands.hpp"
#include "common/error.hpp"
#include "worker/backend/backend_factory.hpp"
#include "launch/worker_process.hpp"

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>

namespace ptrain::cli {
namespace {

std::atomic<bool> g_leave{false};
extern "C" void on_worker_leave(int) { g_leave.store(true); }

}  // namespace

void add_worker_command(CLI::App& app, Action& action) {
  struct Args {
    std::string coordinator;
    std::string run_dir;
    std::string device;  // "" = the job's device.type
    std::string secret_file;
    int threads = 0;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand("worker", "Run a worker role; learns the job from the coordinator");
  auto* coord = sub->add_option("--coordinator", args->coordinator,
                                "The coordinator's HOST:PORT (RUN_DIR/coordinator.addr)");
  auto* run_dir = sub->add_option("--run-dir", args->run_dir,
                                  "The job's run.dir: reads coordinator.addr and secret there");
  coord->excludes(run_dir);
  run_dir->excludes(coord);
  sub->add_option("--device", args->device,
                  "Compute device: cpu, cuda or cuda:N (cuda in a build with CUDA); default: the "
                  "job's device.type");
  sub->add_option("--secret-file", args->secret_file,
                  "The job secret (mode 0600); default $PTRAIN_SECRET_FILE");
  sub->add_option("--threads", args->threads,
                  "Compute threads of this worker (default: run.threads; 0 there = all cores)")
      ->check(CLI::NonNegativeNumber);
  sub->callback([&action, args] {
    action = [args] {
      // Before contacting anyone: a missing driver or GPU is this worker's error, not the job's.
      if (!args->device.empty()) probe_device(args->device, "--device");
      if (args->coordinator.empty() && args->run_dir.empty()) {
        throw UsageError("ptrain worker: give --coordinator HOST:PORT or --run-dir RUN_DIR");
      }
      std::string secret_path = args->secret_file;
      const char* env = std::getenv("PTRAIN_SECRET_FILE");
      if (secret_path.empty() && !args->run_dir.empty() && (env == nullptr || *env == '\0')) {
        secret_path = (std::filesystem::path(args->run_dir) / "secret").string();
      }
      net::Secret secret = net::read_secret_file(secret_file_path(secret_path));
      struct sigaction sa {};
      sa.sa_handler = on_worker_leave;
      sigemptyset(&sa.sa_mask);
      sigaction(SIGINT, &sa, nullptr);
      sigaction(SIGTERM, &sa, nullptr);
      WorkerProcessOptions o;
      o.coordinator = args->coordinator;
      o.device = args->device;
      o.threads = args->threads;
      o.leave_requested = [] { return g_leave.load(); };
      // TEST ONLY (docs/elastic.md): PTRAIN_TEST_WORKER_FAULT=PHASE:STEP kills this worker with
      // SIGKILL at that phase of that step, so tests can lose a worker at an exact point;
      // delay-push:STEP:SECONDS makes it a straggler from that step on.
      if (const char* f = std::getenv("PTRAIN_TEST_WORKER_FAULT"); f != nullptr && *f != '\0') {
        const std::string spec = f;
        const auto bad = [&spec] {
          return UsageError(fmt::format(
              "PTRAIN_TEST_WORKER_FAULT={}: expected PHASE:STEP with PHASE before-push, mid-push, "
              "after-push or inner-save, or delay-push:STEP:SECONDS",
              spec));
        };
        const auto colon = spec.find(':');
        const std::string phase = spec.substr(0, colon);
        if (colon == std::string::npos ||
            (phase != "before-push" && phase != "mid-push" && phase != "after-push" &&
             phase != "inner-save" && phase != "delay-push")) {
          throw bad();
        }
        const std::string rest = spec.substr(colon + 1);
        const auto second = rest.find(':');
        if ((phase == "delay-push") != (second != std::string::npos)) throw bad();
        try {
          size_t used = 0;
          o.fault_step = std::stoll(rest.substr(0, second), &used);
          if (used != rest.substr(0, second).size()) throw bad();
          if (second != std::string::npos) {
            const std::string secs = rest.substr(second + 1);
            o.fault_delay_s = std::stod(secs, &used);
            if (used != secs.size() || !(o.fault_delay_s >= 0)) throw bad();
          }
        } catch (const std::logic_error&) {  // stoll/stod: not a number, out of range
          throw bad();
        }
        o.fault_phase = phase;
      }
      if (args->run_dir.empty()) {
        run_worker_process(o, std::move(secret));
      } else {
        run_worker_in_run_dir(o, args->run_dir, secret);
      }
      return 0;
    };
  });
}

}  // namespace ptrain::cli
