// The GPT model against PyTorch's golden fixtures (scripts/gen_fixtures.py, tests/fixtures/), and
// live against PyTorch when /usr/bin/python3 can import torch; plus the model's own invariants:
// padded rows, decoder = full forward, bitwise determinism, micro-batch accumulation, initialisation.
// The fixture format is documented at the top of scripts/gen_fixtures.py; support/fixture.hpp reads it.
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"

#include "common/error.hpp"
#include "common/tensor/gpt_init.hpp"
#include "common/util/fs.hpp"
#include "ptrain/build_config.hpp"
#include "support/fixture.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace ptrain {
namespace {

using testing::Fixture;
using testing::fixture_path;
using testing::load_fixture;
using testing::torch_available;
using testing::TorchTempDir;
namespace fs = std::filesystem;

const char* const kGptFixtures[] = {"gpt_odd", "gpt_unpadded", "gpt_long"};

// ---- comparison against one gpt fixture ---------------------------------------------------------

struct Worst {
  double rel = 0.0;
  std::string tensor;
};

// Runs the model on the fixture's weights and inputs; checks logits, loss and every gradient.
Worst check_gpt_fixture(const Fixture& fx) {
  const ModelDims d = fx.dims();
  const int64_t B = fx.cfg("B"), T = d.T, N = B * T;
  ParamLayout layout(d);
  auto backend = make_cpu_backend(2);
  Gpt gpt(layout, *backend, B);
  const std::vector<float> params = fx.flat(layout, "param/");
  GptState state(layout, *backend);
  state.upload_params(params);
  const std::vector<int32_t> windows = fx.i32("inputs");
  REQUIRE(static_cast<int64_t>(windows.size()) == B * (T + 1));

  // Logits.
  std::vector<int32_t> inputs(static_cast<size_t>(N));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) inputs[b * T + t] = windows[b * (T + 1) + t];
  std::vector<float> logits(static_cast<size_t>(N * d.Vp));
  gpt.forward_logits(state, inputs, B, T, logits);
  const std::vector<float> ref_logits = fx.f32("logits");
  REQUIRE(ref_logits.size() == logits.size());
  double lmax = 0, lerr = 0;
  int64_t inf_mismatch = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const bool pad = static_cast<int64_t>(i % d.Vp) >= d.V;
    if (pad) {
      inf_mismatch += !(std::isinf(logits[i]) && logits[i] < 0 && std::isinf(ref_logits[i]));
      continue;
    }
    lmax = std::max(lmax, std::fabs(double(ref_logits[i])));
    lerr = std::max(lerr, std::fabs(double(logits[i]) - ref_logits[i]));
  }
  INFO(fx.path);
  CHECK(inf_mismatch == 0);
  CHECK(lerr / lmax <= 1e-5);

  // Loss, from both entry points.
  const double ref_loss = fx.f32("loss").at(0);
  const LossSum fl = gpt.forward_loss(state, windows, B, T);
  CHECK(fl.tokens == N);
  CHECK(std::fabs(fl.mean() - ref_loss) / ref_loss <= 1e-5);

  // Every gradient of the mean loss.
  state.zero_grads();
  const LossSum bl = gpt.forward_backward(state, windows, B, T, 1.0f / static_cast<float>(N));
  std::vector<float> grads(static_cast<size_t>(layout.total()));
  state.download_grads(grads);
  CHECK(std::fabs(bl.mean() - ref_loss) / ref_loss <= 1e-5);
  CHECK(bl.loss_sum == fl.loss_sum);
  Worst worst;
  for (const auto& t : layout.tensors()) {
    const std::vector<float> ref = fx.f32("grad/" + t.name);
    double gmax = 0, err = 0;
    for (int64_t i = 0; i < t.count; ++i) {
      gmax = std::max(gmax, std::fabs(double(ref[i])));
      err = std::max(err, std::fabs(double(grads[t.offset + i]) - ref[i]));
    }
    const double rel = gmax > 0 ? err / gmax : err;
    INFO(fmt::format("{}: max abs error {:.3g}, max |ref| {:.3g}, relative {:.3g}", t.name, err,
                     gmax, rel));
    CHECK(rel <= 1e-5);
    if (rel > worst.rel) worst = {rel, t.name};
  }
  // Padded vocabulary rows: gradient exactly 0.
  int64_t nonzero = 0;
  for (int64_t i = layout.wte() + d.V * d.C; i < layout.wte() + d.Vp * d.C; ++i) nonzero += grads[i] != 0.0f;
  CHECK(nonzero == 0);
  MESSAGE(fmt::format("{}: logits rel {:.2e}, loss {:.7f} vs torch {:.7f}, worst gradient rel {:.2e} ({})",
                      fx.m.at("name").get<std::string>(), lerr / lmax, bl.mean(), ref_loss,
                      worst.rel, worst.tensor));
  return worst;
}

