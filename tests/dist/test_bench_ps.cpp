// `ptrain bench ps` with a tiny vector (label `dist`): real server/worker/raw-TCP helper processes
// on 127.0.0.1; checks the byte count, the JSON, the exit status and that no helper is left.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

namespace {

namespace fs = std::filesystem;

// pids of processes whose command line contains "bench\0ps-peer" and `needle`.
int helpers_alive() {
  int n = 0;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "cmdline");
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // Only helpers of bench runs started by this test binary (their parent is gone or is us).
    if (cmd.find(std::string("ps-peer\0", 8)) == std::string::npos) continue;
    std::ifstream st(e.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(st)), std::istreambuf_iterator<char>());
    const size_t close = stat.rfind(')');
    int ppid = 0;
    char state = 0;
    if (close != std::string::npos &&
        std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && state != 'Z') {
      ++n;
    }
  }
  return n;
}

struct Output {
  int status = -1;
  std::string out;
};

Output run(const std::string& args) {
  const std::string cmd = std::string(PTRAIN_TEST_BINARY) + " " + args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  Output o;
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) o.out.append(buf.data(), n);
  o.status = pclose(p);
  return o;
}

}  // namespace

TEST_CASE("bench ps: 1x1 and 2x2 with a 1M-float vector move the right bytes and leave nothing") {
  const int before = helpers_alive();
  const Output o = run("bench ps --floats 1000000 --rounds 1 --servers 1,2 --workers 1,2 --json");
  REQUIRE(WIFEXITED(o.status));
  CHECK(WEXITSTATUS(o.status) == 0);
  const auto j = nlohmann::json::parse(o.out);  // exactly one JSON object
  CHECK(j["bench"] == "ps");
  CHECK(j["floats"] == 1000000);
  REQUIRE(j["results"].size() == 4);
  for (const auto& r : j["results"]) {
    const int64_t W = r["workers"].get<int64_t>();
    CHECK(r["bytes"].get<int64_t>() == W * 2 * 1000000 * 4);
    // The ratio is the two measured rates divided (the raw copy moved the same byte count: the
    // orchestrator refuses a raw copy that fell short).
    CHECK(r["ratio"].get<double>() ==
          doctest::Approx(r["gb_per_s"].get<double>() / r["raw_gb_per_s"].get<double>()).epsilon(1e-3));
    CHECK(r["seconds"].get<double>() > 0);
    CHECK(r["gb_per_s"].get<double>() > 0);
    CHECK(r["raw_gb_per_s"].get<double>() > 0);
    CHECK(r["ratio"].get<double>() > 0);
  }
  CHECK(j["results"][3]["servers"] == 2);
  CHECK(j["results"][3]["workers"] == 2);
  // Every helper was reaped before bench ps returned.
  CHECK(helpers_alive() <= before);
}

TEST_CASE("bench ps: two rounds then bad options refused") {
  const Output o = run("bench ps --floats 100000 --rounds 2 --servers 2 --workers 1 --json");
  REQUIRE(WIFEXITED(o.status));
  CHECK(WEXITSTATUS(o.status) == 0);
  const auto j = nlohmann::json::parse(o.out);
  CHECK(j["results"][0]["bytes"].get<int64_t>() == 2 * 2 * 100000 * 4);
  const Output bad = run("bench ps --servers 5 --json");
  REQUIRE(WIFEXITED(bad.status));
  CHECK(WEXITSTATUS(bad.status) != 0);
  CHECK(bad.out.empty());
}
