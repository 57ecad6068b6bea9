// The cuda backend against the CPU backend (the oracle), on a GPU: every op forward and backward,
// a whole training step and a 10-step trajectory, in fp32, TF32 and bf16, and bitwise
// repeatability. Label `cuda`. Without a GPU (a build without CUDA, no driver, no device) every
// case prints "SKIPPED: ..." with the reason and exits 77, which CTest shows as skipped.
//
// Tolerances (|got − want| ≤ abs·rms(want) + rel·|want|, rms over the compared tensor):
//   elementwise and row ops (fp32 both sides; expf/erff vs the CPU's polynomial): 1e-5, 1e-5;
//   fp32 products (cuBLASLt vs OpenBLAS, other summation orders): 1e-5, 1e-4;
//   TF32 products (10-bit mantissa inputs): 5e-3, 5e-3;
//   bf16 products (8-bit mantissa inputs, fp32 accumulation): 2e-2, 2e-2;
//   the GELU epilogue (cuBLASLt's own GELU and GELU', whose accuracy cuBLASLt does not document;
//   2e-3 is what a hardware tanh approximation, max relative error 2^-11, needs): 2e-3, 2e-3, or
//   the mode's product tolerance where that is larger. Every fused case prints its largest error
//   and how the epilogue products ran (fused, or why not).
#include "common/error.hpp"
#include "common/tensor/gpt_init.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/model/backend.hpp"
#include "worker/step_transfers.hpp"
#include "worker/train_step.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

using namespace ptrain;

namespace {

[[noreturn]] void skip(const std::string& why) {
  std::cout << "SKIPPED: " << why << std::endl;
  std::_Exit(77);
}

struct Mode {
  const char* name;
  DevicePrecision precision;
  bool tf32;
  float abs, rel;  // tolerance of products in this mode
};
const Mode kFp32{"fp32", DevicePrecision::kFp32, false, 1e-5f, 1e-4f};
const Mode kTf32{"tf32", DevicePrecision::kFp32, true, 5e-3f, 5e-3f};
const Mode kBf16{"bf16", DevicePrecision::kBf16, false, 2e-2f, 2e-2f};
const Mode kModes[] = {kFp32, kTf32, kBf16};

// The tolerance of results that went through cuBLASLt's GELU epilogue in `mode`.
constexpr float kGeluEpilogue = 2e-3f;
Mode fused(const Mode& m) {
  Mode f = m;
  f.abs = std::max(m.abs, kGeluEpilogue);
  f.rel = std::max(m.rel, kGeluEpilogue);
  return f;
}

// The GPU backend in `mode`, or a visible skip naming why there is none.
std::unique_ptr<Backend> gpu_or_skip(const Mode& mode = kFp32, bool fuse_epilogues = true) {
  BackendOptions o;
  o.precision = mode.precision;
  o.allow_tf32 = mode.tf32;
  o.fuse_epilogues = fuse_epilogues;
  try {
    return make_backend("cuda:0", o, "cuda test");
  } catch (const NotImplementedError& e) {
    skip(std::string("no cuda backend in this build: ") + e.what());
  } catch (const DeviceError& e) {
    skip(std::string("no usable GPU: ") + e.what());
  }
}

template <class T>
Buffer<T> up(Backend& be, const std::vector<T>& h) {
  Buffer<T> b = be.alloc<T>(static_cast<int64_t>(h.size()));
  be.copy_to_device(b.data(), h.data(), h.size() * sizeof(T));
  return b;
}
template <class T>
std::vector<T> down(Backend& be, const Buffer<T>& b) {
  std::vector<T> h(static_cast<size_t>(b.size()));
  be.copy_to_host(h.data(), b.data(), h.size() * sizeof(T));
  return h;
}

std::vector<float> randn(size_t n, float scale, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
std::vector<int32_t> rand_ids(size_t n, int32_t hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(hi));
  return v;
}

// Compares with abs·rms(want) + rel·|want|; prints the first mismatches and the largest error.
void expect_close(const std::string& what, const std::vector<float>& got,
                  const std::vector<float>& want, float abs, float rel) {
  REQUIRE(got.size() == want.size());
  double ss = 0.0;
  for (float w : want) ss += static_cast<double>(w) * w;
  const float rms = want.empty() ? 0.0f : static_cast<float>(std::sqrt(ss / want.size()));
  int bad = 0;
  float worst = 0.0f;
  size_t worst_at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float err = std::fabs(got[i] - want[i]);
    const bool ok = err <= abs * rms + rel * std::fabs(want[i]) || (got[i] == want[i]);
    if (!(err <= worst) || std::isnan(got[i])) {
      worst = err;
      worst_at = i;
    }
    if (!ok && ++bad <= 5) {
      std::cout << what << ": [" << i << "] got " << got[i] << " want " << want[i] << "\n";
    }
  }
  if (bad > 0) {
    std::cout << what << ": " << bad << " of " << got.size() << " outside tolerance; largest error "
              << worst << " at [" << worst_at << "] (rms of reference " << rms << ")\n";
  }
  CHECK_MESSAGE(bad == 0, what);
}

// The largest |got − want| relative to rms(want), printed for the record (what a fused path
// really costs, whatever the tolerance).
void report_error(const std::string& what, const std::vector<float>& got,
                  const std::vector<float>& want) {
  double ss = 0.0, worst = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    ss += static_cast<double>(want[i]) * want[i];
    worst = std::max(worst, static_cast<double>(std::fabs(got[i] - want[i])));
  }
  const double rms = want.empty() ? 0.0 : std::sqrt(ss / static_cast<double>(want.size()));
  std::cout << what << ": largest error " << worst << " = " << (rms > 0 ? worst / rms : 0.0)
            << "·rms\n";
}

