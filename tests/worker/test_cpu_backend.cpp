// Per-op tests of the CPU backend: every op against a naive fp64 reference written here, the
// reference backward passes against central finite differences of the reference forward passes,
// the odd sizes that reach tails and partial blocks, and bitwise reproducibility.
// Tolerance: |got − ref| ≤ atol + rtol·|ref|, printing the first mismatches and the
// largest error.
#include "worker/backend/cpu/cpu_backend.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace ptrain {
namespace {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

Vec randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  Vec v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

DVec to_d(const Vec& v) { return DVec(v.begin(), v.end()); }

// Checks got against ref elementwise; reports the worst error and the first few mismatches.
void expect_close(const std::string& what, const float* got, const double* ref, size_t n,
                  double atol, double rtol) {
  double worst = 0.0;
  size_t worst_i = 0, bad = 0;
  std::string first;
  for (size_t i = 0; i < n; ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
    const double excess = err - (atol + rtol * std::fabs(ref[i]));
    if (!(err <= atol + rtol * std::fabs(ref[i]))) {  // also catches NaN
      if (bad < 5) first += fmt::format("  [{}] got {:.9g} ref {:.9g}\n", i, got[i], ref[i]);
      ++bad;
    }
    if (err > worst || std::isnan(err)) {
      worst = std::isnan(err) ? std::numeric_limits<double>::infinity() : err;
      worst_i = i;
    }
    (void)excess;
  }
  INFO(fmt::format("{}: {} of {} outside atol {:g} + rtol {:g}; largest error {:.3g} at [{}]\n{}",
                   what, bad, n, atol, rtol, worst, worst_i, first));
  CHECK(bad == 0);
}

void expect_close(const std::string& what, const Vec& got, const DVec& ref, double atol,
                  double rtol) {
  REQUIRE(got.size() == ref.size());
  expect_close(what, got.data(), ref.data(), got.size(), atol, rtol);
}

double max_abs(const DVec& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Central finite differences of f: R^n → R at x (fp64).
DVec finite_diff(const std::function<double(const DVec&)>& f, DVec x, double h = 1e-6) {
  DVec g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f(x);
    x[i] = x0 - h;
    const double fm = f(x);
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

double dot(const DVec& a, const DVec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ---- naive fp64 references -------------------------------------------------------------------

DVec ref_layernorm(const DVec& x, const DVec& w, const DVec& b, int64_t N, int64_t C) {
  DVec out(x.size());
  for (int64_t n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m);
    v /= C;
    const double s = 1.0 / std::sqrt(v + 1e-5);
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = (x[n * C + c] - m) * s * w[c] + b[c];
  }
  return out;
}

double ref_gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

// Which keys query row t of batch b sees: s ≤ t when causal; valid (B,T) non-empty = padding mask.
struct RefMask {
  bool causal = true;
  std::vector<int32_t> valid;
  bool visible(int64_t b, int64_t T, int64_t t, int64_t s) const {
    if (causal && s > t) return false;
    return valid.empty() || valid[static_cast<size_t>(b * T + s)] != 0;
  }
};

// out (B,T,C) from qkv (B,T,3C); probs (B,NH,T,T) and lse (B,NH,T) if non-null.
DVec ref_attention(const DVec& qkv, int64_t B, int64_t T, int64_t C, int64_t NH,
                   DVec* probs = nullptr, const RefMask& mask = {}, DVec* lse = nullptr) {
  const int64_t hd = C / NH;
  DVec out(static_cast<size_t>(B * T * C), 0.0);
  if (probs) probs->assign(static_cast<size_t>(B * NH * T * T), 0.0);
  if (lse) lse->assign(static_cast<size_t>(B * NH * T), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NH; ++h) {
      for (int64_t t = 0; t < T; ++t) {
        const double* q = &qkv[(b * T + t) * 3 * C + h * hd];
        DVec s(static_cast<size_t>(T), 0.0);
        double mx = -1e300;
        for (int64_t u = 0; u < T; ++u) {
          if (!mask.visible(b, T, t, u)) continue;
          const double* k = &qkv[(b * T + u) * 3 * C + C + h * hd];
          double d = 0;
          for (int64_t i = 0; i < hd; ++i) d += q[i] * k[i];
          s[u] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[u]);
        }
        double sum = 0;
        for (int64_t u = 0; u < T; ++u) {
          if (mask.visible(b, T, t, u)) sum += (s[u] = std::exp(s[u] - mx));
        }
        if (lse) (*lse)[(b * NH + h) * T + t] = mx + std::log(sum);
        for (int64_t u = 0; u < T; ++u) {
          if (!mask.visible(b, T, t, u)) continue;
          const double p = s[u] / sum;
          if (probs) (*probs)[((b * NH + h) * T + t) * T + u] = p;
          const double* v = &qkv[(b * T + u) * 3 * C + 2 * C + h * hd];
          for (int64_t i = 0; i < hd; ++i) out[(b * T + t) * C + h * hd + i] += p * v[i];
        }
      }
    }
  }
  return out;
}

// Analytic attention backward in fp64 (validated against finite differences below).
DVec ref_attention_backward(const DVec& qkv, const DVec& dout, int64_t B, int64_t T, int64_t C,
                            int64_t NH, const RefMask& mask = {}) {
  const int64_t hd = C / NH;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  DVec P;
  ref_attention(qkv, B, T, C, NH, &P, mask);
  DVec dqkv(qkv.size(), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NH; ++h) {
      for (int64_t t = 0; t < T; ++t) {
        const double* p = &P[((b * NH + h) * T + t) * T];
        const double* dO = &dout[(b * T + t) * C + h * hd];
        DVec dp(static_cast<size_t>(T));
        double dsum = 0;
        for (int64_t u = 0; u < T; ++u) {
          const double* v = &qkv[(b * T + u) * 3 * C + 2 * C + h * hd];
          double d = 0;
          for (int64_t i = 0; i < hd; ++i) {
            d += dO[i] * v[i];
            dqkv[(b * T + u) * 3 * C + 2 * C + h * hd + i] += p[u] * dO[i];
          }
          dp[u] = d;
          dsum += p[u] * d;
        }
        for (int64_t u = 0; u < T; ++u) {
          const double ds = p[u] * (dp[u] - dsum) * scale;
          for (int64_t i = 0; i < hd; ++i) {
            dqkv[(b * T + t) * 3 * C + h * hd + i] += ds * qkv[(b * T + u) * 3 * C + C + h * hd + i];
            dqkv[(b * T + u) * 3 * C + C + h * hd + i] += ds * qkv[(b * T + t) * 3 * C + h * hd + i];
          }
        }
      }
    }
  }
  return dqkv;
}

