// PyTorch's 10-step training trajectory (tests/fixtures/trajectory_v1.*, written by
// scripts/gen_fixtures.py with torch's own AdamW, clip_grad_norm_ and LambdaLR warmup+cosine)
// replayed through the whole threads job: coordinator (data plan, clipping), parameter servers
// (aggregation, LR schedule, AdamW) and workers (the model), over the in-process transport.
//
// The job reads its batches from a token file, so the fixture's batches are laid out in one: the
// data plan's epoch-0 permutation decides which window step t, sequence b reads (position
// t·B + b); that window is filled with the fixture's batch[t][b]. Windows of stride T overlap in
// one token, so a seed is chosen for which no two used windows are neighbours. The fixture's
// initial weights enter as a step-0 checkpoint (`checkpoint.resume: PATH`).
#include "common/config/config.hpp"
#include "common/data/tokenizer.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/io/token_file.hpp"
#include "coordinator/data_plan.hpp"
#include "support/job_test_util.hpp"
#include "launch/threads_job.hpp"
#include "common/optim/lr_schedule.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

using namespace ptrain;
using namespace ptrain::testing;

namespace {

constexpr int kFixtureVersion = 1;

struct Fixture {
  nlohmann::json manifest;
  std::string blob;
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    size_t offset = 0, nbytes = 0;
  };
  std::map<std::string, Entry> tensors;

  template <class T>
  std::vector<T> get(const std::string& name) const {
    auto it = tensors.find(name);
    REQUIRE_MESSAGE(it != tensors.end(), "fixture has no tensor " << name);
    std::vector<T> out(it->second.nbytes / sizeof(T));
    std::memcpy(out.data(), blob.data() + it->second.offset, it->second.nbytes);
    return out;
  }
};

Fixture load(const std::string& dir, const std::string& name) {
  Fixture f;
  std::ifstream mj(dir + "/" + name + ".json");
  REQUIRE_MESSAGE(mj.good(), "missing fixture " << dir << "/" << name
                                                << ".json: run /usr/bin/python3 scripts/gen_fixtures.py");
  f.manifest = nlohmann::json::parse(mj);
  REQUIRE_MESSAGE(f.manifest.value("version", 0) == kFixtureVersion,
                  name << " has fixture version " << f.manifest.value("version", 0)
                       << ", this test reads " << kFixtureVersion
                       << ": regenerate with /usr/bin/python3 scripts/gen_fixtures.py");
  std::ifstream bj(dir + "/" + f.manifest.at("blob").get<std::string>(), std::ios::binary);
  f.blob.assign(std::istreambuf_iterator<char>(bj), {});
  REQUIRE(f.blob.size() == f.manifest.at("blob_bytes").get<size_t>());
  for (const auto& t : f.manifest.at("tensors")) {
    Fixture::Entry e{t.at("dtype"), t.at("shape").get<std::vector<int64_t>>(),
                     t.at("offset").get<size_t>(), t.at("nbytes").get<size_t>()};
    REQUIRE(e.offset + e.nbytes <= f.blob.size());
    f.tensors[t.at("name").get<std::string>()] = e;
  }
  return f;
}

struct Replay {
  std::vector<double> losses;  // from train.jsonl
  std::vector<double> lrs;
  std::vector<float> final_params;
};

