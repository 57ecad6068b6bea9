// The BERT model against PyTorch (scripts/gen_fixtures.py, kinds "bert" and "bert_trajectory": a
// reference BertForMaskedLM written from torch primitives with HF names), committed and live;
// the masking rule against the script's Python copy (bitwise); a 10-step AdamW trajectory with
// the servers' update rule; and the model's own invariants (padded rows, determinism, padding
// mask, the new backend ops' GPT path untouched).
#include "common/config/config.hpp"
#include "common/data/mlm.hpp"
#include "common/tensor/gpt_init.hpp"
#include "coordinator/step_machine.hpp"
#include "paramserver/update_rule.hpp"
#include "support/fixture.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/model/bert.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace ptrain {
namespace {

using testing::Fixture;
using testing::fixture_path;
using testing::load_fixture;

const char* const kBertFixtures[] = {"bert_odd", "bert_unpadded", "bert_long"};

double max_rel(const float* got, const float* ref, int64_t n) {
  double mx = 0, err = 0;
  for (int64_t i = 0; i < n; ++i) {
    mx = std::max(mx, std::fabs(double(ref[i])));
    err = std::max(err, std::fabs(double(got[i]) - ref[i]));
  }
  return mx > 0 ? err / mx : err;
}

// Masks, logits, loss and every gradient of one fixture.
void check_bert_fixture(const Fixture& fx) {
  INFO(fx.path);
  const ModelDims d = fx.dims();
  REQUIRE(d.arch == ModelArch::kBert);
  const int64_t B = fx.cfg("B"), T = d.T, N = B * T;
  const ParamLayout layout(d);
  const BertTokens tok = bert_tokens(d);

  // The masks: C++ mlm_example == the script's Python copy, bitwise.
  const auto windows = fx.i32("windows");
  const auto ids = fx.get<int64_t>("window_ids", "int64");
  const auto inputs = fx.i32("inputs"), labels = fx.i32("labels");
  std::vector<int32_t> in(static_cast<size_t>(T)), lab(static_cast<size_t>(T));
  for (int64_t b = 0; b < B; ++b) {
    const std::span<const int32_t> w(windows.data() + b * (T + 1), static_cast<size_t>(T + 1));
    mlm_example(w, T, tok,
                mlm_mask_key(fx.cfg("run_seed"), fx.cfg("step"), ids[static_cast<size_t>(b)]), in,
                lab);
    CHECK(std::memcmp(in.data(), inputs.data() + b * T, static_cast<size_t>(T) * 4) == 0);
    CHECK(std::memcmp(lab.data(), labels.data() + b * T, static_cast<size_t>(T) * 4) == 0);
  }

  auto backend = make_cpu_backend(2);
  Bert bert(layout, *backend, B);
  GptState state(layout, *backend);
  state.upload_params(fx.flat(layout, "param/"));

  std::vector<float> logits(static_cast<size_t>(N * d.Vp));
  bert.mlm_logits(state, inputs, B, T, logits);
  const auto ref_logits = fx.f32("logits");
  double lmax = 0, lerr = 0;
  int64_t inf_mismatch = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (static_cast<int64_t>(i % d.Vp) >= d.V) {
      inf_mismatch += !(std::isinf(logits[i]) && logits[i] < 0 && std::isinf(ref_logits[i]));
      continue;
    }
    lmax = std::max(lmax, std::fabs(double(ref_logits[i])));
    lerr = std::max(lerr, std::fabs(double(logits[i]) - ref_logits[i]));
  }
  CHECK(inf_mismatch == 0);
  CHECK(lerr / lmax <= 1e-5);

  int64_t M = 0;
  for (int32_t y : labels) M += y != kIgnoreLabel;
  const double ref_loss = fx.f32("loss").at(0);
  const LossSum fl = bert.mlm_loss(state, inputs, labels, B, T);
  CHECK(fl.tokens == M);
  CHECK(std::fabs(fl.mean() - ref_loss) / ref_loss <= 1e-5);

