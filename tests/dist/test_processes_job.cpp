// `cluster.launch: processes` end to end (label `dist`): real `ptrain` processes on 127.0.0.1
// with free ports. Every test kills what it starts (its own process group) and checks that no
// role is left behind.
#include "support/http_get.hpp"
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"
#include "support/tiny_job.hpp"

#include "common/io/checkpoint_format.hpp"
#include "common/io/run_checkpoints.hpp"
#include "common/net/auth.hpp"
#include "common/proto/codec.hpp"
#include "status/status_http.hpp"

#include "common/net/host_port.hpp"
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fmt/ranges.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

extern char** environ;

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

using Proc = test::PtrainProcess;

// `ptrain ARGS...` in a new process group (so the test can kill everything it started).
Proc start(const std::vector<std::string>& args, const std::string& err_file) {
  return test::start_ptrain(args, err_file);
}

// Waits up to `limit` for the launcher; kills its group if it hangs (then fails the test).
int wait_exit(const Proc& p, std::chrono::seconds limit = std::chrono::seconds(120)) {
  return test::wait_ptrain(p, limit);
}

// pids of `ptrain` processes whose command line mentions `needle` (the run's folder).
std::vector<pid_t> ptrain_processes_with(const std::string& needle) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "cmdline");
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmd.find(needle) != std::string::npos && cmd.find("ptrain") != std::string::npos) {
      out.push_back(std::stoi(name));
    }
  }
  return out;
}