bool bitwise(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

constexpr float kEw = 1e-5f;  // elementwise / row ops, both abs and rel

}  // namespace

TEST_CASE("cuda: memory - copies (sync and async through pinned memory) - fill and fill_columns") {
  auto gpu = gpu_or_skip();
  CHECK_FALSE(gpu->host_accessible());
  const std::vector<float> h = randn(1000, 1.0f, 1);
  Buffer<float> a = up(*gpu, h);
  CHECK(bitwise(down(*gpu, a), h));
  HostBuffer<float> pin = gpu->alloc_host<float>(1000);
  std::copy(h.begin(), h.end(), pin.span().begin());
  Buffer<float> b = gpu->alloc<float>(1000);
  gpu->copy_to_device_async(b.data(), pin.data(), 4000);
  Buffer<float> c = gpu->alloc<float>(1000);
  gpu->copy(c.data(), b.data(), 1000);  // ordered after the upload
  HostBuffer<float> back = gpu->alloc_host<float>(1000);
  gpu->copy_to_host_async(back.data(), c.data(), 4000);
  gpu->synchronize();
  CHECK(std::equal(h.begin(), h.end(), back.span().begin()));

  gpu->fill(a.data(), 2.5f, 1000);
  const std::vector<float> f = down(*gpu, a);
  CHECK(std::all_of(f.begin(), f.end(), [](float x) { return x == 2.5f; }));
  // rows 10 of ld 100: columns 37..99 set, the rest untouched.
  Buffer<float> m = up(*gpu, h);
  gpu->fill_columns(m.data(), -INFINITY, 10, 37, 100, 100);
  const std::vector<float> g = down(*gpu, m);
  for (size_t i = 0; i < g.size(); ++i) {
    if (i % 100 >= 37) {
      CHECK(g[i] == -INFINITY);
    } else {
      CHECK(g[i] == h[i]);
    }
  }
}

TEST_CASE("cuda: gemm in every transpose with beta and strides - fp32 TF32 bf16") {
  for (const Mode& mode : kModes) {
    CAPTURE(mode.name);
    auto gpu = gpu_or_skip(mode);
    auto cpu = make_cpu_backend(2);
    const int64_t M = 37, N = 53, K = 29, pad = 3;
    for (Trans ta : {Trans::kNo, Trans::kYes}) {
      for (Trans tb : {Trans::kNo, Trans::kYes}) {
        const int64_t ar = ta == Trans::kNo ? M : K, ac = ta == Trans::kNo ? K : M;
        const int64_t br = tb == Trans::kNo ? K : N, bc = tb == Trans::kNo ? N : K;
        const int64_t lda = ac + pad, ldb = bc + pad, ldc = N + pad;
        const auto a = randn(static_cast<size_t>(ar * lda), 1.0f, 2);
        const auto b = randn(static_cast<size_t>(br * ldb), 1.0f, 3);
        auto c = randn(static_cast<size_t>(M * ldc), 1.0f, 4);
        Buffer<float> da = up(*gpu, a), db = up(*gpu, b), dc = up(*gpu, c);
        gpu->gemm(ta, tb, M, N, K, 0.75f, da.data(), lda, db.data(), ldb, 0.5f, dc.data(), ldc);
        cpu->gemm(ta, tb, M, N, K, 0.75f, a.data(), lda, b.data(), ldb, 0.5f, c.data(), ldc);
        expect_close(std::string("gemm ") + mode.name, down(*gpu, dc), c, mode.abs, mode.rel);
      }
    }
    // K = 0: c = beta·c.
    auto c = randn(20, 1.0f, 5);
    Buffer<float> dc = up(*gpu, c);
    gpu->gemm(Trans::kNo, Trans::kNo, 4, 5, 0, 1.0f, dc.data(), 1, dc.data(), 5, 0.5f, dc.data(), 5);
    for (auto& x : c) x *= 0.5f;
    CHECK(bitwise(down(*gpu, dc), c));
  }
}