// Deterministic random weights at GPT-2 scale ×`gain` (so that attention is far from uniform).
std::vector<float> random_params(const ParamLayout& layout, uint64_t seed, float gain) {
  std::vector<float> p(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, seed, p);
  std::mt19937_64 rng(seed + 1);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (const auto& t : layout.tensors()) {
    const bool padded_wte = t.offset == layout.wte();
    for (int64_t i = 0; i < t.count; ++i) {
      if (padded_wte && i >= layout.dims().V * layout.dims().C) break;
      float& x = p[t.offset + i];
      x = t.shape.size() >= 2 ? x * gain : x + 0.05f * n01(rng);
    }
  }
  return p;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(V));
  return v;
}

}  // namespace

TEST_CASE("model matches the committed PyTorch fixtures") {
  for (const std::string name : kGptFixtures) {
    CAPTURE(name);
    const Fixture fx = load_fixture(fixture_path(PTRAIN_TEST_FIXTURES, name));
    CHECK(fx.m.at("kind") == "gpt");
    check_gpt_fixture(fx);
  }
}

TEST_CASE("model matches PyTorch live (runs scripts/gen_fixtures.py when torch is importable)") {
  if (!torch_available()) {
    MESSAGE("torch not importable by '" << PTRAIN_TORCH_PYTHON << "': live comparison skipped");
    return;
  }
  TorchTempDir tmp;
  const std::string cmd = fmt::format("'{}' '{}/gen_fixtures.py' --out '{}' 2>'{}/log.txt'",
                                      PTRAIN_TORCH_PYTHON, PTRAIN_TEST_SCRIPTS, tmp.path, tmp.path);
  const int rc = std::system(cmd.c_str());
  INFO(cmd);
  REQUIRE(rc == 0);
  for (const std::string name : kGptFixtures) {
    CAPTURE(name);
    const Fixture live = load_fixture(fixture_path(tmp.path, name));
    check_gpt_fixture(live);
    const Fixture committed = load_fixture(fixture_path(PTRAIN_TEST_FIXTURES, name));
    if (live.blob != committed.blob) {
      MESSAGE(name << ": live output differs from the committed fixture (torch "
                   << live.m.at("torch_version") << " vs "
                   << committed.m.at("torch_version")
                   << "); rerun scripts/gen_fixtures.py if the script changed");
    }
  }
}

TEST_CASE("model refuses a fixture of another format version - with a hint") {
  TorchTempDir tmp;
  auto m = nlohmann::json::parse(read_file(fixture_path(PTRAIN_TEST_FIXTURES, "gpt_odd")));
  m["version"] = 999;
  const std::string p = fixture_path(tmp.path, "old");
  write_file_atomic(p, m.dump());
  try {
    load_fixture(p);
    FAIL("a version-999 fixture was accepted");
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    CHECK(what.find("version 999") != std::string::npos);
    CHECK(what.find("gen_fixtures.py") != std::string::npos);
  }
}

TEST_CASE("model reproduces the first step of the trajectory fixture") {
  // Loss and pre-clip gradient norm of step 0 (the rest is the optimizer's test to replay).
  const Fixture fx = load_fixture(fixture_path(PTRAIN_TEST_FIXTURES, "trajectory_v1"));
  REQUIRE(fx.m.at("kind") == "trajectory");
  const ModelDims d = fx.dims();
  const int64_t B = fx.cfg("B"), T = d.T;
  ParamLayout layout(d);
  auto backend = make_cpu_backend(2);
  Gpt gpt(layout, *backend, B);
  const std::vector<float> params = fx.flat(layout, "param0/");
  std::vector<int32_t> windows = fx.i32("inputs");
  windows.resize(static_cast<size_t>(B * (T + 1)));  // batch 0
  GptState state(layout, *backend);
  state.upload_params(params);
  state.zero_grads();
  const LossSum l = gpt.forward_backward(state, windows, B, T, 1.0f / float(B * T));
  std::vector<float> grads(static_cast<size_t>(layout.total()));
  state.download_grads(grads);
  double sq = 0;
  for (float g : grads) sq += double(g) * g;
  const double ref_loss = fx.f32("loss").at(0), ref_norm = fx.f32("grad_norm").at(0);
  CHECK(std::fabs(l.mean() - ref_loss) / ref_loss <= 1e-5);
  CHECK(std::fabs(std::sqrt(sq) - ref_norm) / ref_norm <= 1e-5);
  CHECK(fx.f64("lr").size() == static_cast<size_t>(fx.m.at("optim").at("steps").get<int64_t>()));
}