// Roles started by the launcher carry the secret file's path (RUN_DIR/secret) in argv.
bool no_roles_left(const std::string& run_dir) {
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (Clock::now() < deadline) {
    if (ptrain_processes_with(run_dir + "/secret").empty()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (pid_t p : ptrain_processes_with(run_dir + "/secret")) kill(p, SIGKILL);
  return false;
}

using test::slurp;

std::string write_config(const TempDir& dir, int64_t steps, const std::string& launch,
                         const std::string& rundir = "run") {
  if (!fs::exists(dir / "train.tok")) write_corpus(dir / "train.tok", 20000, 7);
  const std::string cfg = dir / (rundir + ".yaml");
  std::ofstream(cfg) << "run: {dir: " << (dir / rundir) << ", seed: 5, threads: 0}\n"
                     << "data: {train: train.tok, tokenizer: byte}\n"
                        "model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}\n"
                        "train: {steps: " << steps << ", batch_size: 4, micro_batch: 2, "
                     << "eval_every: 0, log_every: 1}\n"
                        "cluster: {workers: 2, servers: 2, launch: " << launch
                     << ", heartbeat_s: 0.2, peer_timeout_s: 2}\n"
                        "checkpoint: {every_steps: 0, resume: auto}\n";
  return cfg;
}


// Waits (at most 90 s) for `path` to exist.
void wait_for_file(const fs::path& path) {
  const auto deadline = Clock::now() + std::chrono::seconds(90);
  while (!fs::exists(path)) {
    REQUIRE_MESSAGE(Clock::now() < deadline, path << " did not appear within 90 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void wait_for_steps(const std::string& run_dir, size_t n) {
  const auto deadline = Clock::now() + std::chrono::seconds(90);
  while (read_lines(run_dir + "/train.jsonl").size() < n) {
    REQUIRE_MESSAGE(Clock::now() < deadline, "no training progress in " << run_dir);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// A raw TCP client (no Asio) for the hostile-peer tests.
int dial(const std::string& host_port) {
  const net::HostPort hp = net::parse_host_port(host_port, "test address");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(hp.port);
  inet_pton(AF_INET, hp.host.c_str(), &a.sin_addr);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

void send_all(int fd, const std::vector<std::byte>& b) {
  size_t off = 0;
  while (off < b.size()) {
    const ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

net::AuthFrame recv_auth(int fd) {
  std::vector<std::byte> buf;
  std::byte c[256];
  for (;;) {
    const auto r = net::decode_auth(buf);
    if (r.status == proto::DecodeStatus::kGood) return r.frame;
    REQUIRE(r.status == proto::DecodeStatus::kNeedMore);
    const ssize_t n = ::recv(fd, c, sizeof c, 0);
    REQUIRE(n > 0);
    buf.insert(buf.end(), c, c + n);
  }
}

// Authenticates as a worker with `secret`; true when accepted.
bool authenticate(int fd, const net::Secret& secret) {
  net::ClientHandshake hs(secret, net::Role::kWorker);
  send_all(fd, hs.hello());
  for (;;) {
    const net::AuthStep st = hs.on_frame(recv_auth(fd));
    if (!st.send.empty()) send_all(fd, st.send);
    if (st.state != net::AuthState::kContinue) return st.state == net::AuthState::kAccepted;
  }
}

// true when the peer closed the connection: recv reports the end of the stream (0) or a reset
// (ECONNRESET, EPIPE). A receive timeout (the socket's 5 s SO_RCVTIMEO: EAGAIN) means the peer
// kept the connection open, and is reported as false, like any other error.
bool closed_by_peer(int fd) {
  std::byte c[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, c, sizeof c, 0);
    if (n > 0) continue;  // e.g. the Failure frame telling us why, before the close
    if (n == 0) return true;
    if (errno == EINTR) continue;
    const int e = errno;
    MESSAGE("recv on the hostile connection: "
            << std::string(std::strerror(e))
            << std::string(e == EAGAIN || e == EWOULDBLOCK
                               ? " (timed out: the peer did not close it)"
                               : ""));
    return e == ECONNRESET || e == EPIPE;
  }
}

}  // namespace

TEST_CASE("dist: a 2-server/2-worker processes job trains - exits 0 - leaves nothing - repeats "
          "bitwise - matches threads") {
  TempDir dir("dist-basic");
  const std::string cfg = write_config(dir, 5, "processes");
  const Proc p = start({"run", cfg}, dir / "err.txt");
  CHECK_MESSAGE(wait_exit(p) == 0, slurp(dir / "err.txt"));
  CHECK(no_roles_left(dir / "run"));
  CHECK(fs::read_symlink(dir / "run/checkpoints/latest") == "step-00000005");
  CHECK(read_lines(dir / "run/train.jsonl").size() == 5);
  CHECK(fs::exists(dir / "run/logs/coordinator-0.log"));
  CHECK(fs::exists(dir / "run/logs/worker-1.log"));
  CHECK((fs::status(dir / "run/secret").permissions() & fs::perms::group_all) == fs::perms::none);
  const std::string addr = slurp(dir / "run/coordinator.addr");
  CHECK(addr.rfind("127.0.0.1:", 0) == 0);
  const auto a = final_weights(dir / "run");

  const std::string cfg2 = write_config(dir, 5, "processes", "run2");
  const Proc q = start({"run", cfg2}, dir / "err2.txt");
  CHECK(wait_exit(q) == 0);
  const auto b = final_weights(dir / "run2");
  REQUIRE(a.size() == b.size());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);

  const std::string cfg3 = write_config(dir, 5, "threads", "run3");
  const Proc r = start({"run", cfg3}, dir / "err3.txt");
  CHECK(wait_exit(r) == 0);
  const auto c = final_weights(dir / "run3");
  const ParamLayout layout = tiny_layout();
  const Worst w = worst_rel_l2(layout, a, c);
  INFO("worst tensor " << w.tensor << " rel L2 " << w.value);
  CHECK(w.value <= 1e-6);
}

TEST_CASE("dist: wrong secret and hostile peers are dropped - the job continues") {
  TempDir dir("dist-hostile");
  const std::string cfg = write_config(dir, 100000, "processes");
  {  // a cap, so that a third worker is refused
    std::string c = slurp(cfg);
    c.replace(c.find("peer_timeout_s: 2"), 17, "peer_timeout_s: 2, max_workers: 2");
    std::ofstream(cfg) << c;
  }
  const Proc p = start({"run", cfg}, dir / "err.txt");
  wait_for_steps(dir / "run", 2);
  const std::string addr = [&] {
    std::string s = slurp(dir / "run/coordinator.addr");
    return s.substr(0, s.find('\n'));
  }();
  const net::Secret good = net::read_secret_file(dir / "run/secret");

  {  // wrong secret
    const int fd = dial(addr);
    CHECK_FALSE(authenticate(fd, net::Secret("not-the-secret")));
    close(fd);
  }
  {  // garbage before auth
    const int fd = dial(addr);
    send_all(fd, std::vector<std::byte>(64, std::byte{0x41}));
    CHECK(closed_by_peer(fd));
    close(fd);
  }
  auto after_auth = [&](std::vector<std::byte> bytes, bool then_close) {
    const int fd = dial(addr);
    REQUIRE(authenticate(fd, good));
    send_all(fd, bytes);
    if (then_close) {
      shutdown(fd, SHUT_WR);
    }
    CHECK(closed_by_peer(fd));
    close(fd);
  };
  std::vector<std::byte> reg = proto::encode(proto::Register{2, "", "test"});
  {  // garbage after auth
    after_auth(std::vector<std::byte>(64, std::byte{0x5a}), false);
  }
  {  // truncated frame
    std::vector<std::byte> t(reg.begin(), reg.begin() + static_cast<long>(reg.size() / 2));
    after_auth(t, true);
  }
  {  // oversized length
    std::vector<std::byte> big = reg;
    const uint64_t len = 1ull << 40;
    std::memcpy(big.data() + 12, &len, 8);
    after_auth(big, false);
  }
  {  // wrong protocol version
    std::vector<std::byte> v = reg;
    const uint16_t ver = 99;
    std::memcpy(v.data() + 4, &ver, 2);
    after_auth(v, false);
  }
  {  // a third worker in a job capped at 2 workers
    after_auth(reg, false);
  }
  const size_t before = read_lines(dir / "run/train.jsonl").size();
  wait_for_steps(dir / "run", before + 3);  // still training
  kill(p.pid, SIGTERM);
  CHECK(wait_exit(p) == 0);
  CHECK(no_roles_left(dir / "run"));
  const std::string log = slurp(dir / "run/logs/coordinator-0.log");
  CHECK(log.find("refused a connection from 127.0.0.1:") != std::string::npos);
  CHECK(log.find("bad magic") != std::string::npos);
  CHECK(log.find("truncated frame") != std::string::npos);
  CHECK(log.find("over the") != std::string::npos);
  CHECK(log.find("protocol version 99") != std::string::npos);
  CHECK(log.find("its cap (cluster.max_workers = 2)") != std::string::npos);
}

TEST_CASE("dist: SIGTERM checkpoints and stops - resume equals a straight run (bitwise)") {
  TempDir dir("dist-resume");
  const std::string cfg = write_config(dir, 100000, "processes");
  const Proc p = start({"run", cfg}, dir / "err.txt");
  wait_for_steps(dir / "run", 3);
  kill(p.pid, SIGTERM);
  CHECK(wait_exit(p) == 0);
  CHECK(no_roles_left(dir / "run"));
  const auto lines = read_lines(dir / "run/train.jsonl");
  const std::string latest = fs::read_symlink(dir / "run/checkpoints/latest").string();
  const int64_t stopped = std::stoll(latest.substr(5));
  REQUIRE(stopped >= 3);
  const int64_t total = stopped + 3;
  const Proc q = start({"run", cfg, "--set", "train.steps=" + std::to_string(total)},
                       dir / "err2.txt");
  CHECK(wait_exit(q) == 0);
  const auto resumed = final_weights(dir / "run");

  const std::string cfg2 = write_config(dir, total, "processes", "straight");
  const Proc r = start({"run", cfg2}, dir / "err3.txt");
  CHECK(wait_exit(r) == 0);
  const auto straight = final_weights(dir / "straight");
  REQUIRE(resumed.size() == straight.size());
  CHECK(std::memcmp(resumed.data(), straight.data(), resumed.size() * sizeof(float)) == 0);
}

// cluster.sync local over TCP: the workers' inner AdamW states go into the checkpoint
// (inner-0.h5, inner-1.h5, listed by the index) and come back on resume, so 2 + 2 outer steps
// are bitwise 4 straight.
TEST_CASE("dist: local sgd - the workers' inner states are checkpointed - resume equals a straight run (bitwise)") {
  TempDir dir("dist-local-resume");
  const std::vector<std::string> local = {"--set", "cluster.sync=local", "--set",
                                          "cluster.local_steps=2"};
  auto run_args = [&](const std::string& cfg, std::vector<std::string> more) {
    std::vector<std::string> a = {"run", cfg};
    a.insert(a.end(), local.begin(), local.end());
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  const std::string cfg = write_config(dir, 2, "processes");
  const Proc p = start(run_args(cfg, {}), dir / "err.txt");
  REQUIRE_MESSAGE(wait_exit(p) == 0, slurp(dir / "err.txt"));
  const fs::path ckpt = dir / "run/checkpoints/step-00000002";
  CHECK(fs::exists(ckpt / "inner-0.h5"));
  CHECK(fs::exists(ckpt / "inner-1.h5"));
  CHECK(read_checkpoint_meta(ckpt.string()).inner_state_slots == std::vector<int64_t>{0, 1});
  const Proc q = start(run_args(cfg, {"--set", "train.steps=4"}), dir / "err2.txt");
  REQUIRE_MESSAGE(wait_exit(q) == 0, slurp(dir / "err2.txt"));
  const std::string log = slurp(dir / "run/logs/coordinator-0.log");
  CHECK_MESSAGE(log.find("2 worker(s) took their inner optimizer states") != std::string::npos,
                log);
  const auto resumed = final_weights(dir / "run");

  const std::string cfg2 = write_config(dir, 4, "processes", "straight");
  const Proc r = start(run_args(cfg2, {}), dir / "err3.txt");
  REQUIRE_MESSAGE(wait_exit(r) == 0, slurp(dir / "err3.txt"));
  const auto straight = final_weights(dir / "straight");
  REQUIRE(resumed.size() == straight.size());
  CHECK(std::memcmp(resumed.data(), straight.data(), resumed.size() * sizeof(float)) == 0);
}

// A lost worker no longer stops the job, and a lost server is restarted (test_elastic.cpp); with
// no restart left (cluster.max_restarts: 0) a lost server stops it, naming it.
TEST_CASE("dist: kill -9 of a server with no restart left stops the job naming it - latest intact") {
  for (const std::string victim : {"server"}) {
    CAPTURE(victim);
    TempDir dir("dist-kill-" + victim);
    const std::string cfg = write_config(dir, 100000, "processes");
    std::string c = slurp(cfg);
    c.replace(c.find("every_steps: 0"), 14, "every_steps: 2");
    c.replace(c.find("peer_timeout_s: 2"), 17, "peer_timeout_s: 2, max_restarts: 0");
    std::ofstream(cfg) << c;
    const Proc p = start({"run", cfg}, dir / "err.txt");
    wait_for_steps(dir / "run", 3);
    wait_for_file(dir / "run/checkpoints/latest");
    pid_t target = -1;
    for (pid_t q : ptrain_processes_with(dir / "run/secret")) {
      std::ifstream in("/proc/" + std::to_string(q) + "/cmdline");
      std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (cmd.find(std::string("\0", 1) + victim + std::string("\0", 1)) != std::string::npos) {
        target = q;
      }
    }
    REQUIRE(target > 0);
    const auto t0 = Clock::now();
    kill(target, SIGKILL);
    CHECK(wait_exit(p) != 0);
    CHECK(Clock::now() - t0 < std::chrono::seconds(15));
    CHECK(no_roles_left(dir / "run"));
    const std::string err = slurp(dir / "err.txt") + slurp(dir / "run/logs/coordinator-0.log");
    CAPTURE(err);
    CHECK(err.find(victim + " ") != std::string::npos);
    CHECK(err.find("(127.0.0.1:") != std::string::npos);
    // The job's error (not only the network's log line) names the member, its address and the
    // cause of the loss, as the coordinator's node saw it end.
    bool error_names_cause = false;
    std::istringstream lines(err);
    for (std::string line; std::getline(lines, line);) {
      if (line.find("[error]") == std::string::npos) continue;
      const bool names_member = line.find(victim + " ") != std::string::npos &&
                                line.find("(127.0.0.1:") != std::string::npos;
      const bool names_cause = line.find("connection closed by the peer") != std::string::npos ||
                               line.find("connection reset by the peer") != std::string::npos ||
                               line.find("write failed") != std::string::npos;
      error_names_cause = error_names_cause || (names_member && names_cause);
    }
    CHECK(error_names_cause);
    const CheckpointData d =
        read_checkpoint(dir / "run/checkpoints/latest/checkpoint.h5", tiny_layout(), false);
    CHECK(d.meta.step >= 2);
  }
}

namespace {

using test::http_get;

double metric(const std::string& page, const std::string& name) {
  std::istringstream in(page);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  FAIL("no sample " << name << " in\n" << page);
  return 0;
}

// `ptrain ARGS...` to completion; its exit code (stderr to `err`).
int ptrain_cmd(const std::vector<std::string>& args, const std::string& err) {
  return wait_exit(start(args, err), std::chrono::seconds(60));
}

bool have_h5py() {
  return std::system("/usr/bin/python3 -c 'import h5py' >/dev/null 2>&1") == 0;
}

}  // namespace

TEST_CASE("dist: sharded checkpoint - h5py and the tools read it - status endpoint serves metrics") {
  TempDir dir("dist-shards");
  const std::string cfg = write_config(dir, 100000, "processes");
  std::string c = slurp(cfg);
  c.replace(c.find("every_steps: 0"), 14, "every_steps: 2");
  std::ofstream(cfg) << c;
  const Proc p = start({"run", cfg}, dir / "err.txt");
  wait_for_steps(dir / "run", 3);

  // The status endpoint, mid-run.
  REQUIRE(fs::exists(dir / "run/status.addr"));
  std::string addr = slurp(dir / "run/status.addr");
  addr = addr.substr(0, addr.find('\n'));
  CHECK(addr.rfind("127.0.0.1:", 0) == 0);
  const std::string page = http_get(addr, "/metrics");
  CHECK(page.find("200 OK") != std::string::npos);
  for (const char* name :
       {"ptrain_step", "ptrain_loss", "ptrain_tokens_total", "ptrain_membership_epoch",
        "ptrain_pushed_bytes_total", "ptrain_pulled_bytes_total", "ptrain_last_checkpoint_step",
        "ptrain_members{role=\"worker\"}", "ptrain_members{role=\"server\"}",
        "ptrain_step_phase_seconds{phase=\"compute\"}", "ptrain_step_phase_seconds{phase=\"push\"}",
        "ptrain_step_phase_seconds{phase=\"wait\"}", "ptrain_step_phase_seconds{phase=\"pull\"}"}) {
    CAPTURE(name);
    CHECK(page.find(std::string("\n") + name + " ") != std::string::npos);
  }
  CHECK(metric(page, "ptrain_step") > 0);
  CHECK(metric(page, "ptrain_members{role=\"worker\"}") == 2);
  CHECK(metric(page, "ptrain_members{role=\"server\"}") == 2);
  CHECK(metric(page, "ptrain_pushed_bytes_total") > 0);
  CHECK(metric(page, "ptrain_pulled_bytes_total") > 0);
  CHECK(metric(page, "ptrain_loss") > 0);
  const std::string st = http_get(addr, "/status");
  REQUIRE(st.find("\r\n\r\n") != std::string::npos);
  const JobStatus js = parse_status_json(st.substr(st.find("\r\n\r\n") + 4));
  CHECK(js.members.size() == 5);
  CHECK(js.step > 0);
  for (const auto& m : js.members) {
    if (m.role != net::Role::kCoordinator) CHECK(m.host == "127.0.0.1");
  }

  kill(p.pid, SIGTERM);
  CHECK(wait_exit(p) == 0);
  CHECK(no_roles_left(dir / "run"));

  const fs::path ck = dir / "run/checkpoints/latest";
  CHECK(fs::exists(ck / "shard-0.h5"));
  CHECK(fs::exists(ck / "shard-1.h5"));
  CHECK(fs::exists(ck / "checkpoint.h5"));
  CHECK(checkpoint_shard_count(ck.string()) == 2);
  const CheckpointData d = read_checkpoint(ck.string(), tiny_layout(), false);
  double sum = 0;
  for (int64_t i = 0; i < 257 * 16; ++i) sum += std::abs(d.params[static_cast<size_t>(i)]);

  if (have_h5py()) {
    // h5py resolves the virtual datasets' bare source names against the index file's folder,
    // whatever the cwd.
    const std::string out_file = dir / "h5py.txt";
    const std::string cmd =
        "cd / && /usr/bin/python3 -c 'import h5py,sys,numpy; f=h5py.File(sys.argv[1],\"r\"); "
        "w=f[\"model/transformer.wte.weight\"][()]; print(w.shape[0], w.shape[1], "
        "float(numpy.abs(w.astype(numpy.float64)).sum()))' " +
        (ck / "checkpoint.h5").string() + " > " + out_file + " 2>&1";
    CHECK(std::system(cmd.c_str()) == 0);
    std::istringstream in(slurp(out_file));
    int64_t r = 0, cols = 0;
    double s = 0;
    in >> r >> cols >> s;
    INFO(slurp(out_file));
    CHECK(r == 257);
    CHECK(cols == 16);
    CHECK(s == doctest::Approx(sum).epsilon(1e-9));
    CHECK(s > 0);
  } else {
    MESSAGE("SKIPPED: /usr/bin/python3 has no h5py; the h5py read of the sharded checkpoint "
            "was not checked");
  }
  const std::string ckf = (ck / "checkpoint.h5").string();
  CHECK(ptrain_cmd({"inspect", ckf}, dir / "inspect.txt") == 0);
  CHECK(ptrain_cmd({"eval", "--checkpoint", ckf, "--data", dir / "train.tok"}, dir / "eval.txt") ==
        0);
  CHECK(ptrain_cmd({"generate", "--checkpoint", ckf, "--prompt", "ab", "--max-tokens", "4"},
                   dir / "gen.txt") == 0);
  CHECK(ptrain_cmd({"grad", "--checkpoint", ckf, "--data", dir / "train.tok", "--batch-size",
                    "2", "--out", dir / "grad.h5"},
                   dir / "grad.txt") == 0);
  CHECK(fs::exists(dir / "grad.h5"));
}

TEST_CASE("dist: kill -9 of a server while checkpoints are written - latest always verifies") {
  TempDir dir("dist-kill-ckpt");
  const std::string cfg = write_config(dir, 100000, "processes");
  std::string c = slurp(cfg);
  // A checkpoint after every step; keep them all, so a reader of `latest` never races keep-K's
  // removal of the folder it is reading (tiny steps publish several checkpoints per second).
  c.replace(c.find("every_steps: 0"), 14, "every_steps: 1, keep: 100000");
  c.replace(c.find("peer_timeout_s: 2"), 17, "peer_timeout_s: 2, max_restarts: 0");
  std::ofstream(cfg) << c;
  const Proc p = start({"run", cfg}, dir / "err.txt");
  wait_for_steps(dir / "run", 2);
  wait_for_file(dir / "run/checkpoints/latest");
  // While checkpoints are being written one after another, `latest` always reads back. The
  // inspections must overlap the writing: they see `latest` point at more than one step.
  std::set<std::string> steps_seen;
  for (int i = 0; i < 6; ++i) {
    // Given the `latest` symlink itself: the reader resolves it once, so a checkpoint published
    // meanwhile cannot make it mix checkpoint.h5 of one step with shards of the next.
    const std::string now = dir / "run/checkpoints/latest";
    std::error_code ec;
    const fs::path target = fs::read_symlink(now, ec);
    if (!ec) steps_seen.insert(target.filename().string());
    const int rc = ptrain_cmd({"inspect", now}, dir / "inspect.txt");
    INFO(slurp(dir / "inspect.txt"));
    CHECK(rc == 0);
  }
  pid_t target = -1;
  for (pid_t q : ptrain_processes_with(dir / "run/secret")) {
    std::ifstream in("/proc/" + std::to_string(q) + "/cmdline");
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmd.find(std::string("\0server\0", 8)) != std::string::npos) target = q;
  }
  REQUIRE(target > 0);
  kill(target, SIGKILL);
  CHECK(wait_exit(p) != 0);
  CHECK(no_roles_left(dir / "run"));
  INFO("latest pointed at: " << fmt::format("{}", fmt::join(steps_seen, " ")));
  CHECK(steps_seen.size() >= 2);
  // The published `latest` verifies (every shard read back); a half-written step is only a .tmp.
  CHECK(ptrain_cmd({"inspect", dir / "run/checkpoints/latest"}, dir / "inspect2.txt") == 0);
  const std::optional<std::string> found = find_latest_checkpoint(dir / "run");
  REQUIRE(found.has_value());
  verify_checkpoint(*found);
  const CheckpointData d = read_checkpoint(*found, tiny_layout(), false);
  CHECK(d.meta.step >= 2);
  for (const auto& e : fs::directory_iterator(dir / "run/checkpoints")) {
    CHECK(e.path().extension() != ".tmp");  // find_latest_checkpoint removed any partial one
  }
}

TEST_CASE("dist: in-run val_loss of a processes job equals ptrain eval of its checkpoints") {
  // The workers (processes) evaluate every window of data.val; the coordinator adds their
  // per-batch sums in batch order: the number `ptrain eval` prints for the checkpoint, bitwise.
  TempDir dir("dist-val");
  const std::string cfg = write_config(dir, 4, "processes");
  write_corpus(dir / "val.tok", 1500, 8);  // 93 windows, 47 batches of micro_batch 2
  std::string c = slurp(cfg);
  c.replace(c.find("tokenizer: byte}"), 16, "tokenizer: byte, val: val.tok}");
  c.replace(c.find("eval_every: 0"), 13, "eval_every: 2, eval_windows: 0");
  c.replace(c.find("every_steps: 0"), 14, "every_steps: 2");
  std::ofstream(cfg) << c;
  const Proc p = start({"run", cfg}, dir / "err.txt");
  REQUIRE_MESSAGE(wait_exit(p) == 0, slurp(dir / "err.txt"));
  std::vector<std::pair<int64_t, double>> vals;
  for (const auto& line : read_lines(dir / "run/train.jsonl")) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) vals.emplace_back(j.at("step"), j.at("val_loss"));
  }
  REQUIRE(vals.size() == 2);  // steps 2 and 4
  for (const auto& [step, val] : vals) {
    const std::string ck = dir / fmt::format("run/checkpoints/step-{:08d}", step);
    const double eval = ptrain_eval_loss(ck, dir / "val.tok");
    MESSAGE("step " << step << ": val_loss " << val << ", ptrain eval " << eval);
    CHECK(val == eval);
  }
}
