// The CUDA kernels' arithmetic (worker/backend/cuda/cuda_math.hpp) against the CPU backend, the
// oracle, on any machine: the same __host__ __device__ functions the kernels call, driven here
// through host copies of the kernels' reduction trees (32-lane butterflies, strided per-thread
// partials). What this cannot check (indexing, shared memory, launch shapes) is covered by the
// `cuda` tests on a GPU (test_cuda_backend.cpp).
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/backend/cuda/cuda_math.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

using namespace ptrain;
namespace cm = ptrain::cuda_math;

namespace {

// Bitwise equality of reduction values (the kernels rely on every lane ending with the same one).
bool same(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }
bool same(cm::MaxSum a, cm::MaxSum b) { return same(a.m, b.m) && same(a.s, b.s); }
bool same(cm::ArgMax a, cm::ArgMax b) { return same(a.v, b.v) && a.i == b.i; }

// What every lane holds after the kernels' warp_reduce: v[i] = op(v[i], v[i ^ m]), m = 16..1.
template <class T, class Op>
T butterfly(std::vector<T> v, Op op) {
  for (int m = 16; m >= 1; m /= 2) {
    std::vector<T> next(v.size());
    for (size_t i = 0; i < v.size(); ++i) next[i] = op(v[i], v[i ^ static_cast<size_t>(m)]);
    v = next;
  }
  for (size_t i = 1; i < v.size(); ++i) REQUIRE(same(v[i], v[0]));
  return v[0];
}

// The kernels' block_reduce for `threads` (a multiple of 32) per-thread values.
template <class T, class Op>
T block_reduce(const std::vector<T>& per_thread, Op op, T identity) {
  std::vector<T> part;
  for (size_t w = 0; w < per_thread.size() / 32; ++w) {
    part.push_back(butterfly(std::vector<T>(per_thread.begin() + w * 32,
                                            per_thread.begin() + (w + 1) * 32), op));
  }
  part.resize(32, identity);
  return butterfly(part, op);
}

bool close(float got, float want, float abs_tol, float rel_tol) {
  return std::fabs(got - want) <= abs_tol + rel_tol * std::fabs(want);
}

std::vector<float> randn(size_t n, float scale, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace

TEST_CASE("cuda math: GELU (tanh and erf) and tanh' equal the CPU backend's element by element") {
  auto cpu = make_cpu_backend(1);
  std::vector<float> x;
  for (int i = -2400; i <= 2400; ++i) x.push_back(static_cast<float>(i) * 0.005f);  // [-12, 12]
  for (float v : randn(4096, 3.0f, 7)) x.push_back(v);
  x.push_back(-60.0f);  // e^{-2u} overflows unless clamped: the gradient must stay finite
  x.push_back(60.0f);
  const auto n = static_cast<int64_t>(x.size());
  std::vector<float> ones(x.size(), 1.0f), out(x.size()), grad(x.size());

  cpu->gelu_forward(out.data(), x.data(), n);
  cpu->gelu_backward(grad.data(), x.data(), ones.data(), n);
  for (size_t i = 0; i < x.size(); ++i) {
    CAPTURE(x[i]);
    // The CPU's exp is a polynomial (≤ 2 ulp), ours expf: a few ulp apart at most.
    CHECK(close(cm::gelu_tanh(x[i]), out[i], 1e-7f, 2e-6f));
    CHECK(std::isfinite(cm::gelu_tanh_grad(x[i])));
    CHECK(close(cm::gelu_tanh_grad(x[i]), grad[i], 1e-7f, 2e-6f));
  }
  cpu->gelu_erf_forward(out.data(), x.data(), n);
  cpu->gelu_erf_backward(grad.data(), x.data(), ones.data(), n);
  for (size_t i = 0; i < x.size(); ++i) {
    CAPTURE(x[i]);
    CHECK(close(cm::gelu_erf(x[i]), out[i], 1e-7f, 1e-6f));
    CHECK(close(cm::gelu_erf_grad(x[i]), grad[i], 1e-7f, 1e-6f));
  }
  std::vector<float> t(x.size());
  cpu->tanh_forward(t.data(), x.data(), n);
  cpu->tanh_backward(grad.data(), t.data(), ones.data(), n);
  for (size_t i = 0; i < x.size(); ++i) CHECK(cm::tanh_grad_from_out(t[i]) == grad[i]);
}

TEST_CASE("cuda math: LayerNorm rows through the warp's reduction tree equal the CPU backend") {
  auto cpu = make_cpu_backend(1);
  for (int64_t C : {1, 31, 32, 100, 768}) {
    CAPTURE(C);
    const int64_t N = 5;
    std::vector<float> x = randn(static_cast<size_t>(N * C), 2.0f, 11 + C);
    for (int64_t i = 0; i < N * C; ++i) x[i] += 3.0f;  // a mean far from 0
    const std::vector<float> w = randn(static_cast<size_t>(C), 1.0f, 12);
    const std::vector<float> b = randn(static_cast<size_t>(C), 1.0f, 13);
    const std::vector<float> dout = randn(static_cast<size_t>(N * C), 1.0f, 14);
    std::vector<float> out(x.size()), mean(N), rstd(N), dinp(x.size(), 0.5f), dw(C, 0.0f),
        db(C, 0.0f);
    cpu->layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    cpu->layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                            mean.data(), rstd.data(), N, C);
    auto sum = [](float a, float c) { return a + c; };
    const float inv_c = 1.0f / static_cast<float>(C);
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = x.data() + n * C;
      std::vector<float> lanes(32, 0.0f);
      for (int64_t c = 0; c < C; ++c) lanes[c % 32] += xr[c];
      const float m = butterfly(lanes, sum) * inv_c;
      std::fill(lanes.begin(), lanes.end(), 0.0f);
      for (int64_t c = 0; c < C; ++c) lanes[c % 32] += (xr[c] - m) * (xr[c] - m);
      const float s = cm::layernorm_rstd(butterfly(lanes, sum) * inv_c, 1e-5f);
      CHECK(close(m, mean[n], 1e-6f, 1e-6f));
      CHECK(close(s, rstd[n], 0.0f, 1e-5f));
      std::vector<float> a1(32, 0.0f), a2(32, 0.0f);
      for (int64_t c = 0; c < C; ++c) {
        CHECK(close(cm::layernorm_out(xr[c], m, s, w[c], b[c]), out[n * C + c], 1e-5f, 1e-5f));
        const float dn = w[c] * dout[n * C + c];
        a1[c % 32] += dn;
        a2[c % 32] += dn * (xr[c] - m) * s;
      }
      const float dn_mean = butterfly(a1, sum) * inv_c;
      const float dn_xhat_mean = butterfly(a2, sum) * inv_c;
      for (int64_t c = 0; c < C; ++c) {
        const float got =
            0.5f + cm::layernorm_dinp(xr[c], dout[n * C + c], w[c], m, s, dn_mean, dn_xhat_mean);
        CHECK(close(got, dinp[n * C + c], 1e-5f, 1e-4f));
      }
    }
  }
}