TEST_CASE("cuda: matmul forward - residual in place - backward with bias - unaligned operands") {
  for (const Mode& mode : kModes) {
    CAPTURE(mode.name);
    auto gpu = gpu_or_skip(mode);
    auto cpu = make_cpu_backend(2);
    const int64_t N = 70, IC = 48, OC = 33;
    // Parameters at odd float offsets, as in the flat parameter vector.
    const auto params = randn(static_cast<size_t>(1 + IC * OC + OC), 0.3f, 6);
    const auto inp = randn(static_cast<size_t>(N * IC), 1.0f, 7);
    const auto res = randn(static_cast<size_t>(N * OC), 1.0f, 8);
    const auto dout = randn(static_cast<size_t>(N * OC), 1.0f, 9);
    Buffer<float> dp = up(*gpu, params), di = up(*gpu, inp), dr = up(*gpu, res),
                  dd = up(*gpu, dout);
    const float* w = params.data() + 1;
    const float* bias = w + IC * OC;

    std::vector<float> out(static_cast<size_t>(N * OC));
    Buffer<float> dout_fw = gpu->alloc<float>(N * OC);
    cpu->matmul_forward(out.data(), inp.data(), w, bias, N, IC, OC);
    gpu->matmul_forward(dout_fw.data(), di.data(), dp.data() + 1, dp.data() + 1 + IC * OC, N, IC, OC);
    expect_close("matmul_forward", down(*gpu, dout_fw), out, mode.abs, mode.rel);
    cpu->matmul_forward(out.data(), inp.data(), w, nullptr, N, IC, OC);
    gpu->matmul_forward(dout_fw.data(), di.data(), dp.data() + 1, nullptr, N, IC, OC);
    expect_close("matmul_forward (no bias)", down(*gpu, dout_fw), out, mode.abs, mode.rel);

    std::vector<float> acc = res;  // out aliases residual
    cpu->matmul_residual_forward(acc.data(), acc.data(), inp.data(), w, bias, N, IC, OC);
    gpu->matmul_residual_forward(dr.data(), dr.data(), di.data(), dp.data() + 1,
                                 dp.data() + 1 + IC * OC, N, IC, OC);
    expect_close("matmul_residual_forward", down(*gpu, dr), acc, mode.abs, mode.rel);

    // Gradients accumulate onto non-zero values.
    auto dw = randn(static_cast<size_t>(IC * OC), 1.0f, 10);
    auto dbias = randn(static_cast<size_t>(OC), 1.0f, 11);
    std::vector<float> dinp(static_cast<size_t>(N * IC));
    Buffer<float> ddw = up(*gpu, dw), ddb = up(*gpu, dbias), ddi = gpu->alloc<float>(N * IC);
    cpu->matmul_backward(dinp.data(), dw.data(), dbias.data(), dout.data(), inp.data(), w, N, IC, OC);
    gpu->matmul_backward(ddi.data(), ddw.data(), ddb.data(), dd.data(), di.data(), dp.data() + 1, N,
                         IC, OC);
    expect_close("matmul_backward dinp", down(*gpu, ddi), dinp, mode.abs, mode.rel);
    expect_close("matmul_backward dw", down(*gpu, ddw), dw, mode.abs, mode.rel);
    expect_close("matmul_backward dbias", down(*gpu, ddb), dbias, kEw, kEw);  // fp32 sums always
    // dinp null: only the weight gradients.
    cpu->matmul_backward(nullptr, dw.data(), nullptr, dout.data(), inp.data(), w, N, IC, OC);
    gpu->matmul_backward(nullptr, ddw.data(), nullptr, dd.data(), di.data(), dp.data() + 1, N, IC,
                         OC);
    expect_close("matmul_backward dw (no dinp)", down(*gpu, ddw), dw, mode.abs, mode.rel);
  }
}

TEST_CASE("cuda: fused matmul + bias + GELU forward and backward vs CPU - fp32 TF32 bf16 - fused and unfused") {
  struct Shape {
    const char* name;
    int64_t N, IC, H, OC;
    int64_t pre_offset;  // floats: 1 = a pre-activation only 4-byte aligned (unfused)
    bool fusable;
  };
  const Shape shapes[] = {{"aligned", 70, 48, 64, 40, 0, true},
                          {"hidden width not a multiple of 8", 33, 24, 36, 20, 0, false},
                          {"pre-activation 4-byte aligned", 40, 32, 64, 24, 1, false}};
  for (const Mode& mode : kModes) {
    for (bool fuse : {true, false}) {
      auto gpu = gpu_or_skip(mode, fuse);
      auto cpu = make_cpu_backend(2);
      for (const Shape& sh : shapes) {
        const std::string what = std::string(mode.name) + (fuse ? " fused " : " unfused ") + sh.name;
        CAPTURE(what);
        const Mode tol = fuse && sh.fusable ? fused(mode) : mode;
        const int64_t N = sh.N, IC = sh.IC, H = sh.H, OC = sh.OC;
        const auto inp = randn(static_cast<size_t>(N * IC), 1.0f, 90);
        const auto w1 = randn(static_cast<size_t>(IC * H), 0.3f, 91);
        const auto b1 = randn(static_cast<size_t>(H), 0.5f, 92);
        const auto w2 = randn(static_cast<size_t>(H * OC), 0.3f, 93);
        const auto dy = randn(static_cast<size_t>(N * OC), 1.0f, 94);
        Buffer<float> di = up(*gpu, inp), dw1 = up(*gpu, w1), db1 = up(*gpu, b1),
                      dw2 = up(*gpu, w2), ddy = up(*gpu, dy);
        Buffer<float> pre_mem = gpu->alloc<float>(N * H + sh.pre_offset);
        Buffer<float> h = gpu->alloc<float>(N * H);
        float* dpre_ptr = pre_mem.data() + sh.pre_offset;

        std::vector<float> pre(static_cast<size_t>(N * H)), act(pre.size());
        cpu->matmul_gelu_forward(act.data(), pre.data(), inp.data(), w1.data(), b1.data(), N, IC, H);
        gpu->matmul_gelu_forward(h.data(), dpre_ptr, di.data(), dw1.data(), db1.data(), N, IC, H);
        std::vector<float> got_pre(pre.size());
        gpu->copy_to_host(got_pre.data(), dpre_ptr, got_pre.size() * sizeof(float));
        const auto got_act = down(*gpu, h);
        expect_close(what + " pre-activation", got_pre, pre, mode.abs, mode.rel);
        expect_close(what + " gelu", got_act, act, tol.abs, tol.rel);
        report_error(what + " gelu", got_act, act);

        // Backward onto non-zero gradients, from the GPU's own forward (pre, h).
        auto gw1 = randn(static_cast<size_t>(IC * H), 1.0f, 95);
        auto gb1 = randn(static_cast<size_t>(H), 1.0f, 96);
        auto gw2 = randn(static_cast<size_t>(H * OC), 1.0f, 97);
        auto gb2 = randn(static_cast<size_t>(OC), 1.0f, 98);
        std::vector<float> dinp(static_cast<size_t>(N * IC)), dpre(pre.size());
        Buffer<float> ggw1 = up(*gpu, gw1), ggb1 = up(*gpu, gb1), ggw2 = up(*gpu, gw2),
                      ggb2 = up(*gpu, gb2), gdinp = gpu->alloc<float>(N * IC),
                      gdpre = gpu->alloc<float>(N * H);
        GeluMlpBackward c;
        c.dinp = dinp.data(), c.dw1 = gw1.data(), c.db1 = gb1.data(), c.dpre = dpre.data();
        c.dw2 = gw2.data(), c.db2 = gb2.data(), c.dy = dy.data(), c.inp = inp.data();
        c.w1 = w1.data(), c.pre = pre.data(), c.h = act.data(), c.w2 = w2.data();
        c.N = N, c.IC = IC, c.H = H, c.OC = OC;
        cpu->matmul_gelu_backward(c);
        GeluMlpBackward g = c;
        g.dinp = gdinp.data(), g.dw1 = ggw1.data(), g.db1 = ggb1.data(), g.dpre = gdpre.data();
        g.dw2 = ggw2.data(), g.db2 = ggb2.data(), g.dy = ddy.data(), g.inp = di.data();
        g.w1 = dw1.data(), g.pre = dpre_ptr, g.h = h.data(), g.w2 = dw2.data();
        gpu->matmul_gelu_backward(g);
        const auto got_dpre = down(*gpu, gdpre);
        expect_close(what + " dpre", got_dpre, dpre, tol.abs, tol.rel);
        report_error(what + " dpre", got_dpre, dpre);
        expect_close(what + " dinp", down(*gpu, gdinp), dinp, tol.abs, tol.rel);
        expect_close(what + " dw1", down(*gpu, ggw1), gw1, tol.abs, tol.rel);
        expect_close(what + " db1", down(*gpu, ggb1), gb1, tol.abs, tol.rel);
        expect_close(what + " dw2", down(*gpu, ggw2), gw2, tol.abs, tol.rel);
        expect_close(what + " db2", down(*gpu, ggb2), gb2, kEw, kEw);  // fp32 sums of dy
      }
      std::cout << mode.name << (fuse ? " fused: " : " unfused: ") << device_info(*gpu, 0).epilogues
                << "\n";
    }
  }
}

