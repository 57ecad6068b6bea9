// The status endpoint (status/status_http): the Prometheus renderer checked line by line
// against the text format, the JSON round trip, the router, and a live server on 127.0.0.1 with a
// free port, spoken to through a plain POSIX socket.
#include "status/status_http.hpp"
#include "status/status_page.hpp"
#include "ptrain/build_config.hpp"

#include "common/net/asio.hpp"  // only for the io_context the server runs on

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <thread>

using namespace ptrain;

namespace {

JobStatus sample_status() {
  JobStatus s;
  s.step = 42;
  s.loss = 3.25;
  s.tokens_per_second = 12345.5;
  s.membership_epoch = 3;
  s.members = {
      {0, net::Role::kCoordinator, "127.0.0.1", 0.0, 42, std::nan(""), 0.0, 0, 0},
      {0, net::Role::kServer, "127.0.0.1", 0.25, 42, std::nan(""), 0.0, 4000, 8000},
      {1, net::Role::kServer, "127.0.0.1", 0.5, 42, std::nan(""), 0.0, 4000, 8000},
      {0, net::Role::kWorker, "node-1 <a>", 1.5, 42, 3.5, 6000.25, 4000, 8000},
      {1, net::Role::kWorker, "node-2", 0.125, 41, 3.0, 6345.25, 4000, 8000},
  };
  s.bytes_pushed_total = 8000;
  s.bytes_pulled_total = 16000;
  s.step_seconds = {0.5, 0.125, 0.0625, 0.25};
  s.bytes_per_token = 187.5;
  s.push_staleness_max = 3.0;
  s.push_staleness_mean = 1.25;
  s.last_checkpoint_step = 40;
  for (int i = 0; i <= 42; ++i) s.loss_history.push_back({i, 10.0 / (1 + i)});
  s.run_dir = "/runs/sample";
  s.start_step = 10;
  s.target_steps = 100;
  s.tokens_total = 5376;
  s.lr = 6e-4;
  s.grad_norm = 1.5;
  s.val_loss = 3.5;
  s.val_step = 40;
  s.elapsed_s = 12.5;
  s.checkpoints = {20, 40};
  s.events = {"2026-01-01T00:00:00Z started", "2026-01-01T00:00:10Z step 40: checkpoint"};
  s.membership_changes = {{"join", 1}, {"lost", 2}};
  s.membership_events = {{"lost", "worker", 1, 40, 1764650000.5, "worker 1 (127.0.0.1:4) was lost <x>"}};
  s.waiting = "step 43/100 | waiting for workers: 0 of cluster.min_workers 1";
  return s;
}

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  std::string value;
};

// Parses Prometheus text exposition format 0.0.4 strictly enough for our output: every line is a
// HELP, a TYPE or a sample; each metric's HELP and TYPE come before its samples; values parse.
std::vector<Sample> parse_prometheus(const std::string& text) {
  static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*)");
  static const std::regex type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (gauge|counter))");
  static const std::regex sample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*\})? (\S+))");
  static const std::regex label(R"(([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\]*)\")");
  std::vector<Sample> out;
  std::map<std::string, std::string> types;
  std::set<std::string> helped;
  REQUIRE(!text.empty());
  REQUIRE(text.back() == '\n');
  size_t at = 0;
  while (at < text.size()) {
    const size_t nl = text.find('\n', at);
    const std::string line = text.substr(at, nl - at);
    at = nl + 1;
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      CHECK_MESSAGE(helped.insert(m[1]).second, "two HELP lines for ", m[1]);
    } else if (std::regex_match(line, m, type)) {
      CHECK_MESSAGE(helped.count(m[1]), "TYPE before HELP for ", m[1]);
      CHECK_MESSAGE(types.emplace(m[1], m[2]).second, "two TYPE lines for ", m[1]);
    } else if (std::regex_match(line, m, sample)) {
      Sample s{m[1], {}, m[5]};
      CHECK_MESSAGE(types.count(s.name), "sample before TYPE: ", line);
      const std::string labels = m[2];
      for (std::sregex_iterator it(labels.begin(), labels.end(), label), end; it != end; ++it) {
        s.labels[(*it)[1]] = (*it)[2];
      }
      const bool special = s.value == "NaN" || s.value == "+Inf" || s.value == "-Inf";
      if (!special) {
        char* end = nullptr;
        std::strtod(s.value.c_str(), &end);
        CHECK_MESSAGE(*end == '\0', "value does not parse: ", line);
      }
      if (types[s.name] == "counter") CHECK(s.name.ends_with("_total"));
      out.push_back(std::move(s));
    } else {
      FAIL("not a Prometheus text line: '", line, "'");
    }
  }
  return out;
}