DVec ref_losses(const DVec& logits, const std::vector<int32_t>& y, int64_t N, int64_t V,
                int64_t ld) {
  DVec l(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    double mx = -1e300, s = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, logits[n * ld + v]);
    for (int64_t v = 0; v < V; ++v) s += std::exp(logits[n * ld + v] - mx);
    l[n] = std::log(s) + mx - logits[n * ld + y[n]];
  }
  return l;
}

}  // namespace

TEST_CASE("cpu_backend exp_approx is within 2e-7 relative of exp") {
  double worst = 0;
  for (double x = -80.0; x <= 80.0; x += 0.001953125 * 3.1) {
    const double ref = std::exp(static_cast<double>(static_cast<float>(x)));
    const double got = cpu_detail::exp_approx(static_cast<float>(x));
    worst = std::max(worst, std::fabs(got - ref) / ref);
  }
  MESSAGE("exp_approx worst relative error " << worst);
  CHECK(worst < 2e-7);
  CHECK(cpu_detail::exp_approx(-std::numeric_limits<float>::infinity()) < 1e-37f);
  CHECK(cpu_detail::exp_approx(0.0f) == 1.0f);
}

TEST_CASE("cpu_backend gemm and matmul match naive products") {
  auto be = make_cpu_backend(2);
  for (auto [N, IC, OC] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {7, 13, 5},
                           {37, 36, 108}, {130, 20, 67}, {300, 64, 200}, {130, 96, 1000}}) {
    CAPTURE(N);
    CAPTURE(IC);
    CAPTURE(OC);
    const Vec inp = randn(N * IC, 1), w = randn(IC * OC, 2), bias = randn(OC, 3);
    const Vec dout = randn(N * OC, 4);
    Vec out(N * OC);
    be->matmul_forward(out.data(), inp.data(), w.data(), bias.data(), N, IC, OC);
    DVec ref(N * OC), ref_nb(N * OC);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < OC; ++o) {
        double s = 0;
        for (int64_t i = 0; i < IC; ++i) s += double(inp[n * IC + i]) * w[i * OC + o];
        ref_nb[n * OC + o] = s;
        ref[n * OC + o] = s + bias[o];
      }
    expect_close("matmul_forward", out, ref, 1e-5, 1e-5);
    be->matmul_forward(out.data(), inp.data(), w.data(), nullptr, N, IC, OC);
    expect_close("matmul_forward (no bias)", out, ref_nb, 1e-5, 1e-5);
    const Vec res = randn(N * OC, 8);
    DVec ref_res(N * OC);
    for (int64_t i = 0; i < N * OC; ++i) ref_res[i] = ref[i] + res[i];
    be->matmul_residual_forward(out.data(), res.data(), inp.data(), w.data(), bias.data(), N, IC, OC);
    expect_close("matmul_residual_forward", out, ref_res, 1e-5, 1e-5);
    Vec inplace = res;  // out aliasing the residual
    be->matmul_residual_forward(inplace.data(), inplace.data(), inp.data(), w.data(), bias.data(), N,
                                IC, OC);
    expect_close("matmul_residual_forward in place", inplace, ref_res, 1e-5, 1e-5);

    // Backward: dinp written, dw and dbias accumulated onto what is there.
    Vec dinp(N * IC, 123.0f), dw(IC * OC, 0.5f), db(OC, -0.25f);
    be->matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N,
                        IC, OC);
    DVec rdinp(N * IC, 0), rdw(IC * OC, 0.5), rdb(OC, -0.25);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < OC; ++o) {
        const double d = dout[n * OC + o];
        rdb[o] += d;
        for (int64_t i = 0; i < IC; ++i) {
          rdinp[n * IC + i] += d * w[i * OC + o];
          rdw[i * OC + o] += d * inp[n * IC + i];
        }
      }
    // fp32 sums of K unit-variance products: absolute error grows like sqrt(K).
    auto atol = [](int64_t K) { return 3e-6 * std::sqrt(double(K)); };
    expect_close("matmul_backward dinp", dinp, rdinp, atol(OC), 1e-5);
    expect_close("matmul_backward dw", dw, rdw, atol(N), 1e-5);
    expect_close("matmul_backward dbias", db, rdb, atol(N), 1e-5);
  }
  // gemm with every transpose combination and leading dimensions larger than the width.
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{9, 11, 7}, {200, 90, 30}, {40, 300, 50}}) {
  const int64_t pad = 3;
  for (Trans ta : {Trans::kNo, Trans::kYes}) {
    for (Trans tb : {Trans::kNo, Trans::kYes}) {
      const int64_t lda = (ta == Trans::kNo ? K : M) + pad, ldb = (tb == Trans::kNo ? N : K) + pad;
      const int64_t ldc = N + pad;
      const Vec a = randn((ta == Trans::kNo ? M : K) * lda, 5), b = randn((tb == Trans::kNo ? K : N) * ldb, 6);
      Vec c = randn(M * ldc, 7);
      DVec ref(to_d(c));
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double av = ta == Trans::kNo ? a[i * lda + k] : a[k * lda + i];
            const double bv = tb == Trans::kNo ? b[k * ldb + j] : b[j * ldb + k];
            s += av * bv;
          }
          ref[i * ldc + j] = 0.5 * s + 2.0 * ref[i * ldc + j];
        }
      be->gemm(ta, tb, M, N, K, 0.5f, a.data(), lda, b.data(), ldb, 2.0f, c.data(), ldc);
      expect_close(fmt::format("gemm {}x{}x{} ta={} tb={}", M, N, K, int(ta), int(tb)), c, ref, 1e-5, 1e-5);
    }
  }
  }
}

