// The server-side optimizer against closed forms: AdamW (torch.optim.AdamW's formula, written out
// here in double), the warmup+cosine schedule, weight decay per element from the layout's flag
// (also when a tensor spans two servers), and the clip coefficient of clip_grad_norm_.
#include "common/tensor/param_layout.hpp"
#include "coordinator/step_machine.hpp"
#include "common/optim/adamw.hpp"
#include "common/optim/lr_schedule.hpp"
#include "paramserver/update_rule.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <numbers>
#include <random>

using namespace ptrain;

namespace {

// torch.optim.AdamW, one element, in double.
struct RefAdamW {
  double p, m = 0, v = 0;
  void step(double g, double lr, double wd, double b1, double b2, double eps, int t) {
    p *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double mhat = m / (1 - std::pow(b1, t));
    const double vhat = v / (1 - std::pow(b2, t));
    p -= lr * mhat / (std::sqrt(vhat) + eps);
  }
};

}  // namespace

TEST_CASE("paramserver: AdamW's first step is p(1-lr·wd) - lr·g/(|g|+eps)") {
  const AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  const double lr = 1e-2;
  std::vector<float> p{1.0f, -2.0f, 0.5f, 0.0f}, m(4, 0.0f), v(4, 0.0f);
  const std::vector<float> g{0.3f, -1e-3f, 4.0f, 0.0f};
  const auto s = adamw_scalars(o, lr, 1);
  const std::vector<float> p0 = p;
  adamw_update(s, /*decay=*/true, 1.0f, p, m, v, g);
  for (size_t i = 0; i < p.size(); ++i) {
    const double want =
        p0[i] * (1 - lr * 0.1) - lr * g[i] / (std::fabs(static_cast<double>(g[i])) + 1e-8);
    CAPTURE(i);
    CHECK(p[i] == doctest::Approx(want).epsilon(1e-6));
    CHECK(m[i] == doctest::Approx(0.1 * g[i]).epsilon(1e-6));
    CHECK(v[i] == doctest::Approx(0.05 * g[i] * g[i]).epsilon(1e-6));
  }
  // No decay: the weight factor is exactly 1.
  std::vector<float> q{1.0f}, qm{0.0f}, qv{0.0f};
  adamw_update(s, /*decay=*/false, 1.0f, q, qm, qv, std::vector<float>{0.0f});
  CHECK(q[0] == 1.0f);
}

TEST_CASE("paramserver: AdamW over 50 steps follows the double-precision formula") {
  const AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  std::mt19937 rng(3);
  std::normal_distribution<double> nd(0.0, 1.0);
  const int n = 64;
  std::vector<float> p(n), m(n, 0.0f), v(n, 0.0f), g(n);
  std::vector<RefAdamW> ref(n);
  for (int i = 0; i < n; ++i) {
    p[i] = static_cast<float>(nd(rng));
    ref[i].p = p[i];
  }
  LrSchedule sched{1e-2, 1e-3, 5, 50};
  double worst = 0;
  for (int t = 0; t < 50; ++t) {
    for (int i = 0; i < n; ++i) g[i] = static_cast<float>(nd(rng) * 0.1);
    const double lr = sched.at(t);
    const float clip = 0.7f;
    adamw_update(adamw_scalars(o, lr, t + 1), /*decay=*/true, clip, p, m, v, g);
    for (int i = 0; i < n; ++i) {
      ref[i].step(static_cast<double>(g[i] * clip), lr, 0.1, 0.9, 0.95, 1e-8, t + 1);
    }
  }
  for (int i = 0; i < n; ++i) {
    worst = std::max(worst, std::fabs(p[i] - ref[i].p) / std::max(1e-3, std::fabs(ref[i].p)));
  }
  MESSAGE("AdamW fp32 vs double after 50 steps: worst relative error " << worst);
  CHECK(worst < 2e-5);
}

TEST_CASE("paramserver: the schedule is linear warmup then cosine to min_lr") {
  const LrSchedule s{1.0, 0.1, 10, 110};
  CHECK(s.at(0) == doctest::Approx(0.1));
  CHECK(s.at(4) == doctest::Approx(0.5));
  CHECK(s.at(9) == doctest::Approx(1.0));
  CHECK(s.at(10) == doctest::Approx(1.0));  // progress 0: the top of the cosine
  CHECK(s.at(60) == doctest::Approx(0.55));  // halfway: (lr + min_lr) / 2
  CHECK(s.at(35) == doctest::Approx(0.1 + 0.45 * (1 + std::cos(std::numbers::pi * 0.25))));
  CHECK(s.at(109) > 0.1);
  CHECK(s.at(109) < 0.1005);
  CHECK(s.at(110) == doctest::Approx(0.1));
  CHECK(s.at(500) == doctest::Approx(0.1));
  for (int64_t t = 11; t < 110; ++t) CHECK(s.at(t) < s.at(t - 1));  // strictly decreasing

  const LrSchedule no_warmup{2.0, 0.0, 0, 4};
  CHECK(no_warmup.at(0) == doctest::Approx(2.0));
  CHECK(no_warmup.at(2) == doctest::Approx(1.0));
  const LrSchedule all_warmup{1.0, 0.0, 8, 8};  // every step is warmup: no division by zero
  CHECK(all_warmup.at(7) == doctest::Approx(1.0));
}