std::string key_of(const Sample& s) {
  std::string k = s.name;
  for (const auto& [l, v] : s.labels) k += "," + l + "=" + v;
  return k;
}

// ---- a raw HTTP client -----------------------------------------------------------------------

struct HttpAnswer {
  int status = 0;
  std::map<std::string, std::string> headers;  // lowercase names
  std::string body;
};

int connect_to(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};  // no test waits forever
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  return fd;
}

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Sends `raw` bytes, reads until the server closes, splits the answer.
HttpAnswer http_exchange(uint16_t port, const std::string& raw) {
  const int fd = connect_to(port);
  REQUIRE(::send(fd, raw.data(), raw.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(raw.size()));
  const std::string text = read_all(fd);
  ::close(fd);
  HttpAnswer a;
  const size_t end = text.find("\r\n\r\n");
  REQUIRE_MESSAGE(end != std::string::npos, "no HTTP header in: '", text, "'");
  a.body = text.substr(end + 4);
  std::string head = text.substr(0, end);
  REQUIRE(head.starts_with("HTTP/1."));
  a.status = std::stoi(head.substr(9, 3));
  size_t at = head.find("\r\n");
  while (at != std::string::npos) {
    const size_t next = head.find("\r\n", at + 2);
    const std::string line = head.substr(at + 2, next == std::string::npos ? next : next - at - 2);
    const size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      a.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
    }
    at = next;
  }
  if (a.headers.count("content-length") && !raw.starts_with("HEAD ")) {
    CHECK(std::stoul(a.headers["content-length"]) == a.body.size());
  }
  return a;
}