TEST_CASE("cuda: linear forward and backward (BERT ops) with row strides - fp32 TF32 bf16") {
  for (const Mode& mode : kModes) {
    CAPTURE(mode.name);
    auto gpu = gpu_or_skip(mode);
    auto cpu = make_cpu_backend(2);
    const int64_t N = 45, IC = 40, OC = 27, ldo = 31;
    const auto w = randn(static_cast<size_t>(OC * IC), 0.3f, 12);
    const auto bias = randn(static_cast<size_t>(OC), 0.3f, 13);
    const auto inp = randn(static_cast<size_t>(N * IC), 1.0f, 14);
    auto out = randn(static_cast<size_t>(N * ldo), 1.0f, 15);  // columns OC..ldo-1 kept
    Buffer<float> dw_ = up(*gpu, w), db_ = up(*gpu, bias), di = up(*gpu, inp), dout_ = up(*gpu, out);
    cpu->linear_forward(out.data(), ldo, inp.data(), w.data(), bias.data(), N, IC, OC);
    gpu->linear_forward(dout_.data(), ldo, di.data(), dw_.data(), db_.data(), N, IC, OC);
    expect_close("linear_forward", down(*gpu, dout_), out, mode.abs, mode.rel);

    const auto dout = randn(static_cast<size_t>(N * ldo), 1.0f, 16);
    for (bool acc : {false, true}) {
      auto dinp = randn(static_cast<size_t>(N * IC), 1.0f, 17);
      auto gw = randn(static_cast<size_t>(OC * IC), 1.0f, 18);
      auto gb = randn(static_cast<size_t>(OC), 1.0f, 19);
      Buffer<float> ddi = up(*gpu, dinp), dgw = up(*gpu, gw), dgb = up(*gpu, gb),
                    ddo = up(*gpu, dout);
      cpu->linear_backward(dinp.data(), acc, gw.data(), gb.data(), dout.data(), ldo, inp.data(),
                           w.data(), N, IC, OC);
      gpu->linear_backward(ddi.data(), acc, dgw.data(), dgb.data(), ddo.data(), ldo, di.data(),
                           dw_.data(), N, IC, OC);
      expect_close("linear_backward dinp", down(*gpu, ddi), dinp, mode.abs, mode.rel);
      expect_close("linear_backward dw", down(*gpu, dgw), gw, mode.abs, mode.rel);
      expect_close("linear_backward dbias", down(*gpu, dgb), gb, kEw, kEw);
    }
  }
}

