// The wiring of sharded checkpoints and the status endpoint into a `cluster.launch: threads` job:
// each server writes shard-K.h5, the coordinator publishes checkpoint.h5 over them; the
// coordinator serves /metrics and /status on RUN_DIR/status.addr while the job runs.
#include "common/io/checkpoint_format.hpp"
#include "support/http_get.hpp"
#include "support/job_test_util.hpp"
#include "status/status_http.hpp"
#include "launch/threads_job.hpp"
#include "common/net/host_port.hpp"

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <cmath>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}


using test::http_get;

std::string body_of(const std::string& answer) {
  const size_t at = answer.find("\r\n\r\n");
  return at == std::string::npos ? "" : answer.substr(at + 4);
}

// metric line "name{labels} value" -> value, for the sample lines of a Prometheus text page.
std::map<std::string, double> samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return out;
}

}  // namespace

TEST_CASE("coordinator job: threads checkpoints are sharded - one shard per server") {
  TempDir dir;
  Config c = small_config(dir);
  c.cluster.workers = 2;
  c.cluster.servers = 2;
  c.checkpoint.every_steps = 2;
  const RunSummary s = run_threads_job(c);
  REQUIRE(s.final_step == 5);
  const fs::path ck = s.last_checkpoint;
  CHECK(fs::exists(ck / "shard-0.h5"));
  CHECK(fs::exists(ck / "shard-1.h5"));
  CHECK_FALSE(fs::exists(ck / "shard-2.h5"));
  CHECK(fs::exists(ck / "checkpoint.h5"));
  CHECK(checkpoint_shard_count(ck.string()) == 2);
  verify_checkpoint(ck.string());
  const CheckpointData d = read_checkpoint(ck.string(), layout_for(c), true);
  CHECK(d.meta.step == 5);
  CHECK(d.params.size() == static_cast<size_t>(layout_for(c).total()));
  // No temp folder is left behind.
  for (const auto& e : fs::directory_iterator(c.run.dir + "/checkpoints")) {
    CHECK(e.path().extension() != ".tmp");
  }
}

TEST_CASE("coordinator job: status endpoint serves every metric while a threads job runs") {
  TempDir dir;
  Config c = small_config(dir);
  c.cluster.workers = 2;
  c.cluster.servers = 2;
  c.checkpoint.every_steps = 2;
  std::string metrics, status_json, addr, train_log;
  ThreadsJobOptions o;
  // Asked after every applied step on the coordinator's thread: read the page mid-run (the
  // server answers from its own thread).
  o.stop_requested = [&](int64_t step) {
    if (step == 3) {
      std::ifstream in(c.run.dir + "/status.addr");
      std::getline(in, addr);
      metrics = http_get(addr, "/metrics");
      status_json = http_get(addr, "/status");
      train_log = http_get(addr, "/train.jsonl");
    }
    return false;
  };
  const RunSummary s = run_threads_job(c, o);
  REQUIRE(s.final_step == 5);
  CHECK(addr.rfind("127.0.0.1:", 0) == 0);
  REQUIRE(metrics.find("200 OK") != std::string::npos);
  const auto m = samples(body_of(metrics));
  INFO(body_of(metrics));
  for (const char* name :
       {"ptrain_step", "ptrain_loss", "ptrain_tokens_total", "ptrain_membership_epoch",
        "ptrain_pushed_bytes_total", "ptrain_pulled_bytes_total", "ptrain_last_checkpoint_step",
        "ptrain_members{role=\"worker\"}", "ptrain_members{role=\"server\"}",
        "ptrain_members{role=\"coordinator\"}", "ptrain_step_phase_seconds{phase=\"compute\"}",
        "ptrain_step_phase_seconds{phase=\"push\"}", "ptrain_step_phase_seconds{phase=\"wait\"}",
        "ptrain_step_phase_seconds{phase=\"pull\"}"}) {
    CAPTURE(name);
    CHECK(m.count(name) == 1);
  }
  CHECK(m.at("ptrain_step") == 3);
  CHECK(m.at("ptrain_loss") > 1.0);
  CHECK(m.at("ptrain_loss") < 10.0);
  CHECK(m.at("ptrain_tokens_total") == 3 * c.train.batch_size * c.model.seq_len);
  CHECK(m.at("ptrain_members{role=\"worker\"}") == 2);
  CHECK(m.at("ptrain_members{role=\"server\"}") == 2);
  CHECK(m.at("ptrain_members{role=\"coordinator\"}") == 1);
  CHECK(m.at("ptrain_membership_epoch") == 0);
  CHECK(m.at("ptrain_last_checkpoint_step") == 2);
  // 3 steps x 2 workers x 2 servers pushes of the whole vector (plus frame headers) at least.
  const double floats = static_cast<double>(layout_for(c).total());
  CHECK(m.at("ptrain_pushed_bytes_total") >= 3 * floats * 4);
  CHECK(m.at("ptrain_pulled_bytes_total") >= 3 * floats * 4);
  CHECK(m.at("ptrain_step_phase_seconds{phase=\"compute\"}") > 0);
  CHECK(m.at("ptrain_step_phase_seconds{phase=\"wait\"}") >= 0);

  // The history the page draws: train.jsonl as it stands, through step 3.
  CHECK(train_log.find("200 OK") != std::string::npos);
  CHECK(body_of(train_log).find("{\"step\":3,") != std::string::npos);
  // The run ends with its last status and the report written beside train.jsonl.
  const JobStatus final_status = parse_status_json(slurp(c.run.dir + "/status.json"));
  CHECK(final_status.finished);
  CHECK(final_status.step == 5);
  CHECK(final_status.target_steps == 5);
  CHECK(final_status.checkpoints.back() == 5);
  CHECK(!final_status.events.empty());
  CHECK(slurp(c.run.dir + "/report.html").find("data-mode=\"report\"") != std::string::npos);

  REQUIRE(status_json.find("200 OK") != std::string::npos);
  const JobStatus js = parse_status_json(body_of(status_json));
  CHECK(js.step == 3);
  CHECK(js.run_dir == c.run.dir);
  CHECK(js.start_step == 0);
  CHECK(std::isfinite(js.lr));
  CHECK(js.grad_norm > 0);
  CHECK(js.members.size() == 5);
  for (const auto& mem : js.members) {
    if (mem.role == net::Role::kWorker) {
      CHECK(mem.step == 3);
      CHECK(mem.bytes_pushed > 0);
      CHECK(mem.bytes_pulled > 0);
    }
    if (mem.role == net::Role::kServer) {
      CHECK(mem.step == 3);
      CHECK(mem.bytes_pushed > 0);
    }
  }
  // The endpoint goes away with the job.
  CHECK(fs::exists(c.run.dir + "/status.addr"));
}
