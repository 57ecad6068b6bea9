// `ptrain bench sgemm` (bench_sgemm.hpp).
#include "bench/bench_sgemm.hpp"

#include "common/error.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/model/backend.hpp"

#include <cblas.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <utility>

namespace ptrain {

int run_bench_sgemm(const BenchSgemmOptions& args) {
  if (args.size < 1 || args.reps < 1 || args.threads < 0) {
    throw UsageError("bench sgemm: --size and --reps must be >= 1, --threads >= 0");
  }
  // The backend sets OpenBLAS's thread count; the yardstick is then a plain cblas_sgemm call,
  // threaded by OpenBLAS itself. The backend's own gemm (one single-threaded block per thread) is
  // timed beside it.
  auto backend = make_cpu_backend(args.threads);
  const int64_t S = args.size;
  auto a = backend->alloc<float>(S * S), b = backend->alloc<float>(S * S),
       c = backend->alloc<float>(S * S);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t i = 0; i < S * S; ++i) a.data()[i] = u(rng), b.data()[i] = u(rng);
  backend->fill(c.data(), 0.0f, S * S);
  const auto n = static_cast<blasint>(S);
  auto openblas = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
  };
  auto ours = [&] {
    backend->gemm(Trans::kNo, Trans::kNo, S, S, S, 1.0f, a.data(), S, b.data(), S, 0.0f, c.data(),
                  S);
  };
  const double flops = 2.0 * static_cast<double>(S) * S * S;
  auto measure = [&](auto&& f) {
    f();  // warm up (thread pool, page faults)
    double best = 1e300, sum = 0;
    for (int r = 0; r < args.reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, s);
      sum += s;
    }
    return std::pair{flops / best / 1e9, flops / (sum / args.reps) / 1e9};
  };
  const auto [best, mean] = measure(openblas);
  const auto [best_be, mean_be] = measure(ours);
  if (args.json) {
    nlohmann::json j = {{"bench", "sgemm"},         {"size", S},
                        {"threads", backend->threads()}, {"blas", openblas_get_corename()},
                        {"reps", args.reps},        {"gflops_best", best},
                        {"gflops_mean", mean},      {"backend_gflops_best", best_be},
                        {"backend_gflops_mean", mean_be}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("bench sgemm %lld^3, %d threads, best/mean of %d runs:\n",
                static_cast<long long>(S), backend->threads(), args.reps);
    std::printf("  OpenBLAS (%s) cblas_sgemm  %.1f / %.1f GFLOP/s\n", openblas_get_corename(), best,
                mean);
    std::printf("  backend gemm (per-thread blocks) %.1f / %.1f GFLOP/s\n", best_be, mean_be);
  }
  return 0;
}

}  // namespace ptrain