TEST_CASE("cuda math: online softmax cross-entropy over a block's threads equals the CPU backend") {
  auto cpu = make_cpu_backend(1);
  const int threads = 512;  // the kernel's block
  for (int64_t V : {1, 7, 600, 5000}) {
    CAPTURE(V);
    const int64_t N = 3, ld = V + 3;  // padded columns must stay untouched
    std::vector<float> logits = randn(static_cast<size_t>(N * ld), 4.0f, 21 + V);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = V; c < ld; ++c) logits[n * ld + c] = -1234.5f;
    }
    logits[1 * ld + 0] = 80.0f;  // a dominant logit: e^{x−m} underflows for the rest
    const std::vector<int32_t> targets = {0, static_cast<int32_t>(V - 1),
                                          static_cast<int32_t>(V / 2)};
    std::vector<float> ref = logits, losses(N);
    const float dloss = 0.37f;
    cpu->crossentropy_forward_backward(losses.data(), ref.data(), targets.data(), dloss, N, V, ld);
    for (int64_t n = 0; n < N; ++n) {
      const float* row = logits.data() + n * ld;
      std::vector<cm::MaxSum> per(threads, cm::maxsum_empty());
      for (int64_t i = 0; i < V; ++i) per[i % threads] = cm::maxsum_push(per[i % threads], row[i]);
      const cm::MaxSum st = block_reduce(per, cm::maxsum_combine, cm::maxsum_empty());
      const float loss = cm::crossentropy_loss(st, row[targets[n]]);
      CHECK(close(loss, losses[n], 1e-5f, 1e-5f));
      const float scale = dloss / st.s;
      for (int64_t i = 0; i < V; ++i) {
        const float g = cm::crossentropy_grad(row[i], i == targets[n], st, scale, dloss);
        CHECK(close(g, ref[n * ld + i], 1e-7f, 2e-5f));
      }
      for (int64_t c = V; c < ld; ++c) CHECK(ref[n * ld + c] == -1234.5f);
    }
  }
  // Combining with an empty side is exact, both ways.
  const cm::MaxSum a{2.0f, 3.0f};
  CHECK(cm::maxsum_combine(a, cm::maxsum_empty()).s == 3.0f);
  CHECK(cm::maxsum_combine(cm::maxsum_empty(), a).m == 2.0f);
  CHECK(cm::maxsum_combine(cm::maxsum_empty(), cm::maxsum_empty()).s == 0.0f);
}

TEST_CASE("cuda math: argmax picks the first of equal maxima through any combination order") {
  auto cpu = make_cpu_backend(1);
  std::vector<float> row = randn(3000, 1.0f, 5);
  row[100] = 9.0f;
  row[2000] = 9.0f;
  row[2999] = 9.0f;
  int32_t want = -1;
  cpu->argmax_rows(&want, row.data(), 1, 3000, 3000);
  std::vector<cm::ArgMax> per(512, cm::ArgMax{-INFINITY, INT64_MAX});
  for (int64_t i = 0; i < 3000; ++i) {
    per[i % 512] = cm::argmax_combine(per[i % 512], cm::ArgMax{row[i], i});
  }
  const cm::ArgMax got = block_reduce(per, cm::argmax_combine, cm::ArgMax{-INFINITY, INT64_MAX});
  CHECK(want == 100);
  CHECK(got.i == want);
}