  state.zero_grads();
  const LossSum bl =
      bert.mlm_forward_backward(state, inputs, labels, B, T, 1.0f / static_cast<float>(M));
  CHECK(bl.loss_sum == fl.loss_sum);
  CHECK(bl.correct == fl.correct);
  std::vector<float> grads(static_cast<size_t>(layout.total()));
  state.download_grads(grads);
  double worst = 0;
  std::string worst_name;
  for (const auto& t : layout.tensors()) {
    const auto ref = fx.f32("grad/" + t.name);
    REQUIRE(static_cast<int64_t>(ref.size()) == t.count);
    double rel = max_rel(grads.data() + t.offset, ref.data(), t.count);
    const std::string kb = "attention.self.key.bias";
    if (t.name.size() > kb.size() && t.name.compare(t.name.size() - kb.size(), kb.size(), kb) == 0) {
      // Softmax ignores a per-row constant, so the key bias's true gradient is exactly 0 and both
      // sides hold rounding noise: measured against the query bias's gradient of the layer (for
      // GPT, c_attn.bias holds both and is measured as one tensor).
      const std::string q = t.name.substr(0, t.name.size() - kb.size()) + "attention.self.query.bias";
      const auto qref = fx.f32("grad/" + q);
      double qmax = 0, err = 0;
      for (float x : qref) qmax = std::max(qmax, std::fabs(double(x)));
      for (int64_t i = 0; i < t.count; ++i) {
        err = std::max(err, std::fabs(double(grads[t.offset + i]) - ref[i]));
      }
      rel = err / qmax;
    }
    INFO(t.name << ": relative " << rel);
    CHECK(rel <= 1e-5);
    if (rel > worst) worst = rel, worst_name = t.name;
  }
  // Padded vocabulary rows and bias entries: exactly 0.
  int64_t nonzero = 0;
  const TensorSpec& wte = layout.find("bert.embeddings.word_embeddings.weight");
  for (int64_t i = d.V * d.C; i < wte.count; ++i) nonzero += grads[wte.offset + i] != 0.0f;
  const TensorSpec& pb = layout.find("cls.predictions.bias");
  for (int64_t i = d.V; i < pb.count; ++i) nonzero += grads[pb.offset + i] != 0.0f;
  CHECK(nonzero == 0);
  MESSAGE(fmt::format("{}: logits rel {:.2e}, loss {:.7f} vs torch {:.7f} ({} masked), worst "
                      "gradient rel {:.2e} ({})",
                      fx.m.at("name").get<std::string>(), lerr / lmax, bl.mean(), ref_loss, M,
                      worst, worst_name));
}

}  // namespace

TEST_CASE("bert matches the committed PyTorch fixtures") {
  for (const char* name : kBertFixtures) {
    check_bert_fixture(load_fixture(fixture_path(PTRAIN_TEST_FIXTURES, name)));
  }
}

TEST_CASE("bert matches PyTorch live (runs scripts/gen_fixtures.py when torch is importable)") {
  if (!testing::torch_available()) {
    MESSAGE("SKIPPED: /usr/bin/python3 cannot import torch; the committed fixtures were checked");
    return;
  }
  testing::TorchTempDir tmp;
  std::string only;
  for (const char* n : kBertFixtures) only += std::string(" ") + n;
  const std::string cmd =
      fmt::format("'{}' '{}/gen_fixtures.py' --out '{}' --only{} 2>'{}/log.txt'",
                  PTRAIN_TORCH_PYTHON, PTRAIN_TEST_SCRIPTS, tmp.path, only, tmp.path);
  REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "gen_fixtures.py failed: " << cmd);
  for (const char* name : kBertFixtures) check_bert_fixture(load_fixture(fixture_path(tmp.path, name)));
}

