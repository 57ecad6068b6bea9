// Whole `cluster.launch: threads` jobs (coordinator + servers + workers over the in-process
// transport) on a tiny GPT: 1 vs 2 workers at the same batch size, 1 vs 2 servers, a bitwise
// repeat, exact resume (N straight == N/2 + stop + resume), train.jsonl, checkpoints, a NaN that
// stops the job naming the step and the tensor with the last good checkpoint left `latest`; the
// workers' validation, whose val_loss equals `ptrain eval` of the step's checkpoint, bitwise.
#include "common/error.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/run_checkpoints.hpp"
#include "support/final_state.hpp"
#include "support/job_test_util.hpp"
#include "launch/threads_job.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>

using namespace ptrain;
using namespace ptrain::testing;
namespace fs = std::filesystem;

namespace {

std::vector<nlohmann::json> log_lines(const Config& c) {
  std::vector<nlohmann::json> out;
  for (const auto& l : read_lines(c.run.dir + "/train.jsonl")) out.push_back(nlohmann::json::parse(l));
  return out;
}

}  // namespace

TEST_CASE("coordinator job: 1 worker vs 2 workers at the same batch size - after 5 steps") {
  TempDir dir;
  // One compute thread per worker in both runs, so only the parameter-server side differs (the
  // CPU backend's own results may depend on its thread count at some sizes).
  Config one = small_config(dir);  // B = 8, micro_batch = 4
  one.run.threads = 1;
  Config two = one;
  two.run.dir = dir / "run2";
  two.cluster.workers = 2;
  two.run.threads = 1;  // threads of each worker
  const RunSummary s1 = run_threads_job(one);
  const RunSummary s2 = run_threads_job(two);
  CHECK(s1.final_step == 5);
  CHECK(s2.final_step == 5);
  CHECK(s1.tokens_seen == 5 * 8 * 16);
  CHECK(s2.tokens_seen == s1.tokens_seen);
  const auto a = final_state(one, s1), b = final_state(two, s2);
  const Worst w = worst_rel_l2(layout_for(one), b.params, a.params);
  MESSAGE("1 vs 2 workers: worst per-tensor relative L2 " << w.value << " (" << w.tensor
                                                          << "), bitwise " << (a.params == b.params));
  CHECK(w.value <= 1e-5);
  // Each worker's share is one micro-batch of the 1-worker run: the same fp32 fold, bitwise.
  CHECK(a.params == b.params);
  CHECK(s2.final_loss == s1.final_loss);

  // Shares that cut micro-batches differently (B = 8 over 3 workers: 3/3/2, micro_batch 4) sum
  // the same gradients in another fp32 order. Every tensor stays within ~1e-6 except the
  // attention's key bias, whose true gradient is exactly 0 (softmax ignores a per-row constant):
  // its gradient is rounding noise, which AdamW normalises into steps of about lr·|g|/eps, so
  // any change of summation order moves it. Reported, with a bound that holds for that noise.
  Config three = one;
  three.run.dir = dir / "run3";
  three.cluster.workers = 3;
  three.run.threads = 1;
  const RunSummary s3 = run_threads_job(three);
  const auto c = final_state(three, s3);
  const Worst w3 = worst_rel_l2(layout_for(one), c.params, a.params);
  double key_bias = 0;
  const Worst w3_rest =
      worst_rel_l2_without_key_bias(layout_for(one), c.params, a.params, &key_bias);
  MESSAGE("1 vs 3 workers (micro-batches cut differently): worst per-tensor relative L2 "
          << w3.value << " (" << w3.tensor << "); without the attention key biases "
          << w3_rest.value << " (" << w3_rest.tensor << "); key biases " << key_bias);
  CHECK(w3_rest.value <= 1e-5);
  CHECK(key_bias <= 1e-3);
}