TEST_CASE("cuda: encoder and embedding forward and backward - deterministic - unused rows untouched") {
  auto gpu = gpu_or_skip();
  auto cpu = make_cpu_backend(2);
  const int64_t B = 3, T = 17, C = 150, Vp = 64, V = 50, ntypes = 2;
  auto tokens = rand_ids(static_cast<size_t>(B * T), 12, 20);  // few ids: many repeats
  tokens[5] = static_cast<int32_t>(V - 1);
  const auto types = rand_ids(static_cast<size_t>(B * T), ntypes, 21);
  const auto wte = randn(static_cast<size_t>(Vp * C), 1.0f, 22);
  const auto wpe = randn(static_cast<size_t>(T * C), 1.0f, 23);
  const auto wtt = randn(static_cast<size_t>(ntypes * C), 1.0f, 24);
  const auto dout = randn(static_cast<size_t>(B * T * C), 1.0f, 25);
  Buffer<int32_t> dtok = up(*gpu, tokens), dtyp = up(*gpu, types);
  Buffer<float> dwte = up(*gpu, wte), dwpe = up(*gpu, wpe), dwtt = up(*gpu, wtt),
                ddout = up(*gpu, dout);
  std::vector<float> out(static_cast<size_t>(B * T * C));
  Buffer<float> dout_fw = gpu->alloc<float>(B * T * C);
  cpu->encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  gpu->encoder_forward(dout_fw.data(), dtok.data(), dwte.data(), dwpe.data(), B, T, C);
  CHECK(bitwise(down(*gpu, dout_fw), out));  // one fp32 addition each: exact
  cpu->embedding_forward(out.data(), tokens.data(), types.data(), wte.data(), wpe.data(),
                         wtt.data(), B, T, C);
  gpu->embedding_forward(dout_fw.data(), dtok.data(), dtyp.data(), dwte.data(), dwpe.data(),
                         dwtt.data(), B, T, C);
  CHECK(bitwise(down(*gpu, dout_fw), out));

  // Backward onto non-zero gradients: same order as the CPU (old value, then rows in order).
  for (bool with_types : {false, true}) {
    CAPTURE(with_types);
    auto gwte = randn(static_cast<size_t>(Vp * C), 1.0f, 26);
    for (int64_t i = V * C; i < Vp * C; ++i) gwte[i] = 0.0f;  // padded rows
    auto gwpe = randn(static_cast<size_t>(T * C), 1.0f, 27);
    auto gwtt = randn(static_cast<size_t>(ntypes * C), 1.0f, 28);
    Buffer<float> g1 = up(*gpu, gwte), g2 = up(*gpu, gwpe), g3 = up(*gpu, gwtt);
    if (with_types) {
      cpu->embedding_backward(gwte.data(), gwpe.data(), gwtt.data(), dout.data(), tokens.data(),
                              types.data(), B, T, C);
      gpu->embedding_backward(g1.data(), g2.data(), g3.data(), ddout.data(), dtok.data(),
                              dtyp.data(), B, T, C);
      CHECK(bitwise(down(*gpu, g3), gwtt));
    } else {
      cpu->encoder_backward(gwte.data(), gwpe.data(), dout.data(), tokens.data(), B, T, C);
      gpu->encoder_backward(g1.data(), g2.data(), ddout.data(), dtok.data(), B, T, C);
    }
    const auto got = down(*gpu, g1);
    CHECK(bitwise(got, gwte));
    CHECK(bitwise(down(*gpu, g2), gwpe));
    for (int64_t i = V * C; i < Vp * C; ++i) REQUIRE(got[i] == 0.0f);
  }
  // types null: every row is type 0.
  auto gwtt = randn(static_cast<size_t>(ntypes * C), 1.0f, 29);
  auto gwte = wte, gwpe = wpe;
  Buffer<float> g1 = up(*gpu, gwte), g2 = up(*gpu, gwpe), g3 = up(*gpu, gwtt);
  cpu->embedding_backward(gwte.data(), gwpe.data(), gwtt.data(), dout.data(), tokens.data(),
                          nullptr, B, T, C);
  gpu->embedding_backward(g1.data(), g2.data(), g3.data(), ddout.data(), dtok.data(), nullptr, B,
                          T, C);
  CHECK(bitwise(down(*gpu, g3), gwtt));
}

TEST_CASE("cuda: LayerNorm forward (both eps) and backward vs CPU") {
  auto gpu = gpu_or_skip();
  auto cpu = make_cpu_backend(2);
  for (int64_t C : {32, 100, 768}) {
    CAPTURE(C);
    const int64_t N = 300;  // more than one 256-row chunk of the column sums
    auto x = randn(static_cast<size_t>(N * C), 2.0f, 30);
    for (auto& v : x) v += 1.5f;
    const auto w = randn(static_cast<size_t>(C), 1.0f, 31);
    const auto b = randn(static_cast<size_t>(C), 1.0f, 32);
    Buffer<float> dx = up(*gpu, x), dw_ = up(*gpu, w), db_ = up(*gpu, b);
    for (float eps : {1e-5f, 1e-12f}) {
      std::vector<float> out(x.size()), mean(N), rstd(N);
      Buffer<float> o = gpu->alloc<float>(N * C), m = gpu->alloc<float>(N), r = gpu->alloc<float>(N);
      cpu->layernorm_forward_eps(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                                 N, C, eps);
      gpu->layernorm_forward_eps(o.data(), m.data(), r.data(), dx.data(), dw_.data(), db_.data(), N,
                                 C, eps);
      expect_close("layernorm out", down(*gpu, o), out, kEw, kEw);
      expect_close("layernorm mean", down(*gpu, m), mean, kEw, kEw);
      expect_close("layernorm rstd", down(*gpu, r), rstd, kEw, kEw);
    }
    std::vector<float> out(x.size()), mean(N), rstd(N);
    Buffer<float> o = gpu->alloc<float>(N * C), m = gpu->alloc<float>(N), r = gpu->alloc<float>(N);
    cpu->layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    gpu->layernorm_forward(o.data(), m.data(), r.data(), dx.data(), dw_.data(), db_.data(), N, C);
    const auto dout = randn(static_cast<size_t>(N * C), 1.0f, 33);
    auto dinp = randn(static_cast<size_t>(N * C), 1.0f, 34);  // accumulated onto
    auto gw = randn(static_cast<size_t>(C), 1.0f, 35);
    auto gb = randn(static_cast<size_t>(C), 1.0f, 36);
    Buffer<float> dd = up(*gpu, dout), ddi = up(*gpu, dinp), dgw = up(*gpu, gw), dgb = up(*gpu, gb);
    cpu->layernorm_backward(dinp.data(), gw.data(), gb.data(), dout.data(), x.data(), w.data(),
                            mean.data(), rstd.data(), N, C);
    gpu->layernorm_backward(ddi.data(), dgw.data(), dgb.data(), dd.data(), dx.data(), dw_.data(),
                            m.data(), r.data(), N, C);
    expect_close("layernorm dinp", down(*gpu, ddi), dinp, kEw, 1e-4f);
    expect_close("layernorm dw", down(*gpu, dgw), gw, kEw, 1e-4f);
    expect_close("layernorm db", down(*gpu, dgb), gb, kEw, 1e-4f);
  }
}

