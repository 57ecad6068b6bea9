// `ptrain bench attention` (bench_attention.hpp).
#include "bench/bench_attention.hpp"

#include "common/error.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/model/backend.hpp"

#include <cblas.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace ptrain {
namespace {

constexpr int64_t kRowBlock = 32;  // the materialised version's causal row blocks

void sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, a, static_cast<blasint>(lda), b,
              static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

// The materialised attention the backend used before: per (batch, head) the probabilities
// att (T,T) are computed with sgemm and kept for backward; scratch (T,T) holds their gradient.
// Causal rows only touch their lower part, in blocks of kRowBlock query rows.
struct Materialised {
  int64_t B, T, C, NH;
  bool causal;
  std::vector<float> att, scratch;

  Materialised(int64_t b, int64_t t, int64_t c, int64_t nh, bool causal_)
      : B(b), T(t), C(c), NH(nh), causal(causal_),
        att(static_cast<size_t>(b * nh * t * t)), scratch(att.size()) {}

  int64_t kept_bytes() const { return static_cast<int64_t>(att.size() * sizeof(float)); }

  void forward(float* out, const float* qkv) {
    const int64_t hd = C / NH, C3 = 3 * C;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < NH; ++h) {
        const float* q = qkv + b * T * C3 + h * hd;
        float* A = att.data() + (b * NH + h) * T * T;
        for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
          const int64_t r1 = std::min(T, r0 + kRowBlock);
          const int64_t w = causal ? r1 : T;
          sgemm(CblasNoTrans, CblasTrans, r1 - r0, w, hd, scale, q + r0 * C3, C3, q + C, C3, 0.0f,
                A + r0 * T, T);
          for (int64_t t = r0; t < r1; ++t) {
            float* row = A + t * T;
            const int64_t n = causal ? t + 1 : T;
            float mx = row[0], sum = 0.0f;
            for (int64_t s = 1; s < n; ++s) mx = std::max(mx, row[s]);
            for (int64_t s = 0; s < n; ++s) sum += (row[s] = std::exp(row[s] - mx));
            for (int64_t s = 0; s < n; ++s) row[s] /= sum;
            for (int64_t s = n; s < w; ++s) row[s] = 0.0f;
          }
          sgemm(CblasNoTrans, CblasNoTrans, r1 - r0, hd, w, 1.0f, A + r0 * T, T, q + 2 * C, C3,
                0.0f, out + (b * T + r0) * C + h * hd, C);
        }
      }
    }
  }

  void backward(float* dqkv, const float* dout, const float* qkv) {
    const int64_t hd = C / NH, C3 = 3 * C;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < NH; ++h) {
        const float* q = qkv + b * T * C3 + h * hd;
        const float* k = q + C;
        const float* v = q + 2 * C;
        float* dq = dqkv + b * T * C3 + h * hd;
        const float* A = att.data() + (b * NH + h) * T * T;
        float* dA = scratch.data() + (b * NH + h) * T * T;
        const float* dO = dout + b * T * C + h * hd;
        for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
          const int64_t r1 = std::min(T, r0 + kRowBlock);
          const int64_t w = causal ? r1 : T;
          sgemm(CblasNoTrans, CblasTrans, r1 - r0, w, hd, 1.0f, dO + r0 * C, C, v, C3, 0.0f,
                dA + r0 * T, T);
          for (int64_t t = r0; t < r1; ++t) {
            const float* arow = A + t * T;
            float* drow = dA + t * T;
            float dot = 0.0f;
            for (int64_t s = 0; s < w; ++s) dot += arow[s] * drow[s];
            for (int64_t s = 0; s < w; ++s) drow[s] = arow[s] * (drow[s] - dot) * scale;
          }
          sgemm(CblasNoTrans, CblasNoTrans, r1 - r0, hd, w, 1.0f, dA + r0 * T, T, k, C3, 0.0f,
                dq + r0 * C3, C3);
        }
        // Key/value rows c0.. receive from query rows c0..T-1 when causal, from all otherwise.
        for (int64_t c0 = 0; c0 < T; c0 += kRowBlock) {
          const int64_t c1 = std::min(T, c0 + kRowBlock);
          const int64_t q0 = causal ? c0 : 0;
          sgemm(CblasTrans, CblasNoTrans, c1 - c0, hd, T - q0, 1.0f, dA + q0 * T + c0, T,
                q + q0 * C3, C3, 0.0f, dq + C + c0 * C3, C3);
          sgemm(CblasTrans, CblasNoTrans, c1 - c0, hd, T - q0, 1.0f, A + q0 * T + c0, T,
                dO + q0 * C, C, 0.0f, dq + 2 * C + c0 * C3, C3);
        }
      }
    }
  }
};

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double{a[i]} - double{b[i]}));
  return m;
}

template <typename F>
std::pair<double, double> time_reps(int reps, F&& f) {  // (best, mean) seconds after a warm-up
  f();
  double best = 1e300, sum = 0.0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
    sum += s;
  }
  return {best, sum / reps};
}

}  // namespace