TEST_CASE("bert 10-step AdamW trajectory equals PyTorch (model + the servers' update rule)") {
  const Fixture fx = load_fixture(fixture_path(PTRAIN_TEST_FIXTURES, "bert_trajectory_v1"));
  REQUIRE(fx.m.at("kind") == "bert_trajectory");
  const ModelDims d = fx.dims();
  const auto& o = fx.m.at("optim");
  const int64_t B = fx.cfg("B"), T = d.T, S = o.at("steps").get<int64_t>();
  const ParamLayout layout(d);
  Config cfg;
  cfg.train.steps = S;
  cfg.optim.lr = o.at("lr");
  cfg.optim.min_lr = o.at("min_lr");
  cfg.optim.warmup_steps = o.at("warmup_steps");
  cfg.optim.weight_decay = o.at("weight_decay");
  cfg.optim.beta1 = o.at("beta1");
  cfg.optim.beta2 = o.at("beta2");
  cfg.optim.eps = o.at("eps");
  const double grad_clip = o.at("grad_clip");
  const UpdateRule rule = update_rule_for(cfg, layout, {0, layout.total()});

  // The masks of every step from the C++ rule equal the fixture's (keyed by step t, window t·B+b).
  const BertTokens tok = bert_tokens(d);
  const auto windows = fx.i32("windows"), inputs = fx.i32("inputs"), labels = fx.i32("labels");
  std::vector<int32_t> in(static_cast<size_t>(B * T)), lab(in.size());
  for (int64_t t = 0; t < S; ++t) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t i = t * B + b;
      mlm_example(std::span<const int32_t>(windows.data() + i * (T + 1), static_cast<size_t>(T + 1)),
                  T, tok, mlm_mask_key(fx.cfg("run_seed"), t, i),
                  std::span<int32_t>(in.data() + b * T, static_cast<size_t>(T)),
                  std::span<int32_t>(lab.data() + b * T, static_cast<size_t>(T)));
    }
    CHECK(std::memcmp(in.data(), inputs.data() + t * B * T, in.size() * 4) == 0);
    CHECK(std::memcmp(lab.data(), labels.data() + t * B * T, lab.size() * 4) == 0);
  }

  auto backend = make_cpu_backend(2);
  Bert bert(layout, *backend, B);
  GptState state(layout, *backend);
  std::vector<float> w = fx.flat(layout, "param0/"), m(w.size(), 0.0f), v(w.size(), 0.0f),
                     g(w.size());
  const auto ref_loss = fx.f32("loss"), ref_norm = fx.f32("grad_norm");
  const auto ref_lr = fx.f64("lr");
  double worst_loss = 0;
  for (int64_t t = 0; t < S; ++t) {
    state.upload_params(w);
    state.zero_grads();
    const std::span<const int32_t> bin(inputs.data() + t * B * T, static_cast<size_t>(B * T));
    const std::span<const int32_t> blab(labels.data() + t * B * T, static_cast<size_t>(B * T));
    const LossSum l = bert.mlm_forward_backward(state, bin, blab, B, T, 1.0f);  // token sums
    state.download_grads(g);
    for (float& x : g) x /= static_cast<float>(l.tokens);  // the servers' mean
    double sq = 0;
    for (float x : g) sq += double(x) * x;
    const double norm = std::sqrt(sq);
    CHECK(std::fabs(norm - ref_norm[t]) / ref_norm[t] <= 1e-4);
    worst_loss = std::max(worst_loss, std::fabs(l.mean() - ref_loss[t]) / ref_loss[t]);
    const double lr = rule.apply(t, 0, static_cast<float>(clip_coefficient(norm, grad_clip)), g, w,
                                 m, v);
    CHECK(std::fabs(lr - ref_lr[t]) <= 1e-12 * ref_lr[t]);
  }
  CHECK(worst_loss <= 1e-5);
  double worst = 0;
  std::string worst_name;
  // The key biases (exactly-zero true gradient: rounding noise that AdamW normalises, as the GPT
  // trajectory test explains) are measured against the query bias of their layer.
  double key_bias = 0;
  std::map<std::string, double> query_norm;
  for (const auto& t : layout.tensors()) {
    const auto ref = fx.f32("final/" + t.name);
    double num = 0, den = 0;
    for (int64_t i = 0; i < t.count; ++i) {
      num += std::pow(double(w[t.offset + i]) - ref[i], 2);
      den += double(ref[i]) * ref[i];
    }
    const size_t k = t.name.find("attention.self.key.bias");
    if (t.name.find("attention.self.query.bias") != std::string::npos) {
      query_norm[t.name.substr(0, t.name.find("attention.self."))] = den;
    }
    if (k != std::string::npos) {
      key_bias = std::max(key_bias, std::sqrt(num / query_norm.at(t.name.substr(0, k))));
      continue;
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    if (rel > worst) worst = rel, worst_name = t.name;
  }
  MESSAGE(fmt::format("bert trajectory: worst loss rel {:.2e}, worst final weight rel L2 {:.2e} ({}), "
                      "key biases {:.2e}",
                      worst_loss, worst, worst_name, key_bias));
  CHECK(worst <= 1e-4);
  CHECK(key_bias <= 1e-2);
}