TEST_CASE("coordinator job: 1 vs 2 workers on the quickstart model - same run.threads") {
  // configs/quickstart.yaml's model and batch (T 128, C 128, L 4, NH 4, B 16, micro 8) at
  // run.threads 2: 1 worker x 2 threads vs 2 workers x 1 thread.
  TempDir dir;
  write_corpus(dir / "train.tok", 60000, 4);
  Config one = small_config(dir);
  one.model.seq_len = 128;
  one.model.n_embd = 128;
  one.model.n_layer = 4;
  one.model.n_head = 4;
  one.train.batch_size = 16;
  one.train.micro_batch = 8;
  one.optim.lr = 3e-3;
  one.run.threads = 0;  // cores shared by the workers, as `ptrain run` does
  Config two = one;
  two.run.dir = dir / "run2";
  two.cluster.workers = 2;
  two.cluster.servers = 2;
  const RunSummary s1 = run_threads_job(one);
  const RunSummary s2 = run_threads_job(two);
  const Worst w = worst_rel_l2(layout_for(one), final_state(two, s2).params,
                               final_state(one, s1).params);
  MESSAGE("quickstart model, 1 worker/1 server vs 2 workers/2 servers: worst per-tensor relative "
          "L2 " << w.value << " (" << w.tensor << "); " << s1.mean_step_s << " vs "
                << s2.mean_step_s << " s/step");
  CHECK(w.value <= 1e-5);
}

TEST_CASE("coordinator job: 1 server vs 2 and 3 servers") {
  TempDir dir;
  Config one = small_config(dir);
  one.cluster.workers = 2;
  const RunSummary s1 = run_threads_job(one);
  const auto a = final_state(one, s1);
  for (int64_t S : {2, 3}) {
    Config many = one;
    many.run.dir = dir / ("run-s" + std::to_string(S));
    many.cluster.servers = S;
    const auto b = final_state(many, run_threads_job(many));
    const Worst w = worst_rel_l2(layout_for(one), b.params, a.params);
    MESSAGE("1 vs " << S << " servers (2 workers): worst per-tensor relative L2 " << w.value
                    << " (" << w.tensor << "), bitwise equal: " << (b.params == a.params));
    CHECK(w.value <= 1e-5);
  }
  // Splitting the servers changes only the order of the fp64 norm sum: with clipping off the
  // update is element-wise and the weights are bitwise equal.
  Config c1 = one;
  c1.optim.grad_clip = 0;
  c1.run.dir = dir / "noclip-1";
  Config c2 = c1;
  c2.run.dir = dir / "noclip-2";
  c2.cluster.servers = 2;
  CHECK(final_state(c1, run_threads_job(c1)).params ==
        final_state(c2, run_threads_job(c2)).params);
}

TEST_CASE("coordinator job: a run repeats bitwise - and writes train.jsonl and checkpoints") {
  TempDir dir;
  Config a = small_config(dir);
  a.cluster.workers = 2;
  a.cluster.servers = 2;
  a.checkpoint.every_steps = 2;
  a.checkpoint.keep = 2;
  a.train.log_every = 2;
  Config b = a;
  b.run.dir = dir / "again";
  const RunSummary sa = run_threads_job(a);
  const RunSummary sb = run_threads_job(b);
  const auto ca = final_state(a, sa), cb = final_state(b, sb);
  CHECK(ca.params == cb.params);
  CHECK(ca.m == cb.m);
  CHECK(ca.v == cb.v);
  CHECK(sa.final_loss == sb.final_loss);

  // Checkpoints at 2, 4 and the final 5; keep 2; latest -> step 5.
  CHECK_FALSE(fs::exists(a.run.dir + "/checkpoints/step-00000002"));
  CHECK(fs::exists(a.run.dir + "/checkpoints/step-00000004"));
  CHECK(fs::exists(a.run.dir + "/checkpoints/step-00000005"));
  CHECK(fs::read_symlink(a.run.dir + "/checkpoints/latest") == "step-00000005");
  const CheckpointMeta meta = read_checkpoint_meta(sa.last_checkpoint);
  CHECK(meta.step == 5);
  CHECK(meta.tokens_seen == 5 * 8 * 16);
  CHECK(meta.data.seed == a.run.seed);
  CHECK(meta.data.position == (5 * 8) % 1249);  // 20000 tokens / 16 = 1249 windows
  CHECK(!meta.tokenizer_json.empty());
  CHECK(meta.config_yaml.find("workers: 2") != std::string::npos);

  // train.jsonl: the first step, every log_every, the final step; loss falls from about ln(257).
  const auto lines = log_lines(a);
  std::vector<int64_t> steps;
  for (const auto& j : lines) steps.push_back(j.at("step").get<int64_t>());
  CHECK(steps == std::vector<int64_t>{1, 2, 4, 5});
  for (const auto& j : lines) {
    for (const char* k : {"step", "loss", "lr", "tokens", "elapsed_s", "tokens_per_s"}) {
      CHECK(j.contains(k));
    }
  }
  CHECK(lines[0].at("loss").get<double>() == doctest::Approx(std::log(257.0)).epsilon(0.1));
  CHECK(lines[0].at("lr").get<double>() == doctest::Approx(a.optim.lr / 2));  // warmup 1/2
  CHECK(lines[3].at("tokens").get<int64_t>() == 5 * 8 * 16);
  CHECK(lines[3].at("loss").get<double>() < lines[0].at("loss").get<double>());
}