// Runs the fixture's trajectory as a threads job with W workers and S servers.
Replay replay(const Fixture& fx, const TempDir& dir, int64_t W, int64_t S, int64_t micro) {
  const auto& c = fx.manifest.at("config");
  const auto& o = fx.manifest.at("optim");
  const int64_t V = c.at("V"), Vp = c.at("Vp"), T = c.at("T"), L = c.at("L"), NH = c.at("NH"),
                C = c.at("C"), B = c.at("B"), steps = o.at("steps");
  REQUIRE(V == 257);  // the byte tokenizer's vocabulary

  // A seed whose first steps·B permutation positions are pairwise non-adjacent windows.
  const int64_t N = 400;
  uint64_t seed = 1;
  std::vector<int64_t> perm;
  for (;; ++seed) {
    perm = window_permutation(seed, 0, N);
    std::vector<int64_t> used(perm.begin(), perm.begin() + steps * B);
    std::sort(used.begin(), used.end());
    bool ok = true;
    for (size_t i = 1; i < used.size(); ++i) ok = ok && used[i] - used[i - 1] >= 2;
    if (ok) break;
  }
  const auto inputs = fx.get<int32_t>("inputs");  // (steps, B, T+1)
  std::vector<uint32_t> tokens(static_cast<size_t>(N * T + 1), 10u);
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t w = perm[static_cast<size_t>(t * B + b)];
      for (int64_t j = 0; j <= T; ++j) {
        tokens[static_cast<size_t>(w * T + j)] =
            static_cast<uint32_t>(inputs[static_cast<size_t>((t * B + b) * (T + 1) + j)]);
      }
    }
  }
  const std::string train = dir / "trajectory.tok";
  write_token_file(train, V, tokens);

  Config cfg;
  cfg.cluster.launch = Launch::kThreads;
  cfg.source = "<trajectory test>";
  cfg.run.dir = dir / "run";
  cfg.run.seed = seed;
  cfg.run.threads = 2;
  cfg.data.train = train;
  cfg.data.tokenizer = "byte";
  cfg.model = ModelConfig{Vp, T, L, NH, C};
  cfg.train.steps = steps;
  cfg.train.batch_size = B;
  cfg.train.micro_batch = micro;
  cfg.train.eval_every = 0;
  cfg.train.log_every = 1;
  cfg.optim.lr = o.at("lr");
  cfg.optim.min_lr = o.at("min_lr");
  cfg.optim.warmup_steps = o.at("warmup_steps");
  cfg.optim.weight_decay = o.at("weight_decay");
  cfg.optim.beta1 = o.at("beta1");
  cfg.optim.beta2 = o.at("beta2");
  cfg.optim.eps = o.at("eps");
  cfg.optim.grad_clip = o.at("grad_clip");
  cfg.cluster.workers = W;
  cfg.cluster.servers = S;
  cfg.checkpoint.every_steps = 0;

  // The fixture's initial weights as a step-0 checkpoint.
  const ParamLayout layout(model_dims(cfg.model, V));
  CheckpointData init;
  init.params.assign(static_cast<size_t>(layout.total()), 0.0f);
  for (const auto& t : layout.tensors()) {
    const auto p = fx.get<float>("param0/" + t.name);
    REQUIRE(static_cast<int64_t>(p.size()) == t.count);
    std::copy(p.begin(), p.end(), init.params.begin() + t.offset);
  }
  init.m.assign(init.params.size(), 0.0f);
  init.v.assign(init.params.size(), 0.0f);
  init.meta.step = 0;
  init.meta.config_yaml = cfg.to_yaml();
  init.meta.tokenizer_json = make_byte_tokenizer()->to_json();
  init.meta.data = DataState{seed, 0, 0, {}};
  const std::string init_file = dir / "init.h5";
  write_checkpoint_file(init_file, layout, init);
  cfg.checkpoint.resume = init_file;

  const RunSummary s = run_threads_job(cfg);
  REQUIRE(s.final_step == steps);
  Replay r;
  for (const auto& line : read_lines(cfg.run.dir + "/train.jsonl")) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    r.losses.push_back(j.at("loss").get<double>());
    r.lrs.push_back(j.at("lr").get<double>());
  }
  r.final_params = read_checkpoint(s.last_checkpoint, layout, false).params;
  return r;
}

std::vector<float> gather_final(const Fixture& fx, const ParamLayout& layout) {
  std::vector<float> out(static_cast<size_t>(layout.total()));
  for (const auto& t : layout.tensors()) {
    const auto w = fx.get<float>("final/" + t.name);
    std::copy(w.begin(), w.end(), out.begin() + t.offset);
  }
  return out;
}