HttpAnswer get(uint16_t port, const std::string& target) {
  return http_exchange(port, "GET " + target + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

// An io_context run by a thread for the test's lifetime.
struct ServerFixture {
  boost::asio::io_context io;
  std::atomic<int> snapshots{0};
  JobStatus status = sample_status();
  std::unique_ptr<StatusServer> server;
  std::thread thread;

  explicit ServerFixture(StatusServerOptions options = {}) {
    server = std::make_unique<StatusServer>(
        io, "127.0.0.1", 0,
        [this] {
          ++snapshots;
          return status;
        },
        options);
    thread = std::thread([this] { io.run(); });
  }
  ~ServerFixture() {
    server->stop();
    io.stop();
    thread.join();
    server.reset();
  }
};

}  // namespace

TEST_CASE("status: /metrics has exactly the contract's metric names and labels") {
  const JobStatus s = sample_status();
  const auto samples = parse_prometheus(render_prometheus(s));
  std::set<std::string> keys;
  std::map<std::string, std::string> value;
  for (const auto& x : samples) {
    CHECK_MESSAGE(keys.insert(key_of(x)).second, "duplicate sample ", key_of(x));
    value[key_of(x)] = x.value;
  }
  std::set<std::string> expected = {
      "ptrain_build_info,version=" PTRAIN_VERSION,
      "ptrain_step",
      "ptrain_target_steps",
      "ptrain_tokens_total",
      "ptrain_loss",
      "ptrain_val_loss",
      "ptrain_learning_rate",
      "ptrain_grad_norm",
      "ptrain_elapsed_seconds",
      "ptrain_members,role=coordinator",
      "ptrain_members,role=server",
      "ptrain_members,role=worker",
      "ptrain_membership_epoch",
      "ptrain_pushed_bytes_total",
      "ptrain_pulled_bytes_total",
      "ptrain_bytes_per_token",
      "ptrain_push_staleness_max",
      "ptrain_push_staleness_mean",
      "ptrain_step_phase_seconds,phase=compute",
      "ptrain_step_phase_seconds,phase=push",
      "ptrain_step_phase_seconds,phase=wait",
      "ptrain_step_phase_seconds,phase=pull",
      "ptrain_last_checkpoint_step",
      "ptrain_membership_changes_total,kind=join",
      "ptrain_membership_changes_total,kind=leave",
      "ptrain_membership_changes_total,kind=lost",
      "ptrain_membership_changes_total,kind=restart",
      "ptrain_membership_changes_total,kind=resume",
      "ptrain_waiting_for_workers",
  };
  for (const char* name : {"ptrain_member_step", "ptrain_member_heartbeat_age_seconds",
                           "ptrain_member_pushed_bytes_total", "ptrain_member_pulled_bytes_total"}) {
    for (const auto& m : s.members) {
      const char* role = m.role == net::Role::kCoordinator ? "coordinator" : m.role == net::Role::kServer ? "server" : "worker";
      expected.insert(std::string(name) + ",host=" + m.host + ",id=" + std::to_string(m.id) + ",role=" + role);
    }
  }
  CHECK(keys == expected);
  CHECK(value["ptrain_build_info,version=" PTRAIN_VERSION] == "1");
  CHECK(value["ptrain_membership_changes_total,kind=lost"] == "2");
  CHECK(value["ptrain_membership_changes_total,kind=restart"] == "0");
  CHECK(value["ptrain_waiting_for_workers"] == "1");
  CHECK(value["ptrain_step"] == "42");
  CHECK(value["ptrain_target_steps"] == "100");
  CHECK(value["ptrain_tokens_total"] == "5376");
  CHECK(std::stod(value["ptrain_loss"]) == 3.25);
  CHECK(std::stod(value["ptrain_val_loss"]) == 3.5);
  CHECK(std::stod(value["ptrain_learning_rate"]) == 6e-4);
  CHECK(std::stod(value["ptrain_grad_norm"]) == 1.5);
  CHECK(std::stod(value["ptrain_elapsed_seconds"]) == 12.5);
  CHECK(value["ptrain_members,role=coordinator"] == "1");
  CHECK(value["ptrain_members,role=server"] == "2");
  CHECK(value["ptrain_members,role=worker"] == "2");
  CHECK(value["ptrain_membership_epoch"] == "3");
  CHECK(value["ptrain_pushed_bytes_total"] == "8000");
  CHECK(value["ptrain_pulled_bytes_total"] == "16000");
  CHECK(std::stod(value["ptrain_bytes_per_token"]) == 187.5);
  CHECK(std::stod(value["ptrain_push_staleness_max"]) == 3.0);
  CHECK(std::stod(value["ptrain_push_staleness_mean"]) == 1.25);
  CHECK(std::stod(value["ptrain_step_phase_seconds,phase=compute"]) == 0.5);
  CHECK(std::stod(value["ptrain_step_phase_seconds,phase=wait"]) == 0.0625);
  CHECK(value["ptrain_last_checkpoint_step"] == "40");
  CHECK(value["ptrain_member_step,host=node-2,id=1,role=worker"] == "41");
  CHECK(value["ptrain_member_pushed_bytes_total,host=127.0.0.1,id=1,role=server"] == "4000");
  const std::string text = render_prometheus(s);
  CHECK(text.find("# TYPE ptrain_pushed_bytes_total counter\n") != std::string::npos);
  CHECK(text.find("# TYPE ptrain_tokens_total counter\n") != std::string::npos);
  CHECK(text.find("# TYPE ptrain_step gauge\n") != std::string::npos);
  CHECK(text.find("per_second") == std::string::npos);  // rates are left to rate()
}

// Prometheus' own linter over the exposition (Debian's `prometheus` package ships promtool).
TEST_CASE("status: promtool check metrics passes on /metrics") {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0) {
    MESSAGE("SKIPPED: promtool is not installed (Debian: prometheus; scripts/install-deps.sh)");
    return;
  }
  const auto dir = std::filesystem::temp_directory_path() / ("ptrain-promtool-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  JobStatus empty;
  empty.loss = std::nan("");
  for (const JobStatus& s : {sample_status(), empty}) {
    std::ofstream(dir / "metrics.txt") << render_prometheus(s);
    const std::string cmd = "timeout 60 promtool check metrics < " + (dir / "metrics.txt").string() + " > " +
                            (dir / "out.txt").string() + " 2>&1";
    const int st = std::system(cmd.c_str());
    std::ifstream in(dir / "out.txt");
    const std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(WIFEXITED(st), out);
    CHECK_MESSAGE(WEXITSTATUS(st) == 0, out);
    CHECK_MESSAGE(out.empty(), out);  // no lint warning either
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("status: an empty job renders NaN loss - zero members and no checkpoint") {
  JobStatus s;
  s.loss = std::nan("");
  s.step_seconds.pull = INFINITY;
  const auto samples = parse_prometheus(render_prometheus(s));
  std::map<std::string, std::string> value;
  for (const auto& x : samples) value[key_of(x)] = x.value;
  CHECK(value["ptrain_loss"] == "NaN");
  CHECK(value["ptrain_step_phase_seconds,phase=pull"] == "+Inf");
  CHECK(value["ptrain_members,role=worker"] == "0");
  CHECK(value["ptrain_last_checkpoint_step"] == "-1");
  // JSON: NaN and infinity become null and come back as NaN.
  const JobStatus back = parse_status_json(render_status_json(s));
  CHECK(std::isnan(back.loss));
  CHECK(std::isnan(back.step_seconds.pull));
  CHECK(back.members.empty());
}

TEST_CASE("status: JSON round trip keeps every figure and member") {
  const JobStatus s = sample_status();
  const std::string json = render_status_json(s);
  const JobStatus back = parse_status_json(json);
  CHECK(back == s);
  CHECK(json.find("\"members_by_role\"") != std::string::npos);
  CHECK(json.find("\"role\": \"worker\"") != std::string::npos);
  CHECK(json.find("\"loss\": null") != std::string::npos);  // the servers' NaN loss
  // A GPT run has no masked-LM accuracy: no key. A BERT run's comes back.
  CHECK(json.find("\"accuracy\"") == std::string::npos);
  JobStatus bert = s;
  bert.accuracy = 0.375;
  const std::string bjson = render_status_json(bert);
  CHECK(bjson.find("\"accuracy\": 0.375") != std::string::npos);
  CHECK(parse_status_json(bjson) == bert);
  CHECK_FALSE(parse_status_json(bjson) == s);
  CHECK_THROWS_AS(parse_status_json("{\"step\": 1}"), IoError);
  CHECK_THROWS_AS(parse_status_json("not json"), IoError);
}

TEST_CASE("status: the page embeds its data where no text can end the script - and stays small") {
  JobStatus s = sample_status();
  s.members[3].host = "x</script><b>bold";
  const std::string html = render_status_html(s);
  CHECK(html.find("x</script>") == std::string::npos);
  CHECK(html.find("x<\\/script>") != std::string::npos);
  for (const char* id : {"id=\"chart-loss\"", "id=\"chart-lr\"", "id=\"chart-grad-norm\"", "id=\"members\"",
                         "id=\"progress\"", "id=\"events\"", "id=\"checkpoints\""}) {
    CHECK_MESSAGE(html.find(id) != std::string::npos, id);
  }
  CHECK(html.find("http://") == html.find("http://www.w3.org/2000/svg"));  // no fetch elsewhere
  JobStatus big = sample_status();
  big.loss_history.clear();
  for (int i = 0; i < 100000; ++i) big.loss_history.push_back({i, 5.0 + std::sin(i * 0.01)});
  CHECK(render_status_html(big).size() < 40000);  // the history comes from /train.jsonl
  // The report embeds train.jsonl.
  const std::string report = render_report_page(s, "{\"step\":1,\"loss\":5.5}\n");
  CHECK(report.find("data-mode=\"report\"") != std::string::npos);
  CHECK(report.find("{\\\"step\\\":1,\\\"loss\\\":5.5}\\n") != std::string::npos);
}

TEST_CASE("status: router answers 404 - 405 and ignores the query string") {
  int calls = 0;
  const std::function<JobStatus()> snap = [&] {
    ++calls;
    return sample_status();
  };
  CHECK(route_status_request("GET", "/metrics", snap).status == 200);
  CHECK(route_status_request("GET", "/metrics?x=1", snap).content_type.starts_with(
      "text/plain; version=0.0.4"));
  CHECK(route_status_request("GET", "/status", snap).content_type == "application/json");
  CHECK(route_status_request("GET", "/", snap).content_type.starts_with("text/html"));
  CHECK(calls == 4);
  CHECK(route_status_request("GET", "/secret", snap).status == 404);
  // /train.jsonl: the run's log as it stands; empty before the first line (no run_dir, no file).
  const auto dir = std::filesystem::temp_directory_path() / ("ptrain-status-log-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::function<JobStatus()> with_dir = [&] {
    JobStatus s = sample_status();
    s.run_dir = dir.string();
    return s;
  };
  StatusReply log = route_status_request("GET", "/train.jsonl", with_dir);
  CHECK(log.status == 200);
  CHECK(log.body.empty());
  std::ofstream(dir / "train.jsonl") << "{\"step\":1,\"loss\":5.5}\n";
  log = route_status_request("GET", "/train.jsonl", with_dir);
  CHECK(log.status == 200);
  CHECK(log.content_type == "application/x-ndjson");
  CHECK(log.body == "{\"step\":1,\"loss\":5.5}\n");
  std::filesystem::remove_all(dir);
  calls = 4;
  CHECK(route_status_request("GET", "/metricsx", snap).status == 404);
  const auto post = route_status_request("POST", "/metrics", snap);
  CHECK(post.status == 405);
  CHECK(post.allow == "GET, HEAD");
  CHECK(calls == 4);  // no snapshot for a refused request
  const auto failing = route_status_request(
      "GET", "/status", [] () -> JobStatus { throw std::runtime_error("coordinator busy"); });
  CHECK(failing.status == 500);
  CHECK(failing.body.find("coordinator busy") != std::string::npos);
}

TEST_CASE("status: a live server on a free port answers every page") {
  ServerFixture f;
  const uint16_t port = f.server->port();
  REQUIRE(port != 0);
  CHECK(f.server->local_endpoint() == "127.0.0.1:" + std::to_string(port));
  CHECK(f.server->advertised_endpoint() == f.server->local_endpoint());

  HttpAnswer metrics = get(port, "/metrics");
  CHECK(metrics.status == 200);
  CHECK(metrics.headers["content-type"].starts_with("text/plain; version=0.0.4"));
  CHECK(metrics.headers["connection"] == "close");
  CHECK(parse_prometheus(metrics.body).size() == 29 + 4 * 5);  // 29 job-wide, 4 per member

  HttpAnswer status = get(port, "/status");
  CHECK(status.status == 200);
  CHECK(status.headers["content-type"] == "application/json");
  CHECK(parse_status_json(status.body) == f.status);

  HttpAnswer page = get(port, "/");
  CHECK(page.status == 200);
  CHECK(page.headers["content-type"].starts_with("text/html"));
  CHECK(page.body.find("<svg") != std::string::npos);

  CHECK(get(port, "/nothing-here").status == 404);
  HttpAnswer post =
      http_exchange(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
  CHECK(post.status == 405);
  CHECK(post.headers["allow"] == "GET, HEAD");

  HttpAnswer head = http_exchange(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(head.status == 200);
  CHECK(head.body.empty());

  HttpAnswer old = http_exchange(port, "GET /status HTTP/1.0\r\n\r\n");
  CHECK(old.status == 200);
}

TEST_CASE("status: garbage is answered 400 and the server keeps serving") {
  StatusServerOptions options;
  options.read_timeout = std::chrono::milliseconds(300);
  ServerFixture f(options);
  const uint16_t port = f.server->port();

  for (const std::string& garbage :
       {std::string("\x01\x02\x03\xff garbage\r\n\r\n", 16), std::string("GET\r\n\r\n"),
        std::string("GET / HTTP/9.9\r\n\r\n"), std::string("GET / HTTP/1.1\r\nbad header\r\n\r\n"),
        std::string("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"),
        "GET / HTTP/1.1\r\nX: " + std::string(20000, 'a') + "\r\n\r\n"}) {
    HttpAnswer a = http_exchange(port, garbage);
    CHECK_MESSAGE(a.status == 400, "for: ", garbage.substr(0, 40));
  }
  // A client that sends half a request and goes quiet is cut off at the read deadline.
  {
    const int fd = connect_to(port);
    const std::string part = "GET /metrics HTTP/1.1\r\nHo";
    ::send(fd, part.data(), part.size(), MSG_NOSIGNAL);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(read_all(fd).empty());
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
    ::close(fd);
  }
  // A client that connects and closes at once.
  ::close(connect_to(port));
  // Still serving.
  CHECK(get(port, "/metrics").status == 200);
  CHECK(f.snapshots.load() == 1);
}

TEST_CASE("status: binding a used port fails with a message naming it") {
  ServerFixture f;
  boost::asio::io_context io;
  const uint16_t port = f.server->port();
  const std::string where = "127.0.0.1:" + std::to_string(port);
  CHECK_THROWS_WITH_AS(StatusServer(io, "127.0.0.1", port, [] { return JobStatus{}; }),
                       doctest::Contains(where.c_str()), IoError);
}

TEST_CASE("status: write_addr_file writes one HOST:PORT line - never 0.0.0.0") {
  std::string dir = (std::filesystem::temp_directory_path() / "ptrain-addr-XXXXXX").string();
  REQUIRE(::mkdtemp(dir.data()) != nullptr);
  const std::string path = dir + "/status.addr";
  auto read = [&] {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  write_addr_file(path, "127.0.0.1:8080");
  CHECK(read() == "127.0.0.1:8080\n");
  for (const char* any : {"0.0.0.0:8081", "[::]:8081", ":8081"}) {
    write_addr_file(path, any);
    const std::string text = read();
    CHECK(text.ends_with(":8081\n"));
    CHECK(text.find("0.0.0.0") == std::string::npos);
    CHECK(!text.starts_with("[::]"));
    CHECK(text.size() > 7);  // a host name or 127.0.0.1
  }
  write_addr_file(path, "[::1]:9");
  CHECK(read() == "[::1]:9\n");
  CHECK_THROWS_AS(write_addr_file(path, "no-port"), UsageError);
  CHECK_THROWS_AS(write_addr_file(path, "host:70000"), UsageError);
  CHECK(std::distance(std::filesystem::directory_iterator(dir), {}) == 1);  // no temp files
  std::filesystem::remove_all(dir);
}

// The page in a real browser (Debian's chromium, headless): it fetches /status and /train.jsonl
// from the server (the live page embeds no history, so every point drawn came through
// /train.jsonl), draws the charts and the members table, and renders to a screenshot.
TEST_CASE("status: the page in headless Chromium - charts from /train.jsonl - members - screenshot") {
  std::string chromium;
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
    if (std::system(("command -v " + std::string(name) + " >/dev/null 2>&1").c_str()) == 0) {
      chromium = name;
      break;
    }
  }
  if (chromium.empty()) {
    MESSAGE("SKIPPED: no chromium (Debian: chromium; scripts/install-deps.sh)");
    return;
  }
  const auto dir = std::filesystem::temp_directory_path() / ("ptrain-page-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  {
    std::ofstream log(dir / "train.jsonl");
    for (int step = 1; step <= 30; ++step) {
      log << "{\"step\":" << step << ",\"loss\":" << 5.5 / (1 + 0.05 * step) << ",\"lr\":" << 6e-4 * step / 30
          << ",\"grad_norm\":" << 1.0 + 0.1 * (step % 3) << ",\"clipped\":false,\"tokens\":" << step * 128
          << ",\"tokens_per_s\":" << 5000 + 10 * step << ",\"step_s\":0.02,\"bytes_per_token\":2000,\"elapsed_s\":"
          << 0.02 * step << ",\"time\":\"2026-01-01T00:00:00.000Z\"}\n";
      if (step % 10 == 0) log << "{\"step\":" << step << ",\"val_loss\":" << 5.6 / (1 + 0.05 * step) << ",\"val_ppl\":1}\n";
    }
  }
  ServerFixture f;
  f.status.run_dir = (dir / "sample").string();
  std::filesystem::create_directories(f.status.run_dir);
  std::filesystem::copy_file(dir / "train.jsonl", std::filesystem::path(f.status.run_dir) / "train.jsonl");
  f.status.finished = true;  // one poll, then the page keeps its picture
  const std::string url = "http://127.0.0.1:" + std::to_string(f.server->port()) + "/";
  const std::string common = "timeout 90 " + chromium + " --headless --no-sandbox --disable-gpu --no-first-run "
                             "--user-data-dir=" + (dir / "profile").string() +
                             " --virtual-time-budget=5000 --window-size=1280,1100 ";
  const std::string dom_file = (dir / "dom.html").string();
  int st = std::system((common + "--dump-dom " + url + " > " + dom_file + " 2>/dev/null").c_str());
  REQUIRE(WIFEXITED(st));
  REQUIRE(WEXITSTATUS(st) == 0);
  std::ifstream in(dom_file);
  const std::string dom((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(dom.find("data-ready=\"1\"") != std::string::npos);
  CHECK_MESSAGE(dom.find("data-points=\"30\"") != std::string::npos, "the 30 logged steps, fetched from /train.jsonl");
  auto count = [&dom](const std::string& what) {
    size_t n = 0;
    for (size_t at = dom.find(what); at != std::string::npos; at = dom.find(what, at + 1)) ++n;
    return n;
  };
  CHECK(count("class=\"val-loss\"") == 3);
  CHECK(count("class=\"train-loss-smooth\"") == 1);
  CHECK(count("class=\"xtick\"") >= 4 * 3);  // every chart has an x axis with ticks
  CHECK(dom.find("<h1 id=\"run-name\">sample</h1>") != std::string::npos);
  CHECK(dom.find("step 42 of 100") != std::string::npos);
  CHECK(dom.find("<td>node-2</td>") != std::string::npos);
  CHECK(dom.find("step 40") != std::string::npos);  // a checkpoint
  CHECK(dom.find("finished") != std::string::npos);
  // A screenshot (docs/status.md shows one taken this way).
  const auto png = dir / "page.png";
  st = std::system((common + "--screenshot=" + png.string() + " " + url + " >/dev/null 2>&1").c_str());
  CHECK(WIFEXITED(st));
  REQUIRE(std::filesystem::exists(png));
  CHECK(std::filesystem::file_size(png) > 20000);
  std::ifstream p(png, std::ios::binary);
  char magic[4] = {};
  p.read(magic, 4);
  CHECK(std::string(magic + 1, 3) == "PNG");
  std::filesystem::remove_all(dir);
}

// The Grafana dashboard in the repository queries only metrics that /metrics serves.
TEST_CASE("status: the Grafana dashboard names only served metrics") {
  const std::string file = std::string(PTRAIN_TEST_SCRIPTS) + "/../docs/grafana/ptrain-dashboard.json";
  std::ifstream in(file);
  REQUIRE_MESSAGE(in.good(), file);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string metrics = render_prometheus(sample_status());
  static const std::regex name(R"(ptrain_[a-z_]+)");
  size_t n = 0;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), name); it != std::sregex_iterator(); ++it, ++n) {
    const std::string m = it->str();
    if (m == "ptrain_training") continue;  // the dashboard's uid
    CHECK_MESSAGE(metrics.find("# TYPE " + m + " ") != std::string::npos, m);
  }
  CHECK(n >= 15);
}