TEST_CASE("cpu_backend layernorm forward and backward") {
  auto be = make_cpu_backend(2);
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 1}, {5, 36}, {70, 40}, {129, 130}}) {
    CAPTURE(N);
    CAPTURE(C);
    Vec x = randn(N * C, 10, 2.0f);
    for (int64_t n = 0; n < N; ++n) x[n * C] += 3.0f;  // a row mean far from 0
    Vec w = randn(C, 11), b = randn(C, 12);
    const Vec dout = randn(N * C, 13);
    Vec out(N * C), mean(N), rstd(N);
    be->layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    const DVec ref = ref_layernorm(to_d(x), to_d(w), to_d(b), N, C);
    expect_close("layernorm_forward", out, ref, 1e-5, 1e-5);
    if (C == 1) continue;  // the gradient of a 1-wide LayerNorm is 0/0-sensitive

    Vec dinp(N * C, 1.0f), dw(C, 2.0f), db(C, 3.0f);  // all accumulate
    be->layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                           mean.data(), rstd.data(), N, C);
    const DVec dd = to_d(dout);
    auto f_x = [&](const DVec& xx) { return dot(ref_layernorm(xx, to_d(w), to_d(b), N, C), dd); };
    auto f_w = [&](const DVec& ww) { return dot(ref_layernorm(to_d(x), ww, to_d(b), N, C), dd); };
    auto f_b = [&](const DVec& bb) { return dot(ref_layernorm(to_d(x), to_d(w), bb, N, C), dd); };
    if (N * C <= 2000) {
      DVec gx = finite_diff(f_x, to_d(x)), gw = finite_diff(f_w, to_d(w)), gb = finite_diff(f_b, to_d(b));
      for (auto& v : gx) v += 1.0;
      for (auto& v : gw) v += 2.0;
      for (auto& v : gb) v += 3.0;
      expect_close("layernorm_backward dinp", dinp, gx, 2e-4, 1e-4);
      expect_close("layernorm_backward dw", dw, gw, 2e-4, 1e-4);
      expect_close("layernorm_backward db", db, gb, 2e-4, 1e-4);
    }
  }
}

