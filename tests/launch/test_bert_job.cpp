// BERT (model.arch bert) through the same job path as GPT (threads launch): the masks depend only
// on (run.seed, step, window), so 1 and 2 workers train bitwise the same weights; a resume repeats
// the run bitwise; in-run val_loss (fixed evaluation masks) equals `ptrain eval` of the checkpoint.
#include "common/io/checkpoint_format.hpp"
#include "launch/threads_job.hpp"
#include "support/job_test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <map>

using namespace ptrain;
using namespace ptrain::testing;

namespace {

Config bert_config(const TempDir& dir) {
  Config c = small_config(dir);  // byte tokenizer, T 16, L 2, NH 2, C 32, B 8, micro 4, 5 steps
  c.model.arch = ModelArch::kBert;
  c.run.threads = 1;
  return c;
}

std::vector<float> final_params(const Config& c, const RunSummary& s) {
  REQUIRE(!s.last_checkpoint.empty());
  return read_checkpoint(s.last_checkpoint, layout_for(c), false).params;
}

}  // namespace

TEST_CASE("bert job: 1 vs 2 workers give the same masks and bitwise the same weights") {
  TempDir dir;
  Config one = bert_config(dir);
  Config two = one;
  two.run.dir = dir / "run2";
  two.cluster.workers = 2;
  const RunSummary s1 = run_threads_job(one);
  const RunSummary s2 = run_threads_job(two);
  REQUIRE(s1.final_step == 5);
  REQUIRE(s2.final_step == 5);
  CHECK(layout_for(one).tensors().front().name == "bert.embeddings.word_embeddings.weight");
  CHECK(final_params(one, s1) == final_params(two, s2));
  CHECK(s1.final_loss == s2.final_loss);
  // The loss is the masked-LM loss (over ~15% of 14 text positions per sequence), and learning
  // happens: a byte model starts near log(261).
  const auto lines = read_lines(one.run.dir + "/train.jsonl");
  REQUIRE(lines.size() >= 5);
  const double first = nlohmann::json::parse(lines.front()).at("loss");
  CHECK(first > 4.5);
  CHECK(first < 6.5);
}

TEST_CASE("bert job: N steps straight == N/2 + resume + N/2 - bitwise") {
  TempDir dir;
  Config straight = bert_config(dir);
  straight.train.steps = 6;
  const RunSummary s = run_threads_job(straight);
  Config halves = straight;
  halves.run.dir = dir / "halves";
  halves.train.steps = 6;
  halves.checkpoint.resume = "auto";
  ThreadsJobOptions stop;
  stop.stop_requested = [](int64_t step) { return step == 3; };
  const RunSummary h1 = run_threads_job(halves, stop);
  REQUIRE(h1.final_step == 3);
  const RunSummary h2 = run_threads_job(halves);
  REQUIRE(h2.final_step == 6);
  CHECK(final_params(straight, s) == final_params(halves, h2));
}

TEST_CASE("bert job: in-run val_loss equals ptrain eval of the checkpoint") {
  TempDir dir;
  write_corpus(dir / "val.tok", 2000, 2);
  Config c = bert_config(dir);
  c.data.val = dir / "val.tok";
  c.train.eval_windows = 0;
  c.train.eval_every = 5;
  const RunSummary s = run_threads_job(c);
  REQUIRE(s.final_val_loss.has_value());
  const double eval = ptrain_eval_loss(c.run.dir + "/checkpoints/step-00000005", c.data.val);
  MESSAGE("val_loss " << *s.final_val_loss << ", ptrain eval " << eval);
  CHECK(*s.final_val_loss == eval);
}