TEST_CASE("coordinator job: steps begun at the previous commit == steps begun after the update - bitwise") {
  // Without anything due between steps, step t+1 is begun right after step t's StepCommit (the
  // workers' pulls wait on the servers); a checkpoint due after every step forces the old order
  // (begin only once the update is applied and the checkpoint written). Same weights, moments,
  // losses and ledger.
  TempDir dir;
  Config early = small_config(dir);
  early.cluster.workers = 2;
  early.cluster.servers = 2;
  early.train.log_every = 1;
  Config after = early;
  after.run.dir = dir / "after";
  after.checkpoint.every_steps = 1;
  const RunSummary se = run_threads_job(early);
  const RunSummary sa = run_threads_job(after);
  const auto ce = final_state(early, se), ca = final_state(after, sa);
  CHECK(ce.params == ca.params);
  CHECK(ce.m == ca.m);
  CHECK(ce.v == ca.v);
  const auto le = log_lines(early), la = log_lines(after);
  REQUIRE(le.size() == la.size());
  for (size_t i = 0; i < le.size(); ++i) {
    CHECK(le[i].at("loss").get<double>() == la[i].at("loss").get<double>());
    CHECK(le[i].at("grad_norm").get<double>() == la[i].at("grad_norm").get<double>());
  }
  std::vector<std::string> ledger_e, ledger_a;
  for (const auto& l : read_lines(early.run.dir + "/ledger.jsonl")) {
    const auto j = nlohmann::json::parse(l);
    if (j.contains("windows")) ledger_e.push_back(j.at("windows").dump());
  }
  for (const auto& l : read_lines(after.run.dir + "/ledger.jsonl")) {
    const auto j = nlohmann::json::parse(l);
    if (j.contains("windows")) ledger_a.push_back(j.at("windows").dump());
  }
  CHECK(ledger_e.size() == 5);
  CHECK(ledger_e == ledger_a);
}

TEST_CASE("coordinator job: N steps straight == N/2 + stop + resume (auto) + N/2 - bitwise") {
  TempDir dir;
  Config straight = small_config(dir);
  straight.train.steps = 6;
  straight.cluster.workers = 2;
  straight.cluster.servers = 2;
  straight.train.batch_size = 300;  // 6 x 300 windows > 1249: the data rolls into epoch 2
  straight.train.micro_batch = 64;
  const RunSummary s = run_threads_job(straight);
  const auto want = final_state(straight, s);

  Config halves = straight;
  halves.run.dir = dir / "halves";
  halves.checkpoint.resume = "auto";
  ThreadsJobOptions stop_at_3;
  stop_at_3.stop_requested = [](int64_t step) { return step == 3; };
  const RunSummary first = run_threads_job(halves, stop_at_3);
  CHECK(first.interrupted);
  CHECK(first.final_step == 3);
  CHECK(fs::exists(halves.run.dir + "/checkpoints/step-00000003"));
  const CheckpointMeta mid = read_checkpoint_meta(first.last_checkpoint);
  CHECK(mid.data.epoch == 0);
  CHECK(mid.data.position == 900);

  const RunSummary second = run_threads_job(halves);
  CHECK(second.start_step == 3);
  CHECK(second.final_step == 6);
  CHECK_FALSE(second.interrupted);
  const auto got = final_state(halves, second);
  CHECK(got.params == want.params);
  CHECK(got.m == want.m);
  CHECK(got.v == want.v);
  CHECK(second.final_loss == s.final_loss);
  CHECK(read_checkpoint_meta(second.last_checkpoint).tokens_seen == 6 * 300 * 16);
  CHECK(read_checkpoint_meta(second.last_checkpoint).data.epoch == 1);

  // train.jsonl of the resumed run continues the first half's (appended, steps 1..6).
  std::vector<int64_t> steps;
  for (const auto& j : log_lines(halves)) steps.push_back(j.at("step").get<int64_t>());
  CHECK(steps == std::vector<int64_t>{1, 2, 3, 4, 5, 6});

  // Running again: nothing to do, nothing changes.
  const RunSummary third = run_threads_job(halves);
  CHECK(third.start_step == 6);
  CHECK(third.final_step == 6);

  // An explicit checkpoint path resumes too (here: from step 3 into a fresh folder).
  Config by_path = straight;
  by_path.run.dir = dir / "by-path";
  by_path.checkpoint.resume = halves.run.dir + "/checkpoints/step-00000003";
  const RunSummary fourth = run_threads_job(by_path);
  CHECK(fourth.start_step == 3);
  CHECK(final_state(by_path, fourth).params == want.params);
}

