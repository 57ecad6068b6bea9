#include "bench/bench_ps.hpp"

#include "launch/spawn.hpp"

#include "common/error.hpp"
#include "common/net/auth.hpp"
#include "common/net/host_port.hpp"
#include "common/net/mpi_transport.hpp"
#include "common/net/tcp_transport.hpp"
#include "common/proto/bf16.hpp"
#include "common/proto/codec.hpp"
#include "common/tensor/param_layout.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ptrain/build_config.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

namespace ptrain {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep)) {
    if (!cur.empty()) out.push_back(cur);
  }
  return out;
}

// ---- helper processes -------------------------------------------------------------------------

struct Child {
  pid_t pid = -1;
  int in = -1;   // its stdin (we write)
  int out = -1;  // its stdout (we read)
  std::string log;
  std::string name;
  std::string pending;  // bytes read past the last line
};

Child spawn(const std::string& binary, const std::vector<std::string>& args, const std::string& log,
            const std::string& name) {
  SpawnOptions o;
  o.argv.push_back(binary);
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  o.log_path = log;
  o.pipe_stdio = true;
  const SpawnedProcess p = spawn_process(o);
  return Child{p.pid, p.stdin_fd, p.stdout_fd, log, name, {}};
}

std::string log_tail(const Child& c) {
  std::ifstream in(c.log);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.size() > 4000) s = "..." + s.substr(s.size() - 4000);
  return s;
}