TEST_CASE("paramserver: the clip coefficient is the smaller of 1 and max_norm / (norm + 1e-6)") {
  CHECK(clip_coefficient(10.0, 1.0) == doctest::Approx(1.0 / (10.0 + 1e-6)).epsilon(1e-14));
  CHECK(clip_coefficient(0.5, 1.0) == 1.0);
  CHECK(clip_coefficient(1.0, 1.0) == doctest::Approx(1.0 / (1.0 + 1e-6)).epsilon(1e-14));
  CHECK(clip_coefficient(100.0, 0.0) == 1.0);  // clipping off
  CHECK(clip_coefficient(0.0, 1.0) == 1.0);
}

TEST_CASE("paramserver: weight decay follows the layout flag - also across a server boundary") {
  ModelDims d{257, 257, 8, 1, 2, 8};
  const ParamLayout layout(d);
  const auto& wte = layout.find("transformer.wte.weight");
  const auto& ln = layout.find("transformer.h.0.ln_1.weight");
  // Two servers split inside wte (a decayed 2-D tensor): both parts get decay.
  const proto::KeyRange a{0, wte.count / 2}, b{wte.count / 2, layout.total()};
  const auto sa = decay_segments(layout, a);
  const auto sb = decay_segments(layout, b);
  REQUIRE(sa.size() == 1);
  CHECK(sa[0].decay);
  CHECK(sa[0].end == wte.count / 2);
  REQUIRE(!sb.empty());
  CHECK(sb[0].begin == wte.count / 2);
  CHECK(sb[0].decay);
  // Segments tile the range and agree with each element's tensor.
  int64_t at = b.begin;
  for (const auto& s : sb) {
    CHECK(s.begin == at);
    at = s.end;
    for (const auto& t : layout.tensors()) {
      if (t.offset < s.end && t.offset + t.count > s.begin) CHECK(t.decay == s.decay);
    }
  }
  CHECK(at == b.end);
  CHECK_FALSE(ln.decay);

  // The update of a split equals the update of the whole, bitwise (element-wise rule).
  const UpdateRule whole(AdamWOptions{}, LrSchedule{1e-2, 1e-3, 2, 10},
                         decay_segments(layout, {0, layout.total()}));
  const UpdateRule ra(AdamWOptions{}, LrSchedule{1e-2, 1e-3, 2, 10}, sa);
  const UpdateRule rb(AdamWOptions{}, LrSchedule{1e-2, 1e-3, 2, 10}, sb);
  const auto n = static_cast<size_t>(layout.total());
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> p(n), g(n), m(n, 0.0f), v(n, 0.0f);
  for (auto& x : p) x = nd(rng);
  for (auto& x : g) x = nd(rng);
  std::vector<float> p2 = p, m2 = m, v2 = v;
  whole.apply(3, 0, 0.5f, g, p, m, v);
  const auto h = static_cast<size_t>(a.end);
  auto sub = [](std::vector<float>& x, size_t off, size_t len) {
    return std::span<float>(x.data() + off, len);
  };
  ra.apply(3, 0, 0.5f, std::span<const float>(g.data(), h), sub(p2, 0, h), sub(m2, 0, h),
           sub(v2, 0, h));
  rb.apply(3, a.end, 0.5f, std::span<const float>(g.data() + h, n - h), sub(p2, h, n - h),
           sub(m2, h, n - h), sub(v2, h, n - h));
  CHECK(p == p2);
  CHECK(m == m2);
  CHECK(v == v2);
  // And a decayed element moved by the decay term while a LayerNorm weight did not.
  std::vector<float> q(n, 1.0f), qm(n, 0.0f), qv(n, 0.0f), zero(n, 0.0f);
  whole.apply(3, 0, 1.0f, zero, q, qm, qv);
  CHECK(q[static_cast<size_t>(wte.offset)] < 1.0f);
  CHECK(q[static_cast<size_t>(ln.offset)] == 1.0f);
}