TEST_CASE("cpu_backend gelu forward and backward") {
  auto be = make_cpu_backend(2);
  const int64_t n = 5001;
  Vec x = randn(n, 20, 3.0f);
  x[0] = 0.0f, x[1] = 12.0f, x[2] = -12.0f, x[3] = 1e-4f;
  const Vec dout = randn(n, 21);
  Vec out(n), din(n);
  be->gelu_forward(out.data(), x.data(), n);
  DVec ref(n), dref(n);
  for (int64_t i = 0; i < n; ++i) {
    ref[i] = ref_gelu(x[i]);
    const double h = 1e-5;
    dref[i] = (ref_gelu(x[i] + h) - ref_gelu(x[i] - h)) / (2 * h) * dout[i];
  }
  expect_close("gelu_forward", out, ref, 2e-7, 2e-6);
  be->gelu_backward(din.data(), x.data(), dout.data(), n);
  expect_close("gelu_backward", din, dref, 1e-6, 1e-5);
  Vec inplace = dout;  // dinp may alias dout
  be->gelu_backward(inplace.data(), x.data(), inplace.data(), n);
  CHECK(std::memcmp(inplace.data(), din.data(), n * sizeof(float)) == 0);
}

TEST_CASE("cpu_backend fused MLP ops are exactly the unfused sequence") {
  auto be = make_cpu_backend(2);
  const int64_t N = 37, IC = 24, H = 40, OC = 24;
  const Vec inp = randn(N * IC, 30), w1 = randn(IC * H, 31, 0.3f), b1 = randn(H, 32, 0.3f);
  const Vec w2 = randn(H * OC, 33, 0.3f), b2 = randn(OC, 34), dy = randn(N * OC, 35);
  auto same = [](const Vec& a, const Vec& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  for (bool with_bias : {true, false}) {
    CAPTURE(with_bias);
    const float* bias = with_bias ? b1.data() : nullptr;
    Vec pre(N * H), h(N * H), pre_ref(N * H), h_ref(N * H);
    be->matmul_gelu_forward(h.data(), pre.data(), inp.data(), w1.data(), bias, N, IC, H);
    be->matmul_forward(pre_ref.data(), inp.data(), w1.data(), bias, N, IC, H);
    be->gelu_forward(h_ref.data(), pre_ref.data(), N * H);
    CHECK(same(pre, pre_ref));
    CHECK(same(h, h_ref));

    // Gradients accumulate onto non-zero values; db1 and dinp may be skipped.
    for (bool skip : {false, true}) {
      CAPTURE(skip);
      Vec dinp(N * IC), dw1 = randn(IC * H, 36), db1 = randn(H, 37), dpre(N * H);
      Vec dw2 = randn(H * OC, 38), db2 = randn(OC, 39);
      Vec dinp_r = dinp, dw1_r = dw1, db1_r = db1, dpre_r = dpre, dw2_r = dw2, db2_r = db2;
      GeluMlpBackward g;
      g.dinp = skip ? nullptr : dinp.data();
      g.dw1 = dw1.data();
      g.db1 = skip ? nullptr : db1.data();
      g.dpre = dpre.data();
      g.dw2 = dw2.data();
      g.db2 = db2.data();
      g.dy = dy.data();
      g.inp = inp.data();
      g.w1 = w1.data();
      g.pre = pre.data();
      g.h = h.data();
      g.w2 = w2.data();
      g.N = N, g.IC = IC, g.H = H, g.OC = OC;
      be->matmul_gelu_backward(g);
      be->matmul_backward(dpre_r.data(), dw2_r.data(), db2_r.data(), dy.data(), h.data(), w2.data(),
                          N, H, OC);
      be->gelu_backward(dpre_r.data(), pre.data(), dpre_r.data(), N * H);
      be->matmul_backward(skip ? nullptr : dinp_r.data(), dw1_r.data(),
                          skip ? nullptr : db1_r.data(), dpre_r.data(), inp.data(), w1.data(), N,
                          IC, H);
      CHECK(same(dinp, dinp_r));
      CHECK(same(dw1, dw1_r));
      CHECK(same(db1, db1_r));
      CHECK(same(dpre, dpre_r));
      CHECK(same(dw2, dw2_r));
      CHECK(same(db2, db2_r));
    }
  }
}

TEST_CASE("cpu_backend attention reference backward equals finite differences") {
  // Validates the fp64 reference used below, on a size small enough for finite differences:
  // causal, and bidirectional with padding keys.
  const int64_t B = 2, T = 5, C = 6, NH = 2;
  const DVec qkv = to_d(randn(B * T * 3 * C, 30));
  const DVec dout = to_d(randn(B * T * C, 31));
  for (const RefMask& mask : {RefMask{true, {}}, RefMask{false, {1, 1, 0, 1, 0, 1, 1, 1, 1, 0}}}) {
    auto f = [&](const DVec& x) { return dot(ref_attention(x, B, T, C, NH, nullptr, mask), dout); };
    const DVec fd = finite_diff(f, qkv);
    const DVec an = ref_attention_backward(qkv, dout, B, T, C, NH, mask);
    Vec an_f(an.begin(), an.end());
    expect_close("reference attention backward vs finite differences", an_f, fd, 1e-6, 1e-5);
  }
}

// Sizes cross the CPU backend's tiles (64 query rows, 128 keys): T = 1, exact tiles, partial
// tiles in both directions, and a padded key tile that is wholly masked for every row.
TEST_CASE("cpu_backend attention forward and backward match the reference") {
  auto be = make_cpu_backend(2);
  struct Case { int64_t B, T, C, NH; bool causal; bool padded; };
  for (Case k : {Case{1, 1, 4, 1, true, false}, Case{2, 13, 36, 3, true, false},
                 Case{1, 64, 16, 2, true, false}, Case{2, 70, 20, 5, true, false},
                 Case{1, 150, 24, 2, true, false}, Case{1, 1, 4, 1, false, false},
                 Case{2, 13, 36, 3, false, true}, Case{2, 70, 20, 5, false, false},
                 Case{2, 300, 24, 2, false, true}}) {
    CAPTURE(k.T);
    CAPTURE(k.NH);
    CAPTURE(k.causal);
    CAPTURE(k.padded);
    const Vec qkv = randn(k.B * k.T * 3 * k.C, 40 + k.T, 1.5f);
    const Vec dout = randn(k.B * k.T * k.C, 50 + k.T);
    RefMask mask{k.causal, {}};
    if (k.padded) {
      // Batch row 0: every third key is padding; batch row 1: keys 5..T-1 are (a ragged tail,
      // which for T = 300 leaves the key tile 128..255 fully masked).
      for (int64_t b = 0; b < k.B; ++b) {
        for (int64_t t = 0; t < k.T; ++t) {
          mask.valid.push_back(b == 0 ? (t % 3 != 2) : (t < 5));
        }
      }
    }
    AttentionShape sh{k.B, k.T, k.C, k.NH, k.causal, mask.valid.empty() ? nullptr : mask.valid.data()};
    Vec out(k.B * k.T * k.C), lse(k.B * k.NH * k.T), dqkv(qkv.size(), 7.0f);
    Vec scratch(lse.size(), 3.0f);
    be->attention_forward(out.data(), lse.data(), qkv.data(), sh);
    DVec probs, ref_lse;
    const DVec ref = ref_attention(to_d(qkv), k.B, k.T, k.C, k.NH, &probs, mask, &ref_lse);
    expect_close("attention_forward", out, ref, 1e-5, 1e-5);
    expect_close("attention_forward lse", lse, ref_lse, 1e-5, 1e-5);
    be->attention_backward(dqkv.data(), scratch.data(), dout.data(), out.data(), qkv.data(),
                           lse.data(), sh);
    const DVec dref = ref_attention_backward(to_d(qkv), to_d(dout), k.B, k.T, k.C, k.NH, mask);
    expect_close("attention_backward (written, not accumulated)", dqkv, dref, 1e-5,
                 1e-5 * std::max(1.0, max_abs(dref)));
    if (!k.causal) continue;

    // Decoding one position against a KV cache equals the corresponding row of the full pass.
    const int64_t C3 = 3 * k.C;
    Vec kc(k.T * k.C), vc(k.T * k.C), o(k.C), sc(k.T);
    for (int64_t t = 0; t < k.T; ++t) {
      std::memcpy(&kc[t * k.C], &qkv[t * C3 + k.C], k.C * sizeof(float));
      std::memcpy(&vc[t * k.C], &qkv[t * C3 + 2 * k.C], k.C * sizeof(float));
    }
    const int64_t t = k.T - 1;
    be->attention_decode(o.data(), sc.data(), &qkv[t * C3], kc.data(), vc.data(), t + 1, k.C, k.C,
                         k.NH);
    expect_close("attention_decode", o.data(), &ref[t * k.C], k.C, 1e-5, 1e-5);
  }
}

TEST_CASE("cpu_backend crossentropy forward and backward") {
  auto be = make_cpu_backend(2);
  const int64_t N = 37, V = 257, ld = 320;
  Vec logits = randn(N * ld, 60, 3.0f);
  std::vector<int32_t> y(N);
  for (int64_t n = 0; n < N; ++n) y[n] = static_cast<int32_t>((n * 97) % V);
  y[0] = 0, y[1] = V - 1;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = V; c < ld; ++c) logits[n * ld + c] = 1e30f;  // must be ignored
  const DVec ref = ref_losses(to_d(logits), y, N, V, ld);
  Vec losses(N);
  be->crossentropy_forward(losses.data(), logits.data(), y.data(), N, V, ld);
  expect_close("crossentropy_forward", losses, ref, 1e-5, 1e-6);

  const float dloss = 0.37f;
  Vec grad = logits;
  Vec losses2(N);
  be->crossentropy_forward_backward(losses2.data(), grad.data(), y.data(), dloss, N, V, ld);
  CHECK(std::memcmp(losses.data(), losses2.data(), N * sizeof(float)) == 0);
  // d(dloss·Σ losses)/dlogits by finite differences of the reference, row by row.
  DVec dref(N * ld, 1e30);
  for (int64_t n = 0; n < N; ++n) {
    DVec row(logits.begin() + n * ld, logits.begin() + (n + 1) * ld);
    std::vector<int32_t> yy{y[n]};
    const DVec g = finite_diff([&](const DVec& r) { return dloss * ref_losses(r, yy, 1, V, ld)[0]; }, row);
    for (int64_t c = 0; c < V; ++c) dref[n * ld + c] = g[c];
  }
  expect_close("crossentropy_forward_backward dlogits (incl. untouched padding)", grad, dref, 2e-6,
               1e-4);
}