// docs/elastic.md, "Determinism, stated exactly": a step's gradient is a left fold of its
// micro-batch gradients (each computed from zero, in window order) when every worker but the
// first holds exactly one micro-batch — 1 worker, or `batch_size / micro_batch` workers — so a
// resume between such worker counts is bitwise the straight run; other counts fold in another
// order (B 8, micro-batch 2: 2 workers add (m1+m2)+(m3+m4); 3 workers cut 3/3/2) and are equal
// only to rounding.
TEST_CASE("coordinator job: resume at another worker count - bitwise between 1 and B/micro workers - to rounding otherwise") {
  TempDir dir;
  Config straight = small_config(dir);
  straight.train.steps = 6;
  straight.train.batch_size = 8;
  straight.train.micro_batch = 2;
  straight.cluster.servers = 2;
  straight.run.threads = 1;  // one compute thread per worker in every run
  const RunSummary s = run_threads_job(straight);
  const auto want = final_state(straight, s);

  // Steps 1-3 with `first` workers, then a resume with `then`.
  auto resumed = [&](int64_t first, int64_t then) {
    Config c = straight;
    c.run.dir = dir / fmt::format("{}-then-{}", first, then);
    c.cluster.workers = first;
    c.checkpoint.resume = "auto";
    ThreadsJobOptions stop_at_3;
    stop_at_3.stop_requested = [](int64_t step) { return step == 3; };
    REQUIRE(run_threads_job(c, stop_at_3).final_step == 3);
    c.cluster.workers = then;
    const RunSummary r = run_threads_job(c);
    CHECK(r.start_step == 3);
    CHECK(r.final_step == 6);
    return final_state(c, r);
  };
  const auto four_one = resumed(4, 1);
  CHECK(four_one.params == want.params);
  CHECK(four_one.m == want.m);
  CHECK(four_one.v == want.v);

  for (const auto& [first, then] : {std::pair<int64_t, int64_t>{1, 2}, {4, 3}}) {
    CAPTURE(first);
    CAPTURE(then);
    const auto got = resumed(first, then);
    double key_bias = 0;
    const Worst w = worst_rel_l2_without_key_bias(layout_for(straight), got.params, want.params,
                                                  &key_bias);
    MESSAGE("1 worker straight vs " << first << " then " << then
            << " workers: worst per-tensor relative L2 " << w.value << " (" << w.tensor
            << ") without the attention key biases; key biases " << key_bias << "; bitwise "
            << (got.params == want.params));
    CHECK(w.value <= 1e-5);
    CHECK(key_bias <= 1e-3);  // rounding noise of a gradient that is exactly 0 (see above)
  }
}