TEST_CASE("cuda: residual - GELU (tanh and erf) - tanh forward and backward vs CPU") {
  auto gpu = gpu_or_skip();
  auto cpu = make_cpu_backend(2);
  const int64_t n = 100003;
  const auto x = randn(static_cast<size_t>(n), 3.0f, 40);
  const auto d = randn(static_cast<size_t>(n), 1.0f, 41);
  Buffer<float> dx = up(*gpu, x), dd = up(*gpu, d), o = gpu->alloc<float>(n);
  std::vector<float> out(static_cast<size_t>(n));
  cpu->residual_forward(out.data(), x.data(), d.data(), n);
  gpu->residual_forward(o.data(), dx.data(), dd.data(), n);
  CHECK(bitwise(down(*gpu, o), out));

  struct Unary {
    const char* name;
    void (Backend::*fwd)(float*, const float*, int64_t);
    void (Backend::*bwd)(float*, const float*, const float*, int64_t);
    bool bwd_from_out;
  };
  const Unary ops[] = {{"gelu", &Backend::gelu_forward, &Backend::gelu_backward, false},
                       {"gelu_erf", &Backend::gelu_erf_forward, &Backend::gelu_erf_backward, false},
                       {"tanh", &Backend::tanh_forward, &Backend::tanh_backward, true}};
  for (const Unary& op : ops) {
    CAPTURE(op.name);
    ((*cpu).*op.fwd)(out.data(), x.data(), n);
    ((*gpu).*op.fwd)(o.data(), dx.data(), n);
    expect_close(std::string(op.name) + " forward", down(*gpu, o), out, kEw, kEw);
    // In place (dinp aliases dout), as the model calls it.
    std::vector<float> g = d;
    Buffer<float> dg = up(*gpu, d);
    ((*cpu).*op.bwd)(g.data(), op.bwd_from_out ? out.data() : x.data(), g.data(), n);
    ((*gpu).*op.bwd)(dg.data(), op.bwd_from_out ? o.data() : dx.data(), dg.data(), n);
    expect_close(std::string(op.name) + " backward", down(*gpu, dg), g, kEw, kEw);
  }
}

TEST_CASE("cuda: fused cross-entropy forward and backward - padded columns untouched") {
  auto gpu = gpu_or_skip();
  auto cpu = make_cpu_backend(2);
  for (int64_t V : {5, 1000, 50257}) {
    CAPTURE(V);
    const int64_t N = 9, ld = (V + 63) / 64 * 64 + 64;
    auto logits = randn(static_cast<size_t>(N * ld), 3.0f, 50);
    for (int64_t r = 0; r < N; ++r) {
      for (int64_t c = V; c < ld; ++c) logits[r * ld + c] = 777.0f;  // must stay exactly
    }
    auto targets = rand_ids(static_cast<size_t>(N), static_cast<int32_t>(V), 51);
    targets[0] = 0;
    targets[1] = static_cast<int32_t>(V - 1);
    Buffer<float> dl = up(*gpu, logits), loss = gpu->alloc<float>(N);
    Buffer<int32_t> dt = up(*gpu, targets);
    std::vector<float> losses(static_cast<size_t>(N));
    cpu->crossentropy_forward(losses.data(), logits.data(), targets.data(), N, V, ld);
    gpu->crossentropy_forward(loss.data(), dl.data(), dt.data(), N, V, ld);
    expect_close("crossentropy_forward", down(*gpu, loss), losses, kEw, kEw);
    CHECK(bitwise(down(*gpu, dl), logits));  // forward only: logits unchanged

    cpu->crossentropy_forward_backward(losses.data(), logits.data(), targets.data(), 0.25f, N, V, ld);
    gpu->crossentropy_forward_backward(loss.data(), dl.data(), dt.data(), 0.25f, N, V, ld);
    expect_close("crossentropy losses", down(*gpu, loss), losses, kEw, kEw);
    const auto g = down(*gpu, dl);
    expect_close("crossentropy dlogits", g, logits, kEw, 1e-4f);
    for (int64_t r = 0; r < N; ++r) {
      for (int64_t c = V; c < ld; ++c) REQUIRE(g[r * ld + c] == 777.0f);
    }
  }
}