TEST_CASE("cpu_backend encoder forward and backward") {
  auto be = make_cpu_backend(2);
  const int64_t B = 3, T = 7, C = 70, Vp = 12, V = 10;
  const Vec wte = randn(Vp * C, 70), wpe = randn(T * C, 71), dout = randn(B * T * C, 72);
  std::vector<int32_t> tok(B * T);
  for (int64_t n = 0; n < B * T; ++n) tok[n] = static_cast<int32_t>((n * n) % V);  // repeats
  Vec out(B * T * C);
  be->encoder_forward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C);
  DVec ref(out.size()), dwte_ref(Vp * C, 0.5), dwpe_ref(T * C, 0.25);
  for (int64_t n = 0; n < B * T; ++n)
    for (int64_t c = 0; c < C; ++c) {
      ref[n * C + c] = double(wte[tok[n] * C + c]) + wpe[(n % T) * C + c];
      dwte_ref[tok[n] * C + c] += dout[n * C + c];
      dwpe_ref[(n % T) * C + c] += dout[n * C + c];
    }
  expect_close("encoder_forward", out, ref, 0, 1e-7);
  Vec dwte(Vp * C, 0.5f), dwpe(T * C, 0.25f);
  be->encoder_backward(dwte.data(), dwpe.data(), dout.data(), tok.data(), B, T, C);
  expect_close("encoder_backward dwte", dwte, dwte_ref, 1e-6, 1e-6);
  expect_close("encoder_backward dwpe", dwpe, dwpe_ref, 1e-6, 1e-6);
  for (int64_t r = V; r < Vp; ++r)
    for (int64_t c = 0; c < C; ++c) REQUIRE(dwte[r * C + c] == 0.5f);  // untouched rows
}