TEST_CASE("bert sequence classification with padding matches PyTorch (BertForSequenceClassification)") {
  const Fixture fx = load_fixture(fixture_path(PTRAIN_TEST_FIXTURES, "bert_cls"));
  const ModelDims d = fx.dims();
  REQUIRE(d.num_labels == 3);
  const int64_t B = fx.cfg("B"), T = d.T, K = d.num_labels;
  const ParamLayout layout(d);
  CHECK(layout.tensors().back().name == "classifier.bias");
  auto backend = make_cpu_backend(2);
  Bert bert(layout, *backend, B);
  GptState state(layout, *backend);
  state.upload_params(fx.flat(layout, "param/"));
  const auto inputs = fx.i32("inputs"), valid = fx.i32("valid"), labels = fx.i32("labels");
  std::vector<float> logits(static_cast<size_t>(B * K));
  const LossSum l = bert.classify_loss(state, inputs, valid, labels, B, T, logits);
  const auto ref_logits = fx.f32("logits");
  CHECK(max_rel(logits.data(), ref_logits.data(), B * K) <= 1e-5);
  const double ref_loss = fx.f32("loss").at(0);
  CHECK(std::fabs(l.mean() - ref_loss) / ref_loss <= 1e-5);
  state.zero_grads();
  const LossSum lb = bert.classify_forward_backward(state, inputs, valid, labels, B, T,
                                                    1.0f / static_cast<float>(B));
  CHECK(lb.loss_sum == l.loss_sum);
  std::vector<float> grads(static_cast<size_t>(layout.total()));
  state.download_grads(grads);
  double worst = 0;
  std::string worst_name;
  for (const auto& t : layout.tensors()) {
    if (t.name.find("attention.self.key.bias") != std::string::npos) continue;  // true gradient 0
    const auto ref = fx.f32("grad/" + t.name);
    const double rel = max_rel(grads.data() + t.offset, ref.data(), t.count);
    INFO(t.name << ": relative " << rel);
    CHECK(rel <= 1e-5);
    if (rel > worst) worst = rel, worst_name = t.name;
  }
  MESSAGE(fmt::format("bert_cls: loss {:.7f} vs torch {:.7f}, worst gradient rel {:.2e} ({})",
                      lb.mean(), ref_loss, worst, worst_name));
}

