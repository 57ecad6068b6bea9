// Corpus preparation at scale: a prepare killed (SIGKILL) half-way leaves a folder that training and
// `ptrain data stats` refuse, naming it, and a re-run gives the uninterrupted output byte for byte;
// a distributed prepare (ranks of a job array, then --finalize; ranks read from SLURM's job array
// variables) gives the one-process shards and manifest byte for byte, keeps a finished part when a
// rank is run again, and its final step refuses missing, failed or mismatched parts. (mpirun -n 3
// is in tests/mpi.)
#include "support/job_test_util.hpp"
#include "support/ptrain_process.hpp"

#include "common/data/corpus.hpp"
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"
#include "tools/data_stats.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

// `bytes` of varied English-like text in files of about a MiB under DIR/in: documents of a few
// lines between `%` lines, words drawn by a fixed LCG (so BPE has merges to apply).
std::string write_text_corpus(const TempDir& dir, int64_t bytes, int files) {
  static const char* const kWords[] = {"the", "parameter", "server", "gradient", "of", "and", "worker",
                                       "corpus", "token", "shard", "prepare", "window", "a", "is", "in",
                                       "model", "training", "step", "data", "manifest", "rank", "mpirun"};
  fs::create_directories(dir.path / "in");
  uint64_t x = 12345;
  auto next = [&] { return (x = x * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
  for (int f = 0; f < files; ++f) {
    std::ofstream out(dir.path / "in" / ("part-" + std::to_string(f) + ".txt"), std::ios::binary);
    std::string s;
    while (static_cast<int64_t>(s.size()) < bytes / files) {
      const int lines = 1 + static_cast<int>(next() % 6);
      for (int l = 0; l < lines; ++l) {
        const int words = 3 + static_cast<int>(next() % 12);
        for (int w = 0; w < words; ++w) {
          s += kWords[next() % (sizeof(kWords) / sizeof(kWords[0]))];
          s += w + 1 < words ? ' ' : '\n';
        }
      }
      s += "%\n";
    }
    out << s;
  }
  return dir / "in";
}

// Every file of a folder (recursively, relative names) with its bytes.
std::map<std::string, std::string> folder_files(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = read_file(e.path().string());
  }
  return out;
}

void check_same_folders(const std::string& got, const std::string& want) {
  const auto a = folder_files(got), b = folder_files(want);
  std::vector<std::string> an, bn;
  for (const auto& [k, v] : a) an.push_back(k);
  for (const auto& [k, v] : b) bn.push_back(k);
  REQUIRE(an == bn);
  for (const auto& [name, bytes] : b) CHECK_MESSAGE(a.at(name) == bytes, name << " differs");
}

int run_shell(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// The prepare command line for the binary, over DIR/in.
std::vector<std::string> prepare_args(const TempDir& dir, const std::string& out, const std::string& tokenizer) {
  std::vector<std::string> a{"prepare", "--input", dir / "in", "--doc-separator", "%", "--tokenizer", tokenizer,
                             "--shard-size", "65536", "--threads", "1", "--output", out};
  if (tokenizer == "bpe") a.insert(a.end(), {"--vocab-size", "400", "--bpe-sample-bytes", "200000"});
  return a;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

}  // namespace

TEST_CASE("prepare: killed half-way (SIGKILL) - readers refuse the folder naming it - a re-run gives the "
          "uninterrupted output byte for byte") {
  TempDir dir("prepare-kill");
  write_text_corpus(dir, int64_t{24} << 20, 12);
  const std::string out = dir / "out", ref = dir / "ref";

  // A run into `out` killed once it has written a few shards (its marker is there by then).
  const test::PtrainProcess p = test::start_ptrain(prepare_args(dir, out, "bpe"), dir / "kill.err");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  bool killed = false;
  while (std::chrono::steady_clock::now() < deadline) {
    int st = 0;
    if (::waitpid(p.pid, &st, WNOHANG) == p.pid) break;  // finished before it could be killed
    if (fs::exists(out + "/train-00002.tok")) {
      ::kill(-p.pid, SIGKILL);
      killed = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (killed) {
    const int st = test::wait_ptrain_status(p);
    REQUIRE(WIFSIGNALED(st));
  }
  REQUIRE_MESSAGE(killed, "prepare finished (or stalled) before it could be killed: " << test::slurp(dir / "kill.err"));
  CHECK(fs::exists(out + "/" + kPrepareIncompleteFile));
  CHECK(!fs::exists(out + "/manifest.json"));

  // Training (TokenFile, as the coordinator, workers and preflight open data) refuses it.
  for (const std::string& path : {out, out + "/manifest.json"}) {
    try {
      (void)TokenFile::open(path, "train");
      FAIL("an interrupted folder was opened");
    } catch (const DataError& e) {
      const std::string m = e.what();
      CAPTURE(m);
      CHECK(m.find("interrupted") != std::string::npos);
      CHECK(m.find(kPrepareIncompleteFile) != std::string::npos);
    }
  }
  // So does `ptrain data stats`, with exit code 5 (data) and the same message.
  CHECK(run_shell(std::string(PTRAIN_TEST_BINARY) + " data stats " + out + " > /dev/null 2> " + (dir / "stats.err")) == 5);
  CHECK(test::slurp(dir / "stats.err").find("interrupted") != std::string::npos);

  // A re-run says what it found and completes; the output equals an uninterrupted run's.
  CHECK(test::wait_ptrain(test::start_ptrain(prepare_args(dir, out, "bpe"), dir / "rerun.err"), std::chrono::seconds(300)) == 0);
  CHECK(test::slurp(dir / "rerun.err").find("did not finish") != std::string::npos);
  CHECK(test::wait_ptrain(test::start_ptrain(prepare_args(dir, ref, "bpe"), dir / "ref.err"), std::chrono::seconds(300)) == 0);
  CHECK(!fs::exists(out + "/" + kPrepareIncompleteFile));
  check_same_folders(out, ref);
  CHECK(TokenFile::open(out).size() > 0);
  CHECK(run_shell(std::string(PTRAIN_TEST_BINARY) + " data stats " + out + " > /dev/null 2>&1") == 0);
}

TEST_CASE("prepare: a job array of 3 ranks then --finalize gives the one-process shards and manifest byte for byte") {
  TempDir dir("prepare-ranks");
  write_text_corpus(dir, int64_t{3} << 20, 7);
  PrepareOptions opt;
  opt.inputs = {dir / "in"};
  opt.doc_separator = "%";
  opt.tokenizer = TokenizerKind::kBpe;
  opt.vocab_size = 400;
  opt.bpe_sample_bytes = 200000;
  opt.shard_size = 65536;
  opt.threads = 2;
  opt.output_dir = dir / "one";
  const PrepareResult one = prepare_corpus(opt);
  REQUIRE(one.train.shards >= 10);

  // In process: ranks 2, 0, 1 of 3 (any order), each a share; nothing readable until --finalize.
  PrepareOptions part = opt;
  part.output_dir = dir / "three";
  part.ranks = 3;
  for (int r : {2, 0, 1}) {
    part.rank = r;
    const PrepareResult pr = prepare_corpus(part);
    CHECK(pr.train.documents > 0);  // 7 files of equal size: each rank has some
    CHECK_THROWS_AS((void)TokenFile::open(part.output_dir), DataError);
  }
  PrepareOptions fin = opt;
  fin.output_dir = part.output_dir;
  fin.finalize = true;
  const PrepareResult r = prepare_corpus(fin);
  CHECK(r.manifest_json == one.manifest_json);
  CHECK(!fs::exists(part.output_dir + "/parts"));
  check_same_folders(part.output_dir, opt.output_dir);

  // Through the binary, the ranks taken from SLURM's job array variables (an array 4-6).
  const std::string bin = PTRAIN_TEST_BINARY, arr = dir / "array";
  const std::string args = join(prepare_args(dir, arr, "bpe"));
  for (int id : {4, 5, 6}) {
    CHECK(run_shell("SLURM_ARRAY_TASK_ID=" + std::to_string(id) + " SLURM_ARRAY_TASK_MIN=4 SLURM_ARRAY_TASK_COUNT=3 " +
                    bin + " " + args + " 2> " + (dir / "task.err")) == 0);
    CHECK(test::slurp(dir / "task.err").find("rank " + std::to_string(id - 4) + " of 3") != std::string::npos);
  }
  // A task run again finds its part complete and keeps it.
  CHECK(run_shell("SLURM_ARRAY_TASK_ID=5 SLURM_ARRAY_TASK_MIN=4 SLURM_ARRAY_TASK_COUNT=3 " + bin + " " + args +
                  " 2> " + (dir / "again.err")) == 0);
  CHECK(test::slurp(dir / "again.err").find("already complete") != std::string::npos);
  CHECK(run_shell(bin + " " + args + " --finalize 2> " + (dir / "fin.err")) == 0);
  check_same_folders(arr, dir / "three");  // the same options as `opt` (threads do not matter)
}

TEST_CASE("prepare: --finalize refuses missing - failed - mismatched parts naming the rank or option") {
  TempDir dir("prepare-finalize");
  write_text_corpus(dir, int64_t{1} << 20, 4);
  PrepareOptions opt;
  opt.inputs = {dir / "in"};
  opt.doc_separator = "%";
  opt.shard_size = 65536;
  opt.threads = 1;
  opt.output_dir = dir / "out";
  auto finalize_error = [&](PrepareOptions o) -> std::string {
    o.finalize = true;
    try {
      prepare_corpus(o);
    } catch (const DataError& e) {
      return e.what();
    }
    return "accepted";
  };
  CHECK(finalize_error(opt).find("no rank") != std::string::npos);  // no parts at all

  PrepareOptions part = opt;
  part.ranks = 3;
  part.rank = 0;
  prepare_corpus(part);
  part.rank = 2;
  prepare_corpus(part);
  std::string e = finalize_error(opt);
  CAPTURE(e);
  CHECK(e.find("rank 1 of 3 is missing") != std::string::npos);
  CHECK(e.find("--rank 1 --ranks 3") != std::string::npos);

  write_file_atomic(dir / "out/parts/part-00001-of-00003.failed", "cannot read some/file: Permission denied");
  e = finalize_error(opt);
  CHECK(e.find("rank 1 of 3 failed: cannot read some/file") != std::string::npos);
  fs::remove(dir / "out/parts/part-00001-of-00003.failed");

  part.rank = 1;
  prepare_corpus(part);
  PrepareOptions other = opt;
  other.seed = 7;
  e = finalize_error(other);
  CHECK(e.find("seed = 0, this command has 7") != std::string::npos);
  CHECK_THROWS_AS((void)TokenFile::open(opt.output_dir), DataError);  // still incomplete
  CHECK(finalize_error(opt) == "accepted");
  CHECK(TokenFile::open(opt.output_dir).size() > 0);

  // Bad rank options.
  part.rank = 3;
  CHECK_THROWS_AS(prepare_corpus(part), UsageError);
  PrepareOptions both = part;
  both.rank = 0;
  both.finalize = true;
  CHECK_THROWS_AS(prepare_corpus(both), UsageError);
}