// One line from the child's stdout, waiting until `deadline`.
std::string read_line(Child& c, Clock::time_point deadline) {
  for (;;) {
    const size_t nl = c.pending.find('\n');
    if (nl != std::string::npos) {
      std::string line = c.pending.substr(0, nl);
      c.pending.erase(0, nl + 1);
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      throw IoError(fmt::format("bench ps: {} did not answer in time; its log:\n{}", c.name,
                                log_tail(c)));
    }
    pollfd p{c.out, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (r <= 0) continue;
    char buf[512];
    const ssize_t n = read(c.out, buf, sizeof buf);
    if (n <= 0) {
      throw IoError(fmt::format("bench ps: {} exited early; its log:\n{}", c.name, log_tail(c)));
    }
    c.pending.append(buf, static_cast<size_t>(n));
  }
}

void go(Child& c) {
  const char g = 'g';
  if (write(c.in, &g, 1) != 1) {
    throw IoError(fmt::format("bench ps: cannot signal {}: {}", c.name, std::strerror(errno)));
  }
}

// Waits for every child (killing those still alive at `deadline`); throws when one failed.
void reap(std::vector<Child>& kids, Clock::time_point deadline) {
  std::string failed;
  for (auto& c : kids) {
    if (c.pid < 0) continue;
    int status = 0;
    for (;;) {
      const pid_t r = waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid) break;
      if (Clock::now() > deadline) {
        kill(c.pid, SIGKILL);
        waitpid(c.pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) && failed.empty()) {
      failed = fmt::format("{} failed ({}); its log:\n{}", c.name,
                           WIFEXITED(status) ? fmt::format("exit {}", WEXITSTATUS(status))
                                             : fmt::format("signal {}", WTERMSIG(status)),
                           log_tail(c));
    }
    c.pid = -1;
    close(c.in);
    close(c.out);
  }
  kids.clear();
  if (!failed.empty()) throw IoError("bench ps: " + failed);
}

void kill_all(std::vector<Child>& kids) {
  for (auto& c : kids) {
    if (c.pid > 0) {
      kill(c.pid, SIGKILL);
      waitpid(c.pid, nullptr, 0);
      close(c.in);
      close(c.out);
    }
  }
  kids.clear();
}

// ---- peers --------------------------------------------------------------------------------------

std::vector<proto::KeyRange> ranges_of(int64_t floats, int servers) {
  std::vector<proto::KeyRange> out;
  for (int k = 0; k < servers; ++k) {
    out.push_back({floats * k / servers, floats * (k + 1) / servers});
  }
  return out;
}

void wait_go() {
  char g = 0;
  if (read(0, &g, 1) != 1) throw IoError("bench ps-peer: no go signal (the orchestrator is gone)");
}

proto::FloatEncoding encoding_of(const std::string& dtype) {
  if (dtype == "fp32") return proto::FloatEncoding::kFp32;
  if (dtype == "bf16") return proto::FloatEncoding::kBf16;
  throw UsageError(fmt::format("bench ps: --wire-dtype takes fp32 and/or bf16, not '{}'", dtype));
}

void serve(const BenchPsPeerOptions& o, net::Transport& t, const std::function<void()>& ready);
void work(const BenchPsPeerOptions& o, net::Transport& t, const std::function<void()>& start);

int run_server(const BenchPsPeerOptions& o) {
  net::TcpNodeOptions no;
  no.self_role = net::Role::kServer;
  no.peer_lost = [](const net::Endpoint&, const std::string&) { return false; };
  auto node = std::make_shared<net::TcpNode>(net::read_secret_file(o.secret_file), no);
  const std::string addr = node->listen(
      "127.0.0.1", 0, [](const proto::Message& m, const std::string&) -> net::Identity {
        const auto* h = std::get_if<proto::PeerHello>(&m);
        if (h == nullptr) throw proto::ProtocolError("expected a PeerHello");
        return {net::worker_endpoint(h->id), false};
      });
  std::printf("%s\n", addr.c_str());
  std::fflush(stdout);
  const std::unique_ptr<net::Transport> tp =
      net::make_transport(net::TransportOptions::tcp(net::server_endpoint(o.id), node));
  serve(o, *tp, [] {});
  node->close();
  return 0;
}

// A server's rounds over any transport: counts pushes, answers pulls once a round is complete.
// `ready()` runs once its buffers are allocated and touched and its first slots posted: the
// workers' clocks start after it (MPI: a barrier), so that no page fault of the server's set-up
// is timed as transfer.
void serve(const BenchPsPeerOptions& o, net::Transport& t, const std::function<void()>& ready) {
  const proto::KeyRange range = ranges_of(o.floats, o.servers)[static_cast<size_t>(o.id)];
  const proto::FloatEncoding enc = encoding_of(o.wire_dtype);
  const auto n = static_cast<size_t>(range.size());
  std::vector<float> weights(n, 0.5f);
  // bf16: as a parameter server does, the weights of each version rounded once (per round here)
  // and every reply of that version borrowed from there.
  std::vector<float> packed(enc == proto::FloatEncoding::kBf16 ? proto::bf16_packed_size(n) : 0);
  int64_t packed_round = -1;
  std::vector<int> pushes(static_cast<size_t>(o.rounds), 0);
  std::vector<std::pair<net::Endpoint, proto::PullRequest>> waiting;
  int done = 0;
  // As a parameter server does: a gradient slot per worker, where its next push is received
  // in place; replies borrow the weights (flushed before the loop goes on).
  std::vector<std::vector<float>> slots(
      static_cast<size_t>(o.workers),
      std::vector<float>(static_cast<size_t>(proto::encoded_size(enc, range.size()))));
  auto post_slot = [&](int32_t w, int64_t round) {
    if (round < o.rounds) {
      t.post_receive(net::worker_endpoint(w), proto::MessageType::kGradPush,
                     static_cast<uint64_t>(round), slots[static_cast<size_t>(w)]);
    }
  };
  for (int32_t w = 0; w < o.workers; ++w) post_slot(w, 0);
  ready();
  auto answer = [&](const net::Endpoint& to, const proto::PullRequest& r) {
    if (enc == proto::FloatEncoding::kBf16) {
      if (packed_round != r.version) {
        proto::pack_bf16(weights, packed);
        packed_round = r.version;
      }
      t.send(to, proto::PullReply{r.request_id, r.version, range,
                                  proto::FloatRange::borrow(packed), enc});
    } else {
      t.send(to, proto::PullReply{r.request_id, r.version, range,
                                  proto::FloatRange::borrow(weights), enc});
    }
  };
  while (done < o.workers) {
    auto env = t.receive(std::chrono::milliseconds(120'000));
    if (!env) throw IoError("bench ps server: no message for 120 s");
    if (auto* p = std::get_if<proto::GradPush>(&env->message)) {
      PTRAIN_ENFORCE(p->range == range && p->encoding == enc && p->step >= 0 &&
                         p->step < o.rounds && p->worker_id >= 0 && p->worker_id < o.workers,
                     "bench ps server: unexpected push");
      post_slot(p->worker_id, p->step + 1);
      if (++pushes[static_cast<size_t>(p->step)] == o.workers) {
        for (auto& [to, r] : waiting) answer(to, r);
        waiting.clear();
        t.flush(std::chrono::milliseconds(120'000));
      }
    } else if (auto* r = std::get_if<proto::PullRequest>(&env->message)) {
      PTRAIN_ENFORCE(r->version >= 0 && r->version < o.rounds && r->encoding == enc,
                     "bench ps server: bad version or encoding");
      if (pushes[static_cast<size_t>(r->version)] == o.workers) {
        answer(env->from, *r);
        t.flush(std::chrono::milliseconds(120'000));
      } else {
        waiting.emplace_back(env->from, *r);
      }
    } else if (std::holds_alternative<proto::Shutdown>(env->message)) {
      ++done;
    }
  }
}

int run_worker(const BenchPsPeerOptions& o) {
  net::TcpNodeOptions no;
  no.self_role = net::Role::kWorker;
  no.peer_lost = [](const net::Endpoint&, const std::string&) { return true; };
  auto node = std::make_shared<net::TcpNode>(net::read_secret_file(o.secret_file), no);
  const auto addrs = split(o.server_addrs, ',');
  PTRAIN_ENFORCE(static_cast<int>(addrs.size()) == o.servers, "bench ps worker: {} addresses for {} servers",
                 addrs.size(), o.servers);
  for (int k = 0; k < o.servers; ++k) {
    node->connect(addrs[static_cast<size_t>(k)], net::server_endpoint(k),
                  proto::PeerHello{static_cast<uint8_t>(net::Role::kWorker), o.id, 0},
                  std::chrono::milliseconds(30'000));
  }
  const std::unique_ptr<net::Transport> tp =
      net::make_transport(net::TransportOptions::tcp(net::worker_endpoint(o.id), node));
  work(o, *tp, [] {
    std::printf("ready\n");
    std::fflush(stdout);
    wait_go();
  });
  node->close();
  return 0;
}

// A worker's rounds over any transport, timed from `start()` (which returns when every worker
// may go) to its last reply; prints "result T0 T1 BYTES".
void work(const BenchPsPeerOptions& o, net::Transport& t, const std::function<void()>& start) {
  const auto ranges = ranges_of(o.floats, o.servers);
  const proto::FloatEncoding enc = encoding_of(o.wire_dtype);
  const bool bf16 = enc == proto::FloatEncoding::kBf16;
  std::vector<float> grads(static_cast<size_t>(o.floats), 0.25f);
  std::vector<float> weights(static_cast<size_t>(o.floats), 0.0f);
  // bf16, as a worker's PsClient does: each server's slice rounded into a packed buffer before
  // its push; replies received into packed buffers and widened into `weights`.
  std::vector<size_t> off{0};
  for (const auto& kr : ranges) {
    off.push_back(off.back() + static_cast<size_t>(proto::encoded_size(enc, kr.size())));
  }
  std::vector<float> push_packed(bf16 ? off.back() : 0), pull_packed(bf16 ? off.back() : 0);
  auto packed_slice = [&](std::vector<float>& v, int k) {
    return std::span<float>(v).subspan(off[static_cast<size_t>(k)],
                                       off[static_cast<size_t>(k) + 1] - off[static_cast<size_t>(k)]);
  };
  start();
  int64_t bytes = 0;
  const int64_t t0 = mono_ns();
  for (int r = 0; r < o.rounds; ++r) {
    // As a worker's PsClient does: borrowed gradient slices (no copy), written before the
    // round goes on; each reply received straight into its slice of `weights`.
    for (int k = 0; k < o.servers; ++k) {
      const proto::KeyRange& kr = ranges[static_cast<size_t>(k)];
      const auto slice = std::span<const float>(grads).subspan(static_cast<size_t>(kr.begin),
                                                               static_cast<size_t>(kr.size()));
      proto::GradPush p{r, 0, o.id, 1, kr, proto::FloatRange::borrow(slice), enc};
      if (bf16) {
        proto::pack_bf16(slice, packed_slice(push_packed, k));
        p.grads = proto::FloatRange::borrow(packed_slice(push_packed, k));
      }
      t.send(net::server_endpoint(k), p);
      bytes += static_cast<int64_t>(p.grads.size()) * 4;
    }
    t.flush(std::chrono::milliseconds(120'000));
    for (int k = 0; k < o.servers; ++k) {
      const proto::KeyRange& kr = ranges[static_cast<size_t>(k)];
      const auto id = static_cast<uint64_t>(r * o.servers + k);
      t.post_receive(net::server_endpoint(k), proto::MessageType::kPullReply, id,
                     bf16 ? packed_slice(pull_packed, k)
                          : std::span<float>(weights).subspan(static_cast<size_t>(kr.begin),
                                                              static_cast<size_t>(kr.size())));
      t.send(net::server_endpoint(k), proto::PullRequest{id, r, kr, enc});
    }
    for (int got = 0; got < o.servers;) {
      auto env = t.receive(std::chrono::milliseconds(120'000));
      if (!env) throw IoError("bench ps worker: no reply for 120 s");
      auto* rep = std::get_if<proto::PullReply>(&env->message);
      if (rep == nullptr) continue;
      PTRAIN_ENFORCE(rep->version == r && rep->encoding == enc &&
                         static_cast<int64_t>(rep->weights.size()) ==
                             proto::encoded_size(enc, rep->range.size()),
                     "bench ps worker: bad reply");
      const auto to = std::span<float>(weights).subspan(static_cast<size_t>(rep->range.begin),
                                                        static_cast<size_t>(rep->range.size()));
      if (bf16) {
        proto::unpack_bf16(rep->weights, to);
      } else if (rep->weights.data() != to.data()) {  // not received in place
        std::memcpy(to.data(), rep->weights.data(), rep->weights.size() * sizeof(float));
      }
      bytes += static_cast<int64_t>(rep->weights.size()) * 4;
      ++got;
    }
  }
  const int64_t t1 = mono_ns();
  PTRAIN_ENFORCE(weights.front() == 0.5f && weights.back() == 0.5f, "bench ps worker: wrong weights");
  for (int k = 0; k < o.servers; ++k) t.send(net::server_endpoint(k), proto::Shutdown{"done"});
  std::printf("result %lld %lld %lld\n", static_cast<long long>(t0), static_cast<long long>(t1),
              static_cast<long long>(bytes));
  std::fflush(stdout);
  t.flush(std::chrono::milliseconds(120'000));
}

// Every peer as one rank of an MPI job (`mpirun -n S+W ptrain bench ps-peer --role mpi`): ranks
// 0..S-1 serve, the others work, over the MPI data plane; the workers start together (an
// allgather as a barrier) and print their results on stdout, which mpirun forwards.
int run_mpi_peer(BenchPsPeerOptions o) {
  net::mpi_init();
  const net::MpiComm world = net::MpiComm::world();
  const int rank = world.rank();
  PTRAIN_ENFORCE(world.size() == o.servers + o.workers, "bench ps-peer: {} ranks for {} + {} peers",
                 world.size(), o.servers, o.workers);
  std::map<net::Endpoint, int> ranks;
  for (int r = 0; r < world.size(); ++r) {
    ranks[r < o.servers ? net::server_endpoint(r) : net::worker_endpoint(r - o.servers)] = r;
  }
  const net::Endpoint self =
      rank < o.servers ? net::server_endpoint(rank) : net::worker_endpoint(rank - o.servers);
  o.id = self.id;
  {
    auto wire = std::make_shared<net::MpiWire>(world.dup(), ranks);
    const std::unique_ptr<net::Transport> t =
        net::make_transport(net::TransportOptions::mpi(self, wire, nullptr));
    if (self.role == net::Role::kServer) {
      serve(o, *t, [&] { world.allgather(""); });
    } else {
      work(o, *t, [&] { world.allgather(""); });
    }
    world.allgather("");  // nobody closes its wire while another still sends
  }
  net::mpi_finalize();
  return 0;
}

int run_raw_recv(const BenchPsPeerOptions& o) {
  const int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (ls < 0 || bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(ls, 1) != 0) {
    throw IoError(fmt::format("bench ps raw: cannot listen: {}", std::strerror(errno)));
  }
  socklen_t len = sizeof a;
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  std::printf("127.0.0.1:%d\n", ntohs(a.sin_port));
  std::fflush(stdout);
  const int fd = accept(ls, nullptr, nullptr);
  if (fd < 0) throw IoError(fmt::format("bench ps raw: accept: {}", std::strerror(errno)));
  // The bytes land in one buffer of the size of a round's data (as a pull lands in the weights),
  // reused for later chunks of the same transfer.
  const int64_t chunk = std::min<int64_t>(o.raw_bytes, std::max<int64_t>(o.floats * 4, 1));
  std::vector<char> buf(static_cast<size_t>(chunk));
  int64_t got = 0;
  while (got < o.raw_bytes) {
    const int64_t off = got % chunk;
    const ssize_t n = recv(fd, buf.data() + off, static_cast<size_t>(std::min(chunk - off, o.raw_bytes - got)), 0);
    if (n <= 0) throw IoError("bench ps raw: the sender stopped early");
    got += n;
  }
  const int64_t t1 = mono_ns();
  std::printf("result %lld %lld\n", static_cast<long long>(t1), static_cast<long long>(got));
  std::fflush(stdout);
  close(fd);
  close(ls);
  return 0;
}

int run_raw_send(const BenchPsPeerOptions& o) {
  const int64_t chunk = std::min<int64_t>(o.raw_bytes, std::max<int64_t>(o.floats * 4, 1));
  std::vector<char> buf(static_cast<size_t>(chunk), 1);
  const net::HostPort hp = net::parse_host_port(o.raw_addr, "--raw-addr");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(hp.port);
  inet_pton(AF_INET, hp.host.c_str(), &a.sin_addr);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    throw IoError(fmt::format("bench ps raw: cannot connect to {}: {}", o.raw_addr, std::strerror(errno)));
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::printf("ready\n");
  std::fflush(stdout);
  wait_go();
  const int64_t t0 = mono_ns();
  int64_t sent = 0;
  while (sent < o.raw_bytes) {
    const int64_t off = sent % chunk;
    const ssize_t n = send(fd, buf.data() + off, static_cast<size_t>(std::min(chunk - off, o.raw_bytes - sent)), MSG_NOSIGNAL);
    if (n <= 0) throw IoError(fmt::format("bench ps raw: send: {}", std::strerror(errno)));
    sent += n;
  }
  std::printf("result %lld\n", static_cast<long long>(t0));
  std::fflush(stdout);
  close(fd);
  return 0;
}

// The plain MPI copy (`mpirun -n 2 ptrain bench ps-peer --role mpi-raw`): rank 0 sends
// --raw-bytes to rank 1 with blocking MPI_Send / MPI_Recv from and into one reused buffer of up
// to the vector's size, as the raw TCP copy does over a socket; both print their clock readings
// on stdout, which mpirun forwards.
int run_mpi_raw_peer(const BenchPsPeerOptions& o) {
  net::mpi_init();
  {
    const net::MpiComm world = net::MpiComm::world();
    PTRAIN_ENFORCE(world.size() == 2, "bench ps-peer --role mpi-raw: {} ranks, needs 2",
                   world.size());
    const int64_t chunk = std::min<int64_t>(o.raw_bytes, std::max<int64_t>(o.floats * 4, 1));
    std::vector<std::byte> buf(static_cast<size_t>(chunk), std::byte{1});
    world.allgather("");  // both buffers touched: the copy alone is timed
    if (world.rank() == 0) {
      const int64_t t0 = mono_ns();
      for (int64_t sent = 0; sent < o.raw_bytes; sent += chunk) {
        world.send_bytes(1, std::span<const std::byte>(buf).first(
                                static_cast<size_t>(std::min(chunk, o.raw_bytes - sent))));
      }
      std::printf("raw-sent %lld\n", static_cast<long long>(t0));
    } else {
      int64_t got = 0;
      for (; got < o.raw_bytes; got += chunk) {
        world.recv_bytes(0, std::span<std::byte>(buf).first(
                                static_cast<size_t>(std::min(chunk, o.raw_bytes - got))));
      }
      std::printf("raw-received %lld %lld\n", static_cast<long long>(mono_ns()),
                  static_cast<long long>(got));
    }
    std::fflush(stdout);
    world.allgather("");
  }
  net::mpi_finalize();
  return 0;
}

// ---- orchestrator -------------------------------------------------------------------------------

struct Measured {
  std::string transport = "tcp";
  std::string wire_dtype = "fp32";
  int servers = 0, workers = 0;
  int64_t bytes = 0;
  double seconds = 0;
  std::string raw = "tcp";  // the plain copy beside it: a TCP socket, or MPI_Send / MPI_Recv
  int64_t raw_bytes = 0;
  double raw_seconds = 0;
  double gbps() const { return static_cast<double>(bytes) / seconds / 1e9; }
  double raw_gbps() const { return static_cast<double>(raw_bytes) / raw_seconds / 1e9; }
  double ratio() const { return gbps() / raw_gbps(); }
};

std::vector<std::string> common_args(const BenchPsOptions& o, int S, int W,
                                     const std::string& wire_dtype = "fp32") {
  return {"bench",       "ps-peer", "--servers", std::to_string(S),
          "--workers",   std::to_string(W), "--floats", std::to_string(o.floats),
          "--rounds",    std::to_string(o.rounds), "--wire-dtype", wire_dtype};
}

void measure_ps(const BenchPsOptions& o, const fs::path& dir, const std::string& secret,
                Measured& m, std::vector<Child>& kids) {
  const int S = m.servers, W = m.workers;
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  std::vector<std::string> addrs;
  for (int k = 0; k < S; ++k) {
    auto args = common_args(o, S, W, m.wire_dtype);
    args.insert(args.end(), {"--role", "server", "--id", std::to_string(k), "--secret-file", secret});
    kids.push_back(spawn(o.ptrain_binary, args, (dir / fmt::format("server-{}.log", k)).string(),
                         fmt::format("server {}", k)));
    addrs.push_back(read_line(kids.back(), deadline));
  }
  std::string joined;
  for (const auto& a : addrs) joined += (joined.empty() ? "" : ",") + a;
  for (int w = 0; w < W; ++w) {
    auto args = common_args(o, S, W, m.wire_dtype);
    args.insert(args.end(), {"--role", "worker", "--id", std::to_string(w), "--secret-file", secret,
                             "--server-addrs", joined});
    kids.push_back(spawn(o.ptrain_binary, args, (dir / fmt::format("worker-{}.log", w)).string(),
                         fmt::format("worker {}", w)));
  }
  for (int w = 0; w < W; ++w) {
    const std::string l = read_line(kids[static_cast<size_t>(S + w)], deadline);
    if (l != "ready") throw IoError(fmt::format("bench ps: worker {} said '{}'", w, l));
  }
  for (int w = 0; w < W; ++w) go(kids[static_cast<size_t>(S + w)]);
  const auto run_deadline = Clock::now() + std::chrono::seconds(600);
  int64_t t0 = INT64_MAX, t1 = 0;
  for (int w = 0; w < W; ++w) {
    const std::string l = read_line(kids[static_cast<size_t>(S + w)], run_deadline);
    long long a = 0, b = 0, n = 0;
    if (std::sscanf(l.c_str(), "result %lld %lld %lld", &a, &b, &n) != 3) {
      throw IoError(fmt::format("bench ps: worker {} said '{}'", w, l));
    }
    t0 = std::min<int64_t>(t0, a);
    t1 = std::max<int64_t>(t1, b);
    m.bytes += n;
  }
  m.seconds = static_cast<double>(t1 - t0) * 1e-9;
  reap(kids, Clock::now() + std::chrono::seconds(30));
}

// `mpirun` arguments for `ranks` ranks of this binary on this machine (shared memory between them,
// without cross-memory attach, as in containers).
std::vector<std::string> mpirun_args(const BenchPsOptions& o, int ranks) {
  if (!net::mpi_built() || std::string(PTRAIN_MPIEXEC).empty()) {
    throw NotImplementedError("bench ps --transport mpi: this build has no MPI (PTRAIN_MPI)");
  }
  // mpirun starts the program itself: /proc/self/exe would name mpirun's own daemon.
  std::error_code ec;
  const fs::path real = fs::read_symlink(o.ptrain_binary, ec);
  const std::string binary = ec ? o.ptrain_binary : real.string();
  return {"--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca",
          "btl_vader_single_copy_mechanism", "none", "-n", std::to_string(ranks), binary};
}

// The same rounds over the MPI data plane: one `mpirun -n S+W` job of peers (shared memory
// between the ranks of this machine); the workers' result lines come back on mpirun's stdout.
void measure_ps_mpi(const BenchPsOptions& o, const fs::path& dir, Measured& m,
                    std::vector<Child>& kids) {
  const int S = m.servers, W = m.workers;
  std::vector<std::string> args = mpirun_args(o, S + W);
  const auto peer = common_args(o, S, W, m.wire_dtype);
  args.insert(args.end(), peer.begin(), peer.end());
  args.insert(args.end(), {"--role", "mpi"});
  kids.push_back(spawn(PTRAIN_MPIEXEC, args, (dir / "mpirun.log").string(), "mpirun"));
  const auto run_deadline = Clock::now() + std::chrono::seconds(600);
  int64_t t0 = INT64_MAX, t1 = 0;
  for (int w = 0; w < W; ++w) {
    const std::string l = read_line(kids.back(), run_deadline);
    long long a = 0, b = 0, n = 0;
    if (std::sscanf(l.c_str(), "result %lld %lld %lld", &a, &b, &n) != 3) {
      throw IoError(fmt::format("bench ps: an MPI worker said '{}'", l));
    }
    t0 = std::min<int64_t>(t0, a);
    t1 = std::max<int64_t>(t1, b);
    m.bytes += n;
  }
  m.seconds = static_cast<double>(t1 - t0) * 1e-9;
  reap(kids, Clock::now() + std::chrono::seconds(30));
}

void measure_raw(const BenchPsOptions& o, const fs::path& dir, Measured& m,
                 std::vector<Child>& kids) {
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  m.raw_bytes = m.bytes;
  auto args = common_args(o, 1, 1);
  args.insert(args.end(), {"--role", "raw-recv", "--raw-bytes", std::to_string(m.raw_bytes)});
  kids.push_back(spawn(o.ptrain_binary, args, (dir / "raw-recv.log").string(), "raw receiver"));
  const std::string addr = read_line(kids[0], deadline);
  args = common_args(o, 1, 1);
  args.insert(args.end(), {"--role", "raw-send", "--raw-bytes", std::to_string(m.raw_bytes),
                           "--raw-addr", addr});
  kids.push_back(spawn(o.ptrain_binary, args, (dir / "raw-send.log").string(), "raw sender"));
  if (read_line(kids[1], deadline) != "ready") throw IoError("bench ps: the raw sender failed");
  go(kids[1]);
  const auto run_deadline = Clock::now() + std::chrono::seconds(600);
  long long t0 = 0, t1 = 0, n = 0;
  if (std::sscanf(read_line(kids[1], run_deadline).c_str(), "result %lld", &t0) != 1 ||
      std::sscanf(read_line(kids[0], run_deadline).c_str(), "result %lld %lld", &t1, &n) != 2 ||
      n != m.raw_bytes) {
    throw IoError("bench ps: the raw copy did not complete");
  }
  m.raw_seconds = static_cast<double>(t1 - t0) * 1e-9;
  reap(kids, Clock::now() + std::chrono::seconds(30));
}

// The same bytes as a plain MPI copy between two ranks (run_mpi_raw_peer).
void measure_raw_mpi(const BenchPsOptions& o, const fs::path& dir, Measured& m,
                     std::vector<Child>& kids) {
  m.raw = "mpi";
  m.raw_bytes = m.bytes;
  std::vector<std::string> args = mpirun_args(o, 2);
  const auto peer = common_args(o, 1, 1);
  args.insert(args.end(), peer.begin(), peer.end());
  args.insert(args.end(), {"--role", "mpi-raw", "--raw-bytes", std::to_string(m.raw_bytes)});
  kids.push_back(spawn(PTRAIN_MPIEXEC, args, (dir / "mpirun-raw.log").string(), "mpirun (raw)"));
  const auto run_deadline = Clock::now() + std::chrono::seconds(600);
  long long t0 = -1, t1 = -1, n = -1;
  for (int i = 0; i < 2; ++i) {  // the two ranks' lines, in whichever order mpirun forwards them
    const std::string l = read_line(kids.back(), run_deadline);
    if (std::sscanf(l.c_str(), "raw-sent %lld", &t0) != 1 &&
        std::sscanf(l.c_str(), "raw-received %lld %lld", &t1, &n) != 2) {
      throw IoError(fmt::format("bench ps: the raw MPI copy said '{}'", l));
    }
  }
  if (t0 < 0 || t1 < 0 || n != m.raw_bytes) {
    throw IoError("bench ps: the raw MPI copy did not complete");
  }
  m.raw_seconds = static_cast<double>(t1 - t0) * 1e-9;
  reap(kids, Clock::now() + std::chrono::seconds(30));
}

}  // namespace

int run_bench_ps_peer(const BenchPsPeerOptions& o) {
  if (o.servers < 1 || o.workers < 1 || o.floats < o.servers || o.rounds < 1) {
    throw UsageError("bench ps-peer: bad sizes");
  }
  if (o.role == "server") return run_server(o);
  if (o.role == "worker") return run_worker(o);
  if (o.role == "raw-recv") return run_raw_recv(o);
  if (o.role == "raw-send") return run_raw_send(o);
  if (o.role == "mpi") return run_mpi_peer(o);
  if (o.role == "mpi-raw") return run_mpi_raw_peer(o);
  throw UsageError(fmt::format("bench ps-peer: unknown role '{}'", o.role));
}

int run_bench_ps(const BenchPsOptions& o) {
  auto bad = [](const std::vector<int>& v) {
    return v.empty() || std::any_of(v.begin(), v.end(), [](int x) { return x < 1 || x > 4; });
  };
  if (bad(o.servers) || bad(o.workers)) {
    throw UsageError("bench ps: --servers and --workers take counts 1..4 (e.g. 1,2,4)");
  }
  for (const std::string& t : o.transports) {
    if (t != "tcp" && t != "mpi") {
      throw UsageError(fmt::format("bench ps: --transport takes tcp and/or mpi, not '{}'", t));
    }
  }
  if (o.transports.empty()) throw UsageError("bench ps: --transport needs tcp and/or mpi");
  if (o.wire_dtypes.empty()) throw UsageError("bench ps: --wire-dtype needs fp32 and/or bf16");
  for (const std::string& d : o.wire_dtypes) encoding_of(d);
  const int max_s = *std::max_element(o.servers.begin(), o.servers.end());
  if (o.floats < max_s || o.rounds < 1) {
    throw UsageError(fmt::format("bench ps: --floats must be >= {} and --rounds >= 1", max_s));
  }
  // A private folder for the secret (0600) and the peers' logs.
  const fs::path dir = fs::temp_directory_path() /
                       fmt::format("ptrain-bench-ps-{}-{}", getpid(), mono_ns() % 1000000);
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
  const std::string secret = (dir / "secret").string();
  net::write_secret_file(secret);
  std::vector<std::pair<std::string, std::string>> planes;  // (transport, wire dtype)
  for (const std::string& t : o.transports) {
    for (const std::string& d : o.wire_dtypes) planes.emplace_back(t, d);
  }
  std::vector<Measured> results;
  std::vector<Child> kids;
  try {
    for (int S : o.servers) {
      for (int W : o.workers) {
        for (const auto& [transport, dtype] : planes) {
          Measured m;
          m.transport = transport;
          m.wire_dtype = dtype;
          m.servers = S;
          m.workers = W;
          spdlog::info("bench ps: {} server(s) x {} worker(s), {} floats, {} round(s), {}, {}", S,
                       W, o.floats, o.rounds, transport, dtype);
          // Each data plane beside the plain copy over the same medium, right after it.
          if (transport == "mpi") {
            measure_ps_mpi(o, dir, m, kids);
            measure_raw_mpi(o, dir, m, kids);
          } else {
            measure_ps(o, dir, secret, m, kids);
            measure_raw(o, dir, m, kids);
          }
          spdlog::info("bench ps: {:.3f} GB/s through the {} transport, {:.3f} GB/s raw {} "
                       "({:.0f}%)",
                       m.gbps(), transport, m.raw_gbps(), m.raw == "mpi" ? "MPI" : "TCP",
                       100 * m.ratio());
          results.push_back(m);
        }
      }
    }
  } catch (...) {
    kill_all(kids);
    std::error_code ec;
    fs::remove_all(dir, ec);
    throw;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);

  if (o.json) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& m : results) {
      rows.push_back({{"transport", m.transport},
                      {"wire_dtype", m.wire_dtype},
                      {"servers", m.servers},
                      {"workers", m.workers},
                      {"bytes", m.bytes},
                      {"seconds", m.seconds},
                      {"gb_per_s", m.gbps()},
                      {"raw", m.raw},
                      {"raw_bytes", m.raw_bytes},
                      {"raw_seconds", m.raw_seconds},
                      {"raw_gb_per_s", m.raw_gbps()},
                      {"ratio", m.ratio()}});
    }
    nlohmann::json j = {{"bench", "ps"},   {"floats", o.floats}, {"rounds", o.rounds},
                        {"transports", o.transports}, {"wire_dtypes", o.wire_dtypes},
                        {"results", rows}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("bench ps: %lld floats (%.1f MB), %d round(s), one machine (TCP: loopback; MPI: "
                "shared memory); bytes = payload pushed + pulled; raw = a plain copy of the same bytes "
                "(tcp rows: one loopback socket; mpi rows: MPI_Send/MPI_Recv between two ranks)\n",
                static_cast<long long>(o.floats), static_cast<double>(o.floats) * 4 / 1e6, o.rounds);
    std::printf("  %9s %5s %7s %7s %14s %9s %8s %9s %8s %7s\n", "transport", "wire", "servers",
                "workers", "bytes", "seconds", "GB/s", "raw s", "raw GB/s", "ratio");
    for (const auto& m : results) {
      std::printf("  %9s %5s %7d %7d %14lld %9.3f %8.3f %9.3f %8.3f %6.0f%%\n",
                  m.transport.c_str(), m.wire_dtype.c_str(), m.servers, m.workers,
                  static_cast<long long>(m.bytes), m.seconds, m.gbps(), m.raw_seconds,
                  m.raw_gbps(), 100 * m.ratio());
    }
  }
  return 0;
}

}  // namespace ptrain