TEST_CASE("model decoder with KV cache equals forward_logits position by position") {
  ModelDims d{50, 64, 70, 2, 2, 24};
  ParamLayout layout(d);
  auto backend = make_cpu_backend(2);
  const std::vector<float> params = random_params(layout, 5, 4.0f);
  const std::vector<int32_t> tokens = random_tokens(d.T, d.V, 6);
  Gpt gpt(layout, *backend, 1);
  GptState state(layout, *backend);
  state.upload_params(params);
  std::vector<float> full(static_cast<size_t>(d.T * d.Vp));
  gpt.forward_logits(state, tokens, 1, d.T, full);
  GptDecoder dec(layout, *backend);
  for (int pass = 0; pass < 2; ++pass) {  // the second pass checks reset()
    dec.reset();
    double worst = 0, scale = 0;
    for (int64_t t = 0; t < d.T; ++t) {
      const std::span<const float> lg = dec.step(state, tokens[t]);
      REQUIRE(static_cast<int64_t>(lg.size()) == d.Vp);
      for (int64_t v = 0; v < d.Vp; ++v) {
        const float ref = full[t * d.Vp + v];
        if (v >= d.V) {
          REQUIRE((std::isinf(lg[v]) && lg[v] < 0 && std::isinf(ref)));
          continue;
        }
        scale = std::max(scale, std::fabs(double(ref)));
        worst = std::max(worst, std::fabs(double(lg[v]) - ref));
      }
    }
    CHECK(dec.position() == d.T);
    MESSAGE("decoder vs forward_logits: max abs difference " << worst << " (max |logit| " << scale << ")");
    CHECK(worst <= 1e-5 * std::max(1.0, scale));
  }
  CHECK_THROWS_AS(dec.step(state, tokens[0]), UsageError);  // context full
}