TEST_CASE("cuda: gather and scatter rows - argmax - attention_decode vs CPU") {
  auto gpu = gpu_or_skip();
  auto cpu = make_cpu_backend(2);
  const int64_t R = 40, C = 96, M = 13;
  const auto src = randn(static_cast<size_t>(R * C), 1.0f, 60);
  std::vector<int32_t> idx(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m) idx[m] = static_cast<int32_t>((m * 7 + 3) % R);  // no repeats
  Buffer<float> ds = up(*gpu, src), dg = gpu->alloc<float>(M * C);
  Buffer<int32_t> di = up(*gpu, idx);
  std::vector<float> g(static_cast<size_t>(M * C));
  cpu->gather_rows(g.data(), src.data(), idx.data(), M, C);
  gpu->gather_rows(dg.data(), ds.data(), di.data(), M, C);
  CHECK(bitwise(down(*gpu, dg), g));
  auto dst = randn(static_cast<size_t>(R * C), 1.0f, 61);
  Buffer<float> dd = up(*gpu, dst);
  cpu->scatter_rows(dst.data(), g.data(), idx.data(), M, C);
  gpu->scatter_rows(dd.data(), dg.data(), di.data(), M, C);
  CHECK(bitwise(down(*gpu, dd), dst));

  const int64_t V = 5000, ld = 5120;
  auto logits = randn(static_cast<size_t>(R * ld), 1.0f, 62);
  logits[3 * ld + 10] = 50.0f;
  logits[3 * ld + 4000] = 50.0f;  // a tie: the first wins
  logits[4 * ld + V] = 99.0f;     // beyond V: ignored
  Buffer<float> dl = up(*gpu, logits);
  Buffer<int32_t> am = gpu->alloc<int32_t>(R);
  std::vector<int32_t> want(static_cast<size_t>(R));
  cpu->argmax_rows(want.data(), logits.data(), R, V, ld);
  gpu->argmax_rows(am.data(), dl.data(), R, V, ld);
  CHECK(down(*gpu, am) == want);
  CHECK(want[3] == 10);

  for (int64_t npos : {1, 7, 300}) {
    CAPTURE(npos);
    const int64_t Cq = 64, NH = 4, ldkv = 3 * Cq;
    const auto q = randn(static_cast<size_t>(Cq), 1.0f, 63);
    const auto kv = randn(static_cast<size_t>(npos * ldkv), 1.0f, 64);
    std::vector<float> out(static_cast<size_t>(Cq)), scratch(static_cast<size_t>(npos));
    Buffer<float> dq = up(*gpu, q), dkv = up(*gpu, kv), dout = gpu->alloc<float>(Cq),
                  dscr = gpu->alloc<float>(npos);
    cpu->attention_decode(out.data(), scratch.data(), q.data(), kv.data(), kv.data() + Cq, npos,
                          ldkv, Cq, NH);
    gpu->attention_decode(dout.data(), dscr.data(), dq.data(), dkv.data(), dkv.data() + Cq, npos,
                          ldkv, Cq, NH);
    expect_close("attention_decode", down(*gpu, dout), out, kEw, 1e-4f);
  }
}

namespace {

const ModelDims kDims{61, 64, 32, 2, 2, 64};  // V 61 padded to 64

std::vector<float> model_params(const ParamLayout& layout, uint64_t seed) {
  std::vector<float> p(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, seed, p);
  return p;
}

}  // namespace

TEST_CASE("cuda: a training step and a 10-step SGD trajectory equal the CPU's - fp32 TF32 bf16 - fused and unfused GELU") {
  const ParamLayout layout(kDims);
  const int64_t n = 4, micro = 3, T = kDims.T;
  const auto windows = rand_ids(static_cast<size_t>(n * (T + 1)), static_cast<int32_t>(kDims.V), 70);
  std::vector<std::pair<Mode, bool>> runs;  // every mode with the GELU epilogue on and off
  for (const Mode& m : kModes) {
    runs.emplace_back(m, true);
    runs.emplace_back(m, false);
  }
  for (const auto& [each, fuse] : runs) {
    // Tolerances assume the epilogue ran; where it did not, the tighter ones hold too.
    const Mode mode = fuse ? fused(each) : each;
    CAPTURE(mode.name);
    CAPTURE(fuse);
    auto gpu = gpu_or_skip(each, fuse);
    auto cpu = make_cpu_backend(2);
    TrainStep on_cpu(layout, *cpu, micro), on_gpu(layout, *gpu, micro);
    std::vector<float> pc = model_params(layout, 71), pg = pc;
    {
      for (int step = 0; step < 10; ++step) {
        CAPTURE(step);
        on_cpu.set_weights(pc);
        on_gpu.set_weights(pg);
        const LossSum lc = on_cpu.compute(windows, n);
        const LossSum lg = on_gpu.compute(windows, n);
        CHECK(lg.tokens == lc.tokens);
        // The loss sum over n·T tokens: relative, with the mode's product tolerance.
        CHECK(std::fabs(lg.loss_sum - lc.loss_sum) <= 4.0 * mode.rel * std::fabs(lc.loss_sum));
        const std::vector<float> gc(on_cpu.grads_host().begin(), on_cpu.grads_host().end());
        const std::vector<float> gg(on_gpu.grads_host().begin(), on_gpu.grads_host().end());
        if (step == 0) {
          expect_close(std::string("step gradient ") + mode.name, gg, gc, 4 * mode.abs,
                       4 * mode.rel);
        }
        // Each side follows its own gradient (plain SGD on the token-mean gradient).
        const float lr = 0.5f / static_cast<float>(lc.tokens);
        for (size_t i = 0; i < pc.size(); ++i) {
          pc[i] -= lr * gc[i];
          pg[i] -= lr * gg[i];
        }
      }
    }
    expect_close(std::string("weights after 10 steps ") + mode.name, pg, pc, 4 * mode.abs,
                 4 * mode.rel);
    report_error(std::string("weights after 10 steps ") + mode.name + (fuse ? " fused" : ""), pg,
                 pc);
    std::cout << mode.name << (fuse ? " fused: " : " unfused: ") << device_info(*gpu, 0).epilogues
              << "\n";
  }
}