TEST_CASE("coordinator job: train.jsonl has every field - a resume drops the lines past its step and continues elapsed_s") {
  TempDir dir;
  Config c = small_config(dir);
  c.train.steps = 6;
  c.train.log_every = 2;
  c.checkpoint.every_steps = 2;
  c.checkpoint.keep = 5;
  c.optim.grad_clip = 1e-3;  // every step clipped
  c.data.val = c.data.train;
  c.train.eval_every = 3;
  c.train.eval_windows = 8;
  run_threads_job(c);
  const auto first = log_lines(c);
  for (const auto& j : first) {
    if (j.contains("val_loss")) {
      CHECK(j.at("val_ppl").get<double>() == doctest::Approx(std::exp(j.at("val_loss").get<double>())));
      CHECK(j.at("time").get<std::string>().size() == 24);
      continue;
    }
    for (const char* k : {"step", "loss", "lr", "grad_norm", "clipped", "tokens", "tokens_per_s", "step_s",
                          "bytes_per_token", "elapsed_s", "time"}) {
      CHECK_MESSAGE(j.contains(k), k);
    }
    CHECK(j.at("clipped") == true);
    CHECK_FALSE(j.contains("accuracy"));  // masked-LM (BERT) runs only
    CHECK(j.at("grad_norm").get<double>() > 1e-3);
    CHECK(j.at("step_s").get<double>() > 0);
    // Each step pushes and pulls every parameter (4 bytes each way, plus frame headers) for its
    // B*T tokens; the line at step 4 also holds the evaluation's pull of step 3.
    const double per_step = 2.0 * 4 * static_cast<double>(layout_for(c).total()) / (8 * 16);
    const double bpt = j.at("bytes_per_token");
    if (j.at("step") == 4) {
      CHECK(bpt == doctest::Approx(per_step * 1.25).epsilon(0.01));
    } else {
      CHECK(bpt == doctest::Approx(per_step).epsilon(0.01));
    }
    const std::string t = j.at("time");  // 2026-01-31T12:34:56.789Z
    CHECK(t.size() == 24);
    CHECK(t[4] == '-');
    CHECK(t[10] == 'T');
    CHECK(t.back() == 'Z');
  }
  // Resume into the same folder from step 4: lines 5 and 6 (and the val line at 6) are dropped,
  // then written again; no step appears twice and elapsed_s never goes back.
  Config again = c;
  again.checkpoint.resume = c.run.dir + "/checkpoints/step-00000004";
  const RunSummary s = run_threads_job(again);
  CHECK(s.start_step == 4);
  const auto second = log_lines(again);
  std::vector<std::pair<int64_t, bool>> keys;
  double elapsed = 0.0;
  for (const auto& j : second) {
    keys.emplace_back(j.at("step").get<int64_t>(), j.contains("val_loss"));
    CHECK(j.at("elapsed_s").get<double>() >= elapsed);
    elapsed = j.at("elapsed_s").get<double>();
  }
  const std::vector<std::pair<int64_t, bool>> want{{1, false}, {2, false}, {3, true}, {4, false},
                                                   {5, false}, {6, false}, {6, true}};
  CHECK(keys == want);
  CHECK(second.size() == first.size() + 1);  // step 5 is logged as the resumed run's first step
  CHECK(second[3] == first[3]);  // lines up to the resume step are kept as they were
}

TEST_CASE("coordinator job: a NaN stops the job naming step and tensor - latest stays good") {
  TempDir dir;
  Config c = small_config(dir);
  c.cluster.workers = 2;
  c.cluster.servers = 2;
  c.optim.lr = 1e30;  // step 1 blows the weights up; step 2's forward overflows
  c.optim.warmup_steps = 0;
  c.optim.grad_clip = 0;
  c.checkpoint.every_steps = 1;
  std::string what;
  try {
    run_threads_job(c);
    FAIL("the job should have stopped");
  } catch (const NumericError& e) {
    what = e.what();
  }
  MESSAGE("NaN message: " << what);
  CHECK(what.find("step 2") != std::string::npos);
  CHECK(what.find("transformer.") != std::string::npos);
  CHECK(what.find("not finite") != std::string::npos);
  CHECK(fs::read_symlink(c.run.dir + "/checkpoints/latest") == "step-00000001");
  CHECK_FALSE(fs::exists(c.run.dir + "/checkpoints/step-00000002"));
  CHECK(find_latest_checkpoint(c.run.dir).value().find("step-00000001") != std::string::npos);
}