TEST_CASE("model forward_backward is bitwise deterministic") {
  ModelDims d{257, 320, 100, 2, 4, 32};
  ParamLayout layout(d);
  const std::vector<float> params = random_params(layout, 7, 2.0f);
  const int64_t B = 3;
  const std::vector<int32_t> windows = random_tokens(B * (d.T + 1), d.V, 8);
  auto run = [&](Backend& be) {
    Gpt gpt(layout, be, B);
    GptState state(layout, be);
    state.upload_params(params);
    std::vector<float> g(static_cast<size_t>(layout.total())), g2(g.size());
    state.zero_grads();
    const LossSum l = gpt.forward_backward(state, windows, B, d.T, 1.0f);
    state.download_grads(g);
    state.zero_grads();
    const LossSum l2 = gpt.forward_backward(state, windows, B, d.T, 1.0f);  // same objects again
    state.download_grads(g2);
    CHECK(l.loss_sum == l2.loss_sum);
    CHECK(std::memcmp(g.data(), g2.data(), g.size() * sizeof(float)) == 0);
    g.push_back(static_cast<float>(l.loss_sum));
    return g;
  };
  auto be_a = make_cpu_backend(2);
  auto be_b = make_cpu_backend(2);
  const std::vector<float> a = run(*be_a), b = run(*be_b);
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST_CASE("model micro-batches fold into the gradient sum (grad_scale)") {
  ModelDims d{61, 64, 20, 1, 2, 16};
  ParamLayout layout(d);
  const std::vector<float> params = random_params(layout, 9, 3.0f);
  const int64_t B = 4, T = d.T;
  const std::vector<int32_t> windows = random_tokens(B * (T + 1), d.V, 10);
  auto backend = make_cpu_backend(2);
  Gpt gpt(layout, *backend, B);
  GptState state(layout, *backend);
  state.upload_params(params);
  std::vector<float> whole(static_cast<size_t>(layout.total())), parts(whole.size()),
      first(whole.size()), second(whole.size());
  const float scale = 0.125f;
  state.zero_grads();
  const LossSum lw = gpt.forward_backward(state, windows, B, T, scale);
  state.download_grads(whole);
  const std::span<const int32_t> w(windows);
  const size_t half = static_cast<size_t>(2 * (T + 1));
  // Each half alone, then both folded into one sum.
  state.zero_grads();
  gpt.forward_backward(state, w.subspan(half, half), 2, T, scale);
  state.download_grads(second);
  state.zero_grads();
  const LossSum l1 = gpt.forward_backward(state, w.subspan(0, half), 2, T, scale);
  state.download_grads(first);
  const LossSum l2 = gpt.forward_backward(state, w.subspan(half, half), 2, T, scale);
  CHECK(state.micro_batches() == 2);
  state.download_grads(parts);
  CHECK(std::fabs(lw.loss_sum - (l1.loss_sum + l2.loss_sum)) <= 1e-4);
  CHECK(lw.tokens == l1.tokens + l2.tokens);
  double gmax = 0, err = 0;
  for (size_t i = 0; i < whole.size(); ++i) {
    gmax = std::max(gmax, std::fabs(double(whole[i])));
    err = std::max(err, std::fabs(double(whole[i]) - parts[i]));
  }
  CHECK(err <= 1e-5 * gmax);
  // The fold is exactly first + second in fp32, element by element.
  int64_t mismatches = 0;
  for (size_t i = 0; i < parts.size(); ++i) mismatches += parts[i] != first[i] + second[i];
  CHECK(mismatches == 0);
  // A shorter sequence than the model's T is allowed.
  std::vector<int32_t> short_w = random_tokens(2 * 8, d.V, 11);
  CHECK(gpt.forward_loss(state, short_w, 2, 7).tokens == 14);
}

TEST_CASE("model rejects token ids outside the vocabulary") {
  ModelDims d{10, 16, 4, 1, 1, 8};
  ParamLayout layout(d);
  std::vector<float> params(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, 1, params);
  auto backend = make_cpu_backend(1);
  Gpt gpt(layout, *backend, 1);
  GptState state(layout, *backend);
  state.upload_params(params);
  std::vector<int32_t> w{1, 2, 10, 3, 4};  // 10 is a padded row, not a token
  CHECK_THROWS_AS(gpt.forward_loss(state, w, 1, 4), DataError);
  w[2] = -1;
  CHECK_THROWS_AS(gpt.forward_loss(state, w, 1, 4), DataError);
  // A refused micro-batch leaves the gradient sum usable.
  state.zero_grads();
  CHECK_THROWS_AS(gpt.forward_backward(state, w, 1, 4, 1.0f), DataError);
  w[2] = 3;
  CHECK(gpt.forward_backward(state, w, 1, 4, 1.0f).tokens == 4);
  CHECK(state.micro_batches() == 1);
}

TEST_CASE("model init_gpt_params: GPT-2 statistics - padded rows zero - deterministic per seed") {
  ModelDims d{1000, 1024, 64, 3, 4, 64};
  ParamLayout layout(d);
  std::vector<float> p(static_cast<size_t>(layout.total())), q(p.size()), r(p.size());
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  init_gpt_params(layout, 42, p);
  omp_set_num_threads(2);
  init_gpt_params(layout, 42, q);
  omp_set_num_threads(saved_threads);
  init_gpt_params(layout, 43, r);
  CHECK(std::memcmp(p.data(), q.data(), p.size() * sizeof(float)) == 0);  // thread-independent
  CHECK(p != r);
  auto stats = [&](const TensorSpec& t, int64_t count) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < count; ++i) {
      s += p[t.offset + i];
      s2 += double(p[t.offset + i]) * p[t.offset + i];
    }
    return std::pair{s / count, std::sqrt(s2 / count - (s / count) * (s / count))};
  };
  const double resid = 0.02 / std::sqrt(2.0 * d.L);
  for (const auto& t : layout.tensors()) {
    CAPTURE(t.name);
    if (t.name.ends_with(".bias")) {
      for (int64_t i = 0; i < t.count; ++i) REQUIRE(p[t.offset + i] == 0.0f);
    } else if (t.name.find(".ln_") != std::string::npos) {
      for (int64_t i = 0; i < t.count; ++i) REQUIRE(p[t.offset + i] == 1.0f);
    } else {
      const int64_t n = t.offset == layout.wte() ? d.V * d.C : t.count;
      const auto [mean, sd] = stats(t, n);
      const double want = t.name.ends_with("c_proj.weight") ? resid : 0.02;
      CHECK(std::fabs(mean) < 5 * want / std::sqrt(double(n)));
      CHECK(std::fabs(sd - want) < 0.05 * want);
    }
  }
  for (int64_t i = layout.wte() + d.V * d.C; i < layout.wte() + d.Vp * d.C; ++i) REQUIRE(p[i] == 0.0f);
  // At initialisation the loss is close to ln(V).
  auto backend = make_cpu_backend(2);
  Gpt gpt(layout, *backend, 2);
  GptState state(layout, *backend);
  state.upload_params(p);
  const std::vector<int32_t> w = random_tokens(2 * (d.T + 1), d.V, 3);
  CHECK(std::fabs(gpt.forward_loss(state, w, 2, d.T).mean() - std::log(double(d.V))) < 0.1);
}

}  // namespace ptrain