int run_bench_attention(const BenchAttentionOptions& o) {
  if (o.batch < 1 || o.heads < 1 || o.channels < 1 || o.channels % o.heads != 0 || o.reps < 1 ||
      o.threads < 0 || o.seq_lens.empty()) {
    throw UsageError("bench attention: --batch, --heads, --channels, --reps must be >= 1, "
                     "--channels a multiple of --heads, --threads >= 0, and --seq-len given");
  }
  for (int64_t T : o.seq_lens) {
    if (T < 1) throw UsageError(fmt::format("bench attention: --seq-len {} is below 1", T));
  }
  auto be = make_backend(o.device, o.threads, "--device");
  const bool host = be->host_accessible();
  if (host) omp_set_num_threads(be->threads());
  const int64_t B = o.batch, NH = o.heads, C = o.channels;
  nlohmann::json rows = nlohmann::json::array();
  if (!o.json) {
    std::printf("bench attention on %s: B %lld, NH %lld, C %lld (head size %lld), %s, best/mean "
                "of %d runs of forward+backward\n",
                be->name().c_str(), static_cast<long long>(B), static_cast<long long>(NH),
                static_cast<long long>(C), static_cast<long long>(C / NH),
                o.bidirectional ? "bidirectional" : "causal", o.reps);
  }
  for (int64_t T : o.seq_lens) {
    const AttentionShape sh{B, T, C, NH, !o.bidirectional, nullptr};
    std::mt19937 rng(static_cast<uint32_t>(T));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> qkv(static_cast<size_t>(B * T * 3 * C)), dout(static_cast<size_t>(B * T * C));
    for (float& x : qkv) x = nd(rng);
    for (float& x : dout) x = nd(rng);
    auto d_qkv = be->alloc<float>(B * T * 3 * C), d_dout = be->alloc<float>(B * T * C),
         d_out = be->alloc<float>(B * T * C), d_lse = be->alloc<float>(B * NH * T),
         d_scr = be->alloc<float>(B * NH * T), d_dqkv = be->alloc<float>(B * T * 3 * C);
    be->copy_to_device(d_qkv.data(), qkv.data(), qkv.size() * sizeof(float));
    be->copy_to_device(d_dout.data(), dout.data(), dout.size() * sizeof(float));
    const auto [fbest, fmean] = time_reps(o.reps, [&] {
      be->attention_forward(d_out.data(), d_lse.data(), d_qkv.data(), sh);
      be->attention_backward(d_dqkv.data(), d_scr.data(), d_dout.data(), d_out.data(),
                             d_qkv.data(), d_lse.data(), sh);
      be->synchronize();
    });
    const double hd = static_cast<double>(C / NH);
    // Forward 2 products, backward 5 (the flash backward recomputes the scores); count the
    // materialised version's 4 backward products for both so the rates compare the same work.
    const double flops = 2.0 * B * NH * T * static_cast<double>(T) * hd * 6.0 *
                         (o.bidirectional ? 1.0 : 0.5);
    nlohmann::json r = {{"T", T},
                        {"flash_ms_best", fbest * 1e3},
                        {"flash_ms_mean", fmean * 1e3},
                        {"flash_kept_bytes", B * NH * T * 4},
                        {"flash_gflops", flops / fbest / 1e9}};
    if (host) {
      std::vector<float> fo(dout.size()), fd(qkv.size());
      be->copy_to_host(fo.data(), d_out.data(), fo.size() * sizeof(float));
      be->copy_to_host(fd.data(), d_dqkv.data(), fd.size() * sizeof(float));
      Materialised m(B, T, C, NH, !o.bidirectional);
      std::vector<float> mo(dout.size()), md(qkv.size());
      const auto [mbest, mmean] = time_reps(o.reps, [&] {
        m.forward(mo.data(), qkv.data());
        m.backward(md.data(), dout.data(), qkv.data());
      });
      r["materialised_ms_best"] = mbest * 1e3;
      r["materialised_ms_mean"] = mmean * 1e3;
      r["materialised_kept_bytes"] = m.kept_bytes();
      r["materialised_scratch_bytes"] = m.kept_bytes();
      r["speedup_best"] = mbest / fbest;
      r["max_abs_diff_out"] = max_abs_diff(fo, mo);
      r["max_abs_diff_dqkv"] = max_abs_diff(fd, md);
    }
    if (!o.json) {
      std::printf("  T %5lld  flash %9.1f / %9.1f ms (%6.1f GFLOP/s), keeps %8.2f MiB", 
                  static_cast<long long>(T), fbest * 1e3, fmean * 1e3, flops / fbest / 1e9,
                  static_cast<double>(B * NH * T * 4) / (1 << 20));
      if (host) {
        std::printf("  | materialised %9.1f / %9.1f ms, keeps %8.2f MiB (+ as much scratch)  "
                    "| speedup %.2fx, max |diff| out %.1e dqkv %.1e\n",
                    r["materialised_ms_best"].get<double>(), r["materialised_ms_mean"].get<double>(),
                    static_cast<double>(r["materialised_kept_bytes"].get<int64_t>()) / (1 << 20),
                    r["speedup_best"].get<double>(), r["max_abs_diff_out"].get<double>(),
                    r["max_abs_diff_dqkv"].get<double>());
      } else {
        std::printf("  | materialised: host only, not run on %s\n", be->name().c_str());
      }
    }
    rows.push_back(r);
  }
  if (o.json) {
    nlohmann::json j = {{"bench", "attention"}, {"backend", be->name()},  {"B", B},
                        {"NH", NH},             {"C", C},                 {"reps", o.reps},
                        {"causal", !o.bidirectional}, {"results", rows}};
    std::printf("%s\n", j.dump().c_str());
  }
  return 0;
}

}  // namespace ptrain
