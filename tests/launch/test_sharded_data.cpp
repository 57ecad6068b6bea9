// Training over a prepared folder of many shards is training over the one token file that holds
// the same stream: the same windows, bitwise the same weights, and an exact resume across shards.
// The shards come from `prepare` with a small --shard-size (and a different --threads) beside one
// with a single shard.
#include "common/data/corpus.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/token_file.hpp"
#include "common/util/fs.hpp"
#include "launch/threads_job.hpp"
#include "support/final_state.hpp"
#include "support/job_test_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

PrepareOptions corpus(const TempDir& dir, const std::string& out, int threads, int64_t shard_size) {
  if (!fs::exists(dir / "in/a.txt")) {
    fs::create_directories(dir.path / "in");
    std::ofstream f(dir / "in/a.txt");
    for (int i = 0; i < 600; ++i) f << "the quick brown fox " << i % 17 << " jumps over the lazy dog\n%\n";
  }
  PrepareOptions o;
  o.inputs = {dir / "in"};
  o.doc_separator = "%";
  o.val_fraction = 0.05;
  o.seed = 4;
  o.threads = threads;
  o.shard_size = shard_size;
  o.output_dir = dir / out;
  return o;
}

}  // namespace

TEST_CASE("sharded data: training over many shards == over one file - bitwise - and resumes across shards") {
  TempDir dir("shards");
  const PrepareResult one = prepare_corpus(corpus(dir, "one", 1, int64_t{1} << 30));
  const PrepareResult many = prepare_corpus(corpus(dir, "many", 3, 4096));
  REQUIRE(one.train.shards == 1);
  REQUIRE(many.train.shards >= 5);
  CHECK(one.manifest_json.size() > 0);

  // The shards, concatenated, are the single file's tokens.
  const TokenFile single = TokenFile::open(dir / "one/train-00000.tok");
  const TokenFile sharded = TokenFile::open(dir / "many");
  REQUIRE(sharded.size() == single.size());
  for (int64_t i = 0; i < single.size(); ++i) REQUIRE(sharded.at(i) == single.at(i));

  Config a = small_config(dir);
  a.data.train = dir / "one/train-00000.tok";
  a.data.val = dir / "one/val-00000.tok";
  a.train.steps = 6;
  a.train.batch_size = 64;
  a.train.micro_batch = 32;
  a.train.eval_every = 3;
  a.cluster.workers = 2;
  Config b = a;
  b.run.dir = dir / "run-many";
  b.data.train = dir / "many";
  b.data.val = dir / "many/manifest.json";
  const RunSummary sa = run_threads_job(a);
  const RunSummary sb = run_threads_job(b);
  const auto ca = final_state(a, sa), cb = final_state(b, sb);
  CHECK(ca.params == cb.params);
  CHECK(ca.m == cb.m);
  CHECK(sa.final_loss == sb.final_loss);

  // Stop at step 3, resume to 6: the same weights as straight through.
  Config halves = b;
  halves.run.dir = dir / "halves";
  halves.checkpoint.resume = "auto";
  ThreadsJobOptions stop_at_3;
  stop_at_3.stop_requested = [](int64_t step) { return step == 3; };
  CHECK(run_threads_job(halves, stop_at_3).final_step == 3);
  const RunSummary second = run_threads_job(halves);
  CHECK(second.start_step == 3);
  CHECK(final_state(halves, second).params == cb.params);

  // A folder whose prepare was interrupted (no manifest) is refused, saying why.
  fs::remove(dir / "many/manifest.json");
  Config c = b;
  c.run.dir = dir / "run-broken";
  CHECK_THROWS_WITH(run_threads_job(c), doctest::Contains("interrupted prepare"));
}