void compare(const Fixture& fx, const Replay& r, const std::string& label) {
  const auto want_loss = fx.get<float>("loss");
  const auto want_lr = fx.get<double>("lr");
  REQUIRE(r.losses.size() == want_loss.size());
  double worst_loss = 0, worst_lr = 0;
  for (size_t t = 0; t < want_loss.size(); ++t) {
    worst_loss = std::max(worst_loss, std::fabs(r.losses[t] - want_loss[t]) / want_loss[t]);
    worst_lr = std::max(worst_lr, std::fabs(r.lrs[t] - want_lr[t]) / want_lr[t]);
  }
  const auto& c = fx.manifest.at("config");
  const ParamLayout layout(ModelDims{c.at("V"), c.at("Vp"), c.at("T"), c.at("L"), c.at("NH"),
                                     c.at("C")});
  Worst worst;
  double key_bias = 0;
  const Worst worst_rest =
      worst_rel_l2_without_key_bias(layout, r.final_params, gather_final(fx, layout), &key_bias);
  double worst_elem = 0;
  std::string worst_elem_tensor;
  for (const auto& t : layout.tensors()) {
    const auto want = fx.get<float>("final/" + t.name);
    const double e = rel_l2(r.final_params.data() + t.offset, want.data(), t.count);
    if (e >= worst.value) worst = {e, t.name};
    // Largest element error relative to the tensor's largest magnitude.
    float amax = 0;
    for (float x : want) amax = std::max(amax, std::fabs(x));
    for (int64_t i = 0; i < t.count; ++i) {
      const double d = std::fabs(r.final_params[static_cast<size_t>(t.offset + i)] -
                                 want[static_cast<size_t>(i)]) /
                       std::max(amax, 1e-12f);
      if (d > worst_elem) {
        worst_elem = d;
        worst_elem_tensor = t.name;
      }
    }
  }
  MESSAGE(label << ": worst loss relative error " << worst_loss << ", lr " << worst_lr
                << "; final weights: worst per-tensor relative L2 " << worst.value << " ("
                << worst.tensor << "), without the attention key biases " << worst_rest.value
                << " (" << worst_rest.tensor << "), key biases " << key_bias
                << "; worst element / tensor max " << worst_elem << " (" << worst_elem_tensor
                << ")");
  CHECK(worst_loss <= 2e-5);
  CHECK(worst_lr <= 1e-12);
  CHECK(worst_rest.value <= 1e-4);
  // The attention key bias has an exactly-zero true gradient: torch's rounding noise in it and
  // ours differ, and AdamW normalises that noise (see job_test_util.hpp).
  CHECK(key_bias <= 1e-2);
}

}  // namespace

TEST_CASE("paramserver: the LR schedule equals the fixture's (torch LambdaLR) exactly") {
  const Fixture fx = load(PTRAIN_TEST_FIXTURES, "trajectory_v1");
  const auto& o = fx.manifest.at("optim");
  const LrSchedule s{o.at("lr"), o.at("min_lr"), o.at("warmup_steps"), o.at("steps")};
  const auto lr = fx.get<double>("lr");
  for (size_t t = 0; t < lr.size(); ++t) {
    CAPTURE(t);
    CHECK(s.at(static_cast<int64_t>(t)) == doctest::Approx(lr[t]).epsilon(1e-14));
  }
}

TEST_CASE("paramserver: PyTorch's 10-step trajectory replayed through the threads job") {
  const Fixture fx = load(PTRAIN_TEST_FIXTURES, "trajectory_v1");
  {
    TempDir dir("trajectory");
    compare(fx, replay(fx, dir, 1, 1, fx.manifest.at("config").at("B")), "1 worker, 1 server");
  }
  {
    TempDir dir("trajectory");
    compare(fx, replay(fx, dir, 2, 2, 2), "2 workers, 2 servers");
  }
}
