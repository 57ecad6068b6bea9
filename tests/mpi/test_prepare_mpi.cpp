// Distributed `ptrain prepare` under `mpirun --oversubscribe -n 3` (label `mpi`): every rank
// encodes its share of the inputs, rank 0 waits for the others' parts and writes the shards and
// manifest, which are byte for byte those of one process. Skipped (exit 77, with the reason) where
// mpirun is not installed.
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"

#include "common/util/fs.hpp"

#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

std::map<std::string, std::string> folder_files(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = read_file(e.path().string());
  }
  return out;
}

}  // namespace

TEST_CASE("mpi: mpirun -n 3 ptrain prepare gives the shards and manifest of one process byte for byte") {
  if (::access(PTRAIN_TEST_MPIEXEC, X_OK) != 0) {
    std::printf("SKIPPED: %s is not installed (apt-get install openmpi-bin)\n", PTRAIN_TEST_MPIEXEC);
    std::exit(77);
  }
  TempDir dir("mpi-prepare");
  // 9 files of varied sizes: the ranks get unequal numbers of files.
  fs::create_directories(dir.path / "in");
  for (int f = 0; f < 9; ++f) {
    std::ofstream out(dir.path / "in" / ("f" + std::to_string(f) + ".txt"), std::ios::binary);
    for (int d = 0; d < 300 + 97 * f; ++d) {
      out << "document " << d << " of file " << f << ": the parameter server sums gradient " << (d * 7919 % 1000)
          << "\n%\n";
    }
  }
  const std::vector<std::string> args{"prepare", "--input", dir / "in", "--doc-separator", "%", "--tokenizer", "bpe",
                                      "--vocab-size", "300", "--shard-size", "4096", "--threads", "1"};
  auto with_output = [&](const std::string& out) {
    std::vector<std::string> a = args;
    a.insert(a.end(), {"--output", out});
    return a;
  };
  REQUIRE(test::wait_ptrain(test::start_ptrain(with_output(dir / "one"), dir / "one.err")) == 0);

  std::vector<std::string> argv{PTRAIN_TEST_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                                "--mca", "btl_vader_single_copy_mechanism", "none", "-n", "3", PTRAIN_TEST_BINARY};
  for (const auto& a : with_output(dir / "three")) argv.push_back(a);
  const auto p = test::start_command(argv, dir / "mpi.err");
  REQUIRE_MESSAGE(test::wait_ptrain(p, std::chrono::seconds(300)) == 0, test::slurp(dir / "mpi.err"));
  const std::string err = test::slurp(dir / "mpi.err");
  CHECK(err.find("rank 2 of 3 (from OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE)") != std::string::npos);
  CHECK(err.find("assembled the parts of 3 ranks") != std::string::npos);

  const auto one = folder_files(dir / "one"), three = folder_files(dir / "three");
  std::vector<std::string> a, b;
  for (const auto& [k, v] : one) a.push_back(k);
  for (const auto& [k, v] : three) b.push_back(k);
  REQUIRE(a == b);  // no parts folder, no marker left
  CHECK(a.size() > 10);
  for (const auto& [name, bytes] : one) CHECK_MESSAGE(three.at(name) == bytes, name << " differs");
}
