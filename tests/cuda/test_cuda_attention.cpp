// The CUDA flash-attention kernels (worker/backend/cuda/cuda_attention.hpp) against the CPU
// backend, their oracle: forward output and log-sum-exp, and the backward's dQKV, causal and padded
// bidirectional, at sizes that cross the 32-row tiles and the CPU's 64×128 tiles, and at GPT-2's
// head size; and bitwise repeatability of the backward (no atomics). Needs a GPU: without one each
// case says so and is skipped (exit 77, CTest's skip code for this folder).
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/backend/cuda/cuda_attention.hpp"

#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

using namespace ptrain;

namespace {

void skip_without_gpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("SKIPPED: no CUDA device (cudaGetDeviceCount: %s)\n",
                cudaGetErrorString(cudaGetDeviceCount(&n)));
    std::exit(77);
  }
}

// Device copy of a host vector, freed at scope end.
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    REQUIRE(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)) == cudaSuccess);
    if (n) REQUIRE(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  ~Dev() { cudaFree(p); }
  std::vector<T> host() const {
    std::vector<T> h(n);
    REQUIRE(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
  }
};

// |a − b| ≤ abs + rel·|b| everywhere; prints the first mismatches and the largest error.
void expect_close(const char* what, const std::vector<float>& a, const std::vector<float>& b,
                  double abs, double rel) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  int shown = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = std::fabs(double{a[i]} - b[i]);
    worst = std::max(worst, err);
    if (err > abs + rel * std::fabs(b[i]) && shown++ < 5) {
      std::printf("%s[%zu]: cuda %.8g cpu %.8g\n", what, i, a[i], b[i]);
    }
  }
  MESSAGE(what << ": largest |cuda - cpu| " << worst);
  CHECK(shown == 0);
}

}  // namespace

TEST_CASE("cuda flash attention equals the CPU backend - forward and lse and backward") {
  skip_without_gpu();
  auto cpu = make_cpu_backend(0);
  struct Case { int64_t B, T, C, NH; bool causal, padded; };
  for (Case k : {Case{1, 1, 4, 1, true, false}, Case{2, 13, 36, 3, true, false},
                 Case{2, 70, 20, 5, true, false}, Case{1, 300, 24, 2, false, true},
                 Case{2, 200, 96, 3, true, true}, Case{2, 1024, 768, 12, true, false},
                 Case{1, 257, 256, 2, false, false}}) {
    CAPTURE(k.T);
    CAPTURE(k.C);
    CAPTURE(k.causal);
    std::mt19937 rng(static_cast<uint32_t>(k.T * 31 + k.C));
    std::normal_distribution<float> nd(0.0f, 1.5f);
    std::vector<float> qkv(static_cast<size_t>(k.B * k.T * 3 * k.C)), dout(static_cast<size_t>(k.B * k.T * k.C));
    for (float& x : qkv) x = nd(rng);
    for (float& x : dout) x = nd(rng);
    std::vector<int32_t> valid;
    if (k.padded) {
      for (int64_t b = 0; b < k.B; ++b) {
        for (int64_t t = 0; t < k.T; ++t) valid.push_back(b == 0 ? (t % 3 != 2) : (t < 5));
      }
    }
    const AttentionShape hs{k.B, k.T, k.C, k.NH, k.causal, valid.empty() ? nullptr : valid.data()};
    std::vector<float> out(dout.size()), lse(static_cast<size_t>(k.B * k.NH * k.T)), sc(lse.size()),
        dq(qkv.size());
    cpu->attention_forward(out.data(), lse.data(), qkv.data(), hs);
    cpu->attention_backward(dq.data(), sc.data(), dout.data(), out.data(), qkv.data(), lse.data(), hs);

    Dev<float> g_qkv(qkv), g_dout(dout), g_out(out), g_lse(lse), g_sc(sc), g_dq(dq);
    Dev<int32_t> g_valid(valid);
    const AttentionShape ds{k.B, k.T, k.C, k.NH, k.causal, valid.empty() ? nullptr : g_valid.p};
    cuda::flash_attention_forward(g_out.p, g_lse.p, g_qkv.p, ds, nullptr);
    cuda::flash_attention_backward(g_dq.p, g_sc.p, g_dout.p, g_out.p, g_qkv.p, g_lse.p, ds, nullptr);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    expect_close("out", g_out.host(), out, 2e-6, 1e-5);
    expect_close("lse", g_lse.host(), lse, 2e-6, 1e-5);
    const std::vector<float> d1 = g_dq.host();
    double scale = 1;
    for (float x : dq) scale = std::max(scale, double{std::fabs(x)});
    expect_close("dqkv", d1, dq, 1e-5 * scale, 1e-5);
    // Deterministic backward: a second run gives the same bits.
    cuda::flash_attention_backward(g_dq.p, g_sc.p, g_dout.p, g_out.p, g_qkv.p, g_lse.p, ds, nullptr);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(g_dq.host() == d1);
  }
}

TEST_CASE("cuda flash attention refuses a head size above its shared-memory plan") {
  skip_without_gpu();
  float* p = nullptr;
  CHECK_THROWS_WITH(cuda::flash_attention_forward(p, p, p, AttentionShape{1, 8, 256, 1, true, nullptr},
                                                  nullptr),
                    doctest::Contains("head size 256"));
}