TEST_CASE("bert padding mask: padded keys change nothing for the real tokens") {
  // Classification layout, B = 2: sequence 1 is sequence 0 plus padding. The [CLS] logits of both
  // must agree (to float rounding), and the padded one must not depend on the pad tokens' ids.
  ModelDims d{61 + kBertSpecialTokens, 72, 20, 2, 2, 24, ModelArch::kBert, 3};
  const ParamLayout layout(d);
  std::vector<float> p(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, 3, p);
  auto backend = make_cpu_backend(2);
  Bert bert(layout, *backend, 2);
  GptState state(layout, *backend);
  state.upload_params(p);
  const BertTokens tok = bert_tokens(d);
  std::mt19937 rng(5);
  const int64_t T = d.T, len = 9;
  std::vector<int32_t> text(len - 2);
  for (auto& x : text) x = static_cast<int32_t>(rng() % 61);
  std::vector<int32_t> inputs(static_cast<size_t>(2 * T), tok.pad), valid(inputs.size(), 0);
  bert_sequence(text, tok, std::span<int32_t>(inputs.data(), static_cast<size_t>(T)));
  bert_sequence(text, tok, std::span<int32_t>(inputs.data() + T, static_cast<size_t>(T)));
  for (int64_t t = 0; t < T; ++t) valid[static_cast<size_t>(t)] = 1;  // sequence 0: all keys
  for (int64_t t = 0; t < len; ++t) valid[static_cast<size_t>(T + t)] = 1;
  // Sequence 0 attends to its pads; make them [PAD] too but count them: its CLS differs. So
  // compare sequence 1 with a short run of the same text at T' = len instead.
  const std::vector<int32_t> labels{0, 1};
  std::vector<float> lg(6), lg_short(3);
  bert.classify_loss(state, inputs, valid, labels, 2, T, lg);
  std::vector<int32_t> short_in(inputs.begin() + T, inputs.begin() + T + len);
  bert.classify_loss(state, short_in, {}, std::vector<int32_t>{1}, 1, len, lg_short);
  for (int k = 0; k < 3; ++k) CHECK(std::fabs(lg[3 + k] - lg_short[k]) <= 1e-5);
  for (int64_t t = len; t < T; ++t) inputs[static_cast<size_t>(T + t)] = tok.mask;  // other pad ids
  std::vector<float> lg2(6);
  bert.classify_loss(state, inputs, valid, labels, 2, T, lg2);
  // Only the position embeddings of padded rows differ from the short run; their keys are masked.
  for (int k = 0; k < 3; ++k) CHECK(lg2[3 + k] == lg[3 + k]);
}

TEST_CASE("bert masking: rates near 15/80/10/10 and keyed by seed and step and window only") {
  ModelDims d{257 + kBertSpecialTokens, 264, 130, 1, 1, 8, ModelArch::kBert};
  const BertTokens tok = bert_tokens(d);
  const int64_t T = d.T;
  std::vector<int32_t> window(static_cast<size_t>(T + 1));
  for (size_t i = 0; i < window.size(); ++i) window[i] = static_cast<int32_t>(i % 200);
  std::vector<int32_t> in(static_cast<size_t>(T)), lab(in.size()), in2(in.size()), lab2(in.size());
  int64_t chosen = 0, masked = 0, kept = 0, total = 0;
  for (int64_t w = 0; w < 400; ++w) {
    mlm_example(window, T, tok, mlm_mask_key(9, 3, w), in, lab);
    mlm_example(window, T, tok, mlm_mask_key(9, 3, w), in2, lab2);
    REQUIRE(in == in2);
    REQUIRE(lab == lab2);
    CHECK(in[0] == tok.cls);
    CHECK(in[static_cast<size_t>(T - 1)] == tok.sep);
    for (int64_t j = 1; j < T - 1; ++j) {
      ++total;
      if (lab[static_cast<size_t>(j)] == kIgnoreLabel) continue;
      ++chosen;
      masked += in[static_cast<size_t>(j)] == tok.mask;
      kept += in[static_cast<size_t>(j)] == lab[static_cast<size_t>(j)];
    }
  }
  const double rate = double(chosen) / double(total);
  CHECK(rate > 0.14);
  CHECK(rate < 0.16);
  CHECK(double(masked) / chosen > 0.77);
  CHECK(double(masked) / chosen < 0.83);
  CHECK(double(kept) / chosen > 0.08);   // 10% kept + random draws of the same id
  CHECK(double(kept) / chosen < 0.125);
  // Another step or window gives other masks.
  mlm_example(window, T, tok, mlm_mask_key(9, 3, 0), in, lab);
  mlm_example(window, T, tok, mlm_mask_key(9, 4, 0), in2, lab2);
  CHECK(lab != lab2);
}

}  // namespace ptrain