TEST_CASE("coordinator job: settings it cannot run are refused") {
  TempDir dir;
  Config c = small_config(dir);
  c.cluster.launch = Launch::kProcesses;
  CHECK_THROWS_WITH_AS(run_threads_job(c), doctest::Contains("runs cluster.launch: threads only"),
                       ConfigError);
  c = small_config(dir);
  c.data.train = dir / "missing.tok";
  CHECK_THROWS_AS(run_threads_job(c), IoError);
  c = small_config(dir);
  c.model.seq_len = 30000;  // longer than the corpus: no complete window
  c.run.max_memory = int64_t{1} << 50;  // (the memory estimate would refuse it first)
  CHECK_THROWS_WITH_AS(run_threads_job(c), doctest::Contains("no complete window"), DataError);
  c = small_config(dir);
  write_corpus(dir / "val.tok", 10, 3);
  c.data.val = dir / "val.tok";
  CHECK_THROWS_WITH_AS(run_threads_job(c), doctest::Contains("data.val"), DataError);
}

TEST_CASE("coordinator job: evaluation writes val_loss lines") {
  TempDir dir;
  Config c = small_config(dir);
  write_corpus(dir / "val.tok", 3000, 2);
  c.data.val = dir / "val.tok";
  c.train.eval_every = 2;
  c.train.eval_windows = 5;
  const RunSummary s = run_threads_job(c);
  REQUIRE(s.final_val_loss);
  std::vector<int64_t> eval_steps;
  for (const auto& j : log_lines(c)) {
    if (j.contains("val_loss")) {
      eval_steps.push_back(j.at("step").get<int64_t>());
      CHECK(std::isfinite(j.at("val_loss").get<double>()));
    }
  }
  CHECK(eval_steps == std::vector<int64_t>{2, 4, 5});
  CHECK(*s.final_val_loss < std::log(257.0));
}

TEST_CASE("coordinator job: in-run val_loss equals ptrain eval of the checkpoint at that step - 1 or 2 workers") {
  // Every window of data.val (eval_windows 0): 3000 tokens = 187 windows of 16 + 1, 47 batches of
  // micro_batch 4 (the last one short), on 1 worker, or split 24/23 over 2 workers. The per-batch
  // sums are added in batch order, as `ptrain eval` adds them: the same double, bitwise. The two
  // runs train bitwise the same weights (one thread per worker, clipping off: see the 1 vs 2
  // worker and server cases above), so their val_loss lines are bitwise equal too.
  TempDir dir;
  write_corpus(dir / "val.tok", 3000, 2);
  Config one = small_config(dir);
  one.data.val = dir / "val.tok";
  one.train.eval_windows = 0;
  one.train.eval_every = 2;
  one.checkpoint.every_steps = 2;
  one.checkpoint.keep = 5;
  one.run.threads = 1;
  one.optim.grad_clip = 0;
  one.cluster.servers = 2;
  Config two = one;
  two.run.dir = dir / "run2";
  two.cluster.workers = 2;
  two.run.threads = 1;  // threads of each worker
  std::map<int64_t, double> by_workers[2];
  int i = 0;
  for (const Config* c : {&one, &two}) {
    const RunSummary s = run_threads_job(*c);
    for (const auto& j : log_lines(*c)) {
      if (j.contains("val_loss")) by_workers[i][j.at("step").get<int64_t>()] = j.at("val_loss");
    }
    REQUIRE(by_workers[i].size() == 3);  // steps 2, 4 and the final 5
    CHECK(*s.final_val_loss == by_workers[i].at(5));
    for (const auto& [step, val] : by_workers[i]) {
      const std::string ck = c->run.dir + fmt::format("/checkpoints/step-{:08d}", step);
      const double eval = ptrain_eval_loss(ck, c->data.val);
      MESSAGE(c->cluster.workers << " worker(s), step " << step << ": val_loss " << val
                                 << ", ptrain eval " << eval);
      CHECK(val == eval);  // bitwise, not approximately
    }
    ++i;
  }
  CHECK(by_workers[0] == by_workers[1]);
}