TEST_CASE("cpu_backend residual - fill and fill_columns") {
  auto be = make_cpu_backend(2);
  const int64_t n = 100003;
  const Vec a = randn(n, 80), b = randn(n, 81);
  Vec out(n);
  be->residual_forward(out.data(), a.data(), b.data(), n);
  for (int64_t i = 0; i < n; ++i) REQUIRE(out[i] == a[i] + b[i]);
  be->fill(out.data(), 2.5f, n);
  for (int64_t i = 0; i < n; ++i) REQUIRE(out[i] == 2.5f);
  Vec m(5 * 8, 1.0f);
  be->fill_columns(m.data(), -INFINITY, 5, 6, 8, 8);
  for (int64_t r = 0; r < 5; ++r)
    for (int64_t c = 0; c < 8; ++c) REQUIRE((c >= 6 ? std::isinf(m[r * 8 + c]) : m[r * 8 + c] == 1.0f));
  auto buf = be->alloc<float>(1000);
  CHECK(reinterpret_cast<uintptr_t>(buf.data()) % 64 == 0);
  CHECK(buf.size() == 1000);
}

TEST_CASE("cpu_backend reductions are bitwise reproducible and independent of the thread count") {
  auto be1 = make_cpu_backend(1);
  auto be2 = make_cpu_backend(2);
  const int64_t N = 300, C = 200, B = 3, T = 100, NH = 4;
  const Vec x = randn(N * C, 90), w = randn(C, 91), b = randn(C, 92), dout = randn(N * C, 93);
  Vec out(N * C), mean(N), rstd(N);
  be2->layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  auto run_ln = [&](Backend& be) {
    Vec di(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
    be.layernorm_backward(di.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                          mean.data(), rstd.data(), N, C);
    di.insert(di.end(), dw.begin(), dw.end());
    di.insert(di.end(), db.begin(), db.end());
    return di;
  };
  CHECK(run_ln(*be1) == run_ln(*be2));
  CHECK(run_ln(*be2) == run_ln(*be2));
  const Vec qkv = randn(B * T * 3 * C, 94), ad = randn(B * T * C, 95);
  auto run_att = [&](Backend& be) {
    Vec o(B * T * C), lse(B * NH * T), sc(lse.size()), d(qkv.size());
    const AttentionShape sh{B, T, C, NH, true, nullptr};
    be.attention_forward(o.data(), lse.data(), qkv.data(), sh);
    be.attention_backward(d.data(), sc.data(), ad.data(), o.data(), qkv.data(), lse.data(), sh);
    o.insert(o.end(), d.begin(), d.end());
    return o;
  };
  CHECK(run_att(*be2) == run_att(*be2));
  auto run_bias = [&](Backend& be) {
    Vec dinp(N * 7), dw(7 * C, 0.0f), db(C, 0.0f);
    const Vec in = randn(N * 7, 96), wm = randn(7 * C, 97);
    be.matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), in.data(), wm.data(), N, 7, C);
    return db;
  };
  CHECK(run_bias(*be1) == run_bias(*be2));
}

}  // namespace ptrain