namespace {

// Hands nothing on: records the ranges and copies each one when it comes.
struct CopyingSink final : GradientSink {
  std::vector<float> got;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  void gradient_ready(std::span<const float> g, int64_t b, int64_t e) override {
    if (got.empty()) got.assign(g.size(), std::nanf(""));
    std::copy(g.begin() + b, g.begin() + e, got.begin() + b);
    ranges.emplace_back(b, e);
  }
};
struct ReadyWeights final : WeightSource {
  std::vector<std::pair<int64_t, int64_t>> asked;
  void wait_weights(int64_t b, int64_t e) override { asked.emplace_back(b, e); }
};

}  // namespace

TEST_CASE("cuda: a step with ranged weight uploads and gradient downloads is bitwise the plain step") {
  auto gpu = gpu_or_skip();
  const ParamLayout layout(kDims);
  const int64_t n = 5, T = kDims.T;
  const auto windows = rand_ids(static_cast<size_t>(n * (T + 1)), static_cast<int32_t>(kDims.V), 86);
  const auto params = model_params(layout, 87);
  TrainStep plain(layout, *gpu, 2), ranged(layout, *gpu, 2);
  plain.set_weights(params);
  const LossSum lp = plain.compute(windows, n);
  const std::vector<float> gp(plain.grads_host().begin(), plain.grads_host().end());
  for (int rep = 0; rep < 2; ++rep) {
    std::copy(params.begin(), params.end(), ranged.weights_host().begin());
    ReadyWeights source;
    CopyingSink sink;
    StepTransfers t;
    t.weights = &source;
    t.gradients = &sink;
    const LossSum lr = ranged.compute(windows, n, {}, 0, t);
    CHECK(lr.loss_sum == lp.loss_sum);
    CHECK(bitwise(sink.got, gp));
    CHECK(bitwise(std::vector<float>(ranged.grads_host().begin(), ranged.grads_host().end()), gp));
    REQUIRE(sink.ranges.size() == static_cast<size_t>(kDims.L + 2));
    CHECK(sink.ranges.front().second == layout.total());
    CHECK(sink.ranges.back().first == 0);
    CHECK(source.asked.size() == sink.ranges.size());
  }
}

TEST_CASE("cuda: a step is bitwise repeatable on the GPU") {
  auto gpu = gpu_or_skip();
  // The reductions without attention first: products, column sums, embedding scatter.
  const int64_t N = 512, IC = 96, OC = 200;
  const auto inp = randn(static_cast<size_t>(N * IC), 1.0f, 80);
  const auto w = randn(static_cast<size_t>(IC * OC), 0.2f, 81);
  const auto dout = randn(static_cast<size_t>(N * OC), 1.0f, 82);
  const auto tokens = rand_ids(static_cast<size_t>(N), 50, 83);
  Buffer<float> di = up(*gpu, inp), dw = up(*gpu, w), dd = up(*gpu, dout);
  Buffer<int32_t> dt = up(*gpu, tokens);
  auto once = [&] {
    Buffer<float> gi = gpu->alloc<float>(N * IC), gw = gpu->alloc<float>(IC * OC),
                  gb = gpu->alloc<float>(OC), ge = gpu->alloc<float>(64 * OC),
                  gp = gpu->alloc<float>(16 * OC);
    for (Buffer<float>* b : {&gw, &gb, &ge, &gp}) gpu->fill(b->data(), 0.0f, b->size());
    gpu->matmul_backward(gi.data(), gw.data(), gb.data(), dd.data(), di.data(), dw.data(), N, IC, OC);
    gpu->encoder_backward(ge.data(), gp.data(), dd.data(), dt.data(), 32, 16, OC);
    std::vector<float> all = down(*gpu, gi);
    for (Buffer<float>* b : {&gw, &gb, &ge, &gp}) {
      const auto v = down(*gpu, *b);
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };
  CHECK(bitwise(once(), once()));

  const ParamLayout layout(kDims);
  const int64_t n = 4, T = kDims.T;
  const auto windows = rand_ids(static_cast<size_t>(n * (T + 1)), static_cast<int32_t>(kDims.V), 84);
  const auto params = model_params(layout, 85);
  {
    TrainStep a(layout, *gpu, 2);
    auto gpu2 = gpu_or_skip();
    TrainStep b(layout, *gpu2, 2);
    a.set_weights(params);
    b.set_weights(params);
    const LossSum la = a.compute(windows, n);
    const LossSum lb = b.compute(windows, n);
    CHECK(la.loss_sum == lb.loss_sum);
    const std::vector<float> ga(a.grads_host().begin(), a.grads_host().end());
    const std::vector<float> gb(b.grads_host().begin(), b.grads_host().end());
    CHECK(bitwise(ga, gb));
    a.set_weights(params);  // and again on the same backend
    a.compute(windows, n);
    CHECK(bitwise(std::vector<float>(a.grads_host().begin(), a.grads_host().end()), ga));
  }
}
