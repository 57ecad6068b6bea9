// TimingBackend: a Backend that forwards every call to another and adds up the wall and process
// CPU time of each compute op (`ptrain bench train --profile`). Valid for synchronous backends
// (cpu), where an op's wall time is its cost; transfers and allocations are not timed.
#pragma once

#include "worker/model/backend.hpp"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace ptrain {

// CPU time of the whole process (all threads), seconds: with other load on the machine, CPU time
// per step is a steadier measure of the work than wall time (it still counts spin-waiting).
inline double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

class TimingBackend final : public Backend {
 public:
  explicit TimingBackend(Backend& inner) : in_(inner) {}
  std::string name() const override { return in_.name(); }
  int threads() const override { return in_.threads(); }
  bool host_accessible() const override { return in_.host_accessible(); }
  void* allocate_bytes(size_t bytes) override { return in_.allocate_bytes(bytes); }
  void free_bytes(void* p) noexcept override { in_.free_bytes(p); }
  void* allocate_host_bytes(size_t bytes) override { return in_.allocate_host_bytes(bytes); }
  void free_host_bytes(void* p) noexcept override { in_.free_host_bytes(p); }
  void copy_to_device(void* d, const void* s, size_t n) override { in_.copy_to_device(d, s, n); }
  void copy_to_host(void* d, const void* s, size_t n) override { in_.copy_to_host(d, s, n); }
  void copy_to_device_async(void* d, const void* s, size_t n) override {
    in_.copy_to_device_async(d, s, n);
  }
  void copy_to_host_async(void* d, const void* s, size_t n) override {
    in_.copy_to_host_async(d, s, n);
  }
  void copy(float* d, const float* s, int64_t n) override { timed("copy", [&] { in_.copy(d, s, n); }); }
  void fill(float* d, float v, int64_t n) override { timed("fill", [&] { in_.fill(d, v, n); }); }
  void fill_columns(float* d, float v, int64_t r, int64_t b, int64_t e, int64_t ld) override {
    timed("fill_columns", [&] { in_.fill_columns(d, v, r, b, e, ld); });
  }
  void synchronize() override { in_.synchronize(); }
  void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* a,
            int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) override {
    timed(ta == Trans::kNo && tb == Trans::kYes ? "gemm lm_head fwd"
          : ta == Trans::kNo                    ? "gemm lm_head bwd dx"
                                                : "gemm lm_head bwd dwte",
          [&] { in_.gemm(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc); });
  }
  void matmul_forward(float* out, const float* inp, const float* w, const float* bias, int64_t N,
                      int64_t IC, int64_t OC) override {
    timed("matmul_forward", [&] { in_.matmul_forward(out, inp, w, bias, N, IC, OC); });
  }
  void matmul_residual_forward(float* out, const float* res, const float* inp, const float* w,
                               const float* bias, int64_t N, int64_t IC, int64_t OC) override {
    timed("matmul_residual_forward",
          [&] { in_.matmul_residual_forward(out, res, inp, w, bias, N, IC, OC); });
  }
  void matmul_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                       const float* w, int64_t N, int64_t IC, int64_t OC) override {
    timed("matmul_backward", [&] { in_.matmul_backward(dinp, dw, db, dout, inp, w, N, IC, OC); });
  }
  void encoder_forward(float* out, const int32_t* t, const float* wte, const float* wpe, int64_t B,
                       int64_t T, int64_t C) override {
    timed("encoder_forward", [&] { in_.encoder_forward(out, t, wte, wpe, B, T, C); });
  }
  void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* t, int64_t B,
                        int64_t T, int64_t C) override {
    timed("encoder_backward", [&] { in_.encoder_backward(dwte, dwpe, dout, t, B, T, C); });
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                         const float* b, int64_t N, int64_t C) override {
    timed("layernorm_forward", [&] { in_.layernorm_forward(out, mean, rstd, inp, w, b, N, C); });
  }
  void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                          const float* w, const float* mean, const float* rstd, int64_t N,
                          int64_t C) override {
    timed("layernorm_backward",
          [&] { in_.layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C); });
  }
  void residual_forward(float* out, const float* a, const float* b, int64_t n) override {
    timed("residual_forward", [&] { in_.residual_forward(out, a, b, n); });
  }
  void gelu_forward(float* out, const float* inp, int64_t n) override {
    timed("gelu_forward", [&] { in_.gelu_forward(out, inp, n); });
  }
  void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) override {
    timed("gelu_backward", [&] { in_.gelu_backward(dinp, inp, dout, n); });
  }
  void attention_forward(float* out, float* lse, const float* qkv,
                         const AttentionShape& s) override {
    timed("attention_forward", [&] { in_.attention_forward(out, lse, qkv, s); });
  }
  void attention_backward(float* dqkv, float* scratch, const float* dout, const float* out,
                          const float* qkv, const float* lse, const AttentionShape& s) override {
    timed("attention_backward",
          [&] { in_.attention_backward(dqkv, scratch, dout, out, qkv, lse, s); });
  }
  void attention_decode(float* out, float* scratch, const float* q, const float* kc,
                        const float* vc, int64_t npos, int64_t ld, int64_t C, int64_t NH) override {
    timed("attention_decode",
          [&] { in_.attention_decode(out, scratch, q, kc, vc, npos, ld, C, NH); });
  }
  void crossentropy_forward(float* losses, const float* logits, const int32_t* y, int64_t N,
                            int64_t V, int64_t ld) override {
    timed("crossentropy_forward", [&] { in_.crossentropy_forward(losses, logits, y, N, V, ld); });
  }
  void crossentropy_forward_backward(float* losses, float* logits, const int32_t* y, float dloss,
                                     int64_t N, int64_t V, int64_t ld) override {
    timed("crossentropy_forward_backward",
          [&] { in_.crossentropy_forward_backward(losses, logits, y, dloss, N, V, ld); });
  }

  struct Cost {
    double wall = 0, cpu = 0;  // seconds; cpu = process CPU time (all threads)
  };
  void reset() { totals_.clear(); }
  // (op, cost) sorted by wall time, descending.
  std::vector<std::pair<std::string, Cost>> totals() const {
    std::vector<std::pair<std::string, Cost>> v(totals_.begin(), totals_.end());
    std::sort(v.begin(), v.end(),
              [](const auto& a, const auto& b) { return a.second.wall > b.second.wall; });
    return v;
  }

 private:
  template <typename F>
  void timed(const char* op, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = process_cpu_seconds();
    f();
    Cost& c = totals_[op];
    c.cpu += process_cpu_seconds() - c0;
    c.wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  Backend& in_;
  std::map<std::string, Cost> totals_;
};

}  // namespace ptrain
