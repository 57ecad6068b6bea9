// `ptrain bench train CONFIG [--set k=v]... [--steps N] [--warmup N] [--device D] [--json]`: times
// full training steps of the config's model on random tokens, in this process, with no data files
// and no parameter-server traffic: per step, an upload of the weights, forward+backward over
// train.micro_batch-sized micro-batches summing to train.batch_size sequences (gradient of the
// mean loss folded on the backend), a download of the gradient, the global gradient norm and
// clipping factor, and an AdamW update of the flat vector (paramserver/optimizer/adamw). Prints ms/step, tokens/s and achieved GFLOP/s with
// FLOPs/token = 6·N + 12·L·T·C (N = the layout's parameter count, the tied head counted once).
//
// `ptrain bench sgemm [--size S] [--threads N] [--reps R] [--json]`: OpenBLAS sgemm S×S×S through
// the CPU backend, the yardstick docs/benchmarks.md compares the model's GFLOP/s with.
//
// The vocabulary: model.vocab_size when set (all rows real tokens), else data.tokenizer's size
// (`byte` = 257). docs/benchmarks.md records numbers and the exact commands.
#include "cli/commands.hpp"
#include "cli/cmd_bench_ps.hpp"
#include "common/data/tokenizer.hpp"
#include "common/error.hpp"
#include "common/tensor/gpt_init.hpp"
#include "common/tensor/param_layout.hpp"
#include "paramserver/optimizer/adamw.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"

#include <cblas.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <vector>

namespace ptrain::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// CPU time of the whole process (all threads), seconds: with other load on the machine, CPU time
// per step is a steadier measure of the work than wall time (it still counts spin-waiting).
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// A Backend that forwards to another and adds up the wall time of each op (`--profile`).
// Valid for synchronous backends (cpu), where an op's wall time is its cost.
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
  void attention_forward(float* out, float* att, const float* qkv, int64_t B, int64_t T, int64_t C,
                         int64_t NH) override {
    timed("attention_forward", [&] { in_.attention_forward(out, att, qkv, B, T, C, NH); });
  }
  void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                          const float* att, int64_t B, int64_t T, int64_t C, int64_t NH) override {
    timed("attention_backward",
          [&] { in_.attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH); });
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
    const auto t0 = Clock::now();
    const double c0 = process_cpu_seconds();
    f();
    Cost& c = totals_[op];
    c.cpu += process_cpu_seconds() - c0;
    c.wall += seconds_since(t0);
  }
  Backend& in_;
  std::map<std::string, Cost> totals_;
};

// L2 norm of `g` in fp64: fixed 64Ki-element chunks summed in parallel, then in chunk order.
double global_norm(std::span<const float> g) {
  constexpr int64_t kChunk = int64_t{1} << 16;
  const auto n = static_cast<int64_t>(g.size());
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(static_cast<size_t>(chunks));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double s = 0.0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
      s += static_cast<double>(g[i]) * g[i];
    }
    part[static_cast<size_t>(c)] = s;
  }
  double total = 0.0;
  for (double s : part) total += s;
  return std::sqrt(total);
}

struct TrainBenchArgs {
  std::string config;
  std::vector<std::string> sets;
  std::string device;  // "" = device.type
  int64_t steps = 5;
  int64_t warmup = 2;
  bool json = false;
  bool profile = false;
};

struct StepTimes {
  double total = 0, fwd_bwd = 0, optimizer = 0;
  double loss = 0;
};

int run_bench_train(const TrainBenchArgs& args) {
  if (args.steps < 1 || args.warmup < 0) {
    throw UsageError(fmt::format("bench train: --steps must be >= 1 and --warmup >= 0 (got {}, {})",
                                 args.steps, args.warmup));
  }
  if (!args.device.empty()) check_device(args.device, "--device");  // before any work
  const Config config = load_config_with_sets(args.config, args.sets);
  ModelDims dims;
  if (config.model.vocab_size > 0) {
    dims = model_dims(config.model, config.model.vocab_size);
  } else {
    dims = model_dims(config.model, load_tokenizer(config.data.tokenizer)->vocab_size());
  }
  const ParamLayout layout(dims);
  const int64_t B = config.train.batch_size, T = dims.T;
  const int64_t mb = std::min(config.train.micro_batch, B);
  auto backend = tool_backend(args.device, config);
  std::unique_ptr<TimingBackend> timing;
  if (args.profile) timing = std::make_unique<TimingBackend>(*backend);
  Backend& compute = timing ? static_cast<Backend&>(*timing) : *backend;
  Gpt gpt(layout, compute, mb);
  GptState state(layout, compute);  // weights and the gradient sum on the backend

  // The optimizer's weights, gradient and moments in the backend's host transfer memory
  // (huge-page backed on the CPU).
  auto params_buf = backend->alloc_host<float>(layout.total());
  auto grads_buf = backend->alloc_host<float>(layout.total());
  auto m_buf = backend->alloc_host<float>(layout.total());
  auto v_buf = backend->alloc_host<float>(layout.total());
  const std::span<float> params = params_buf.span(), grads = grads_buf.span(), m = m_buf.span(),
                         v = v_buf.span();
  std::fill(m.begin(), m.end(), 0.0f);
  std::fill(v.begin(), v.end(), 0.0f);
  init_gpt_params(layout, config.run.seed, params);
  std::vector<int32_t> windows(static_cast<size_t>(B * (T + 1)));
  std::mt19937_64 rng(config.run.seed);
  for (auto& x : windows) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(dims.V));

  AdamWOptions opt;
  opt.beta1 = config.optim.beta1;
  opt.beta2 = config.optim.beta2;
  opt.eps = config.optim.eps;
  opt.weight_decay = config.optim.weight_decay;
  const float inv_tokens = 1.0f / static_cast<float>(B * T);

  auto step = [&](int64_t t) {
    StepTimes st;
    const auto t0 = Clock::now();
    state.upload_params(params);
    state.zero_grads();
    LossSum loss;
    for (int64_t b0 = 0; b0 < B; b0 += mb) {
      const int64_t nb = std::min(mb, B - b0);
      const std::span<const int32_t> w(windows.data() + b0 * (T + 1),
                                       static_cast<size_t>(nb * (T + 1)));
      const LossSum l = gpt.forward_backward(state, w, nb, T, inv_tokens);
      loss.loss_sum += l.loss_sum;
      loss.tokens += l.tokens;
    }
    state.download_grads(grads);
    st.fwd_bwd = seconds_since(t0);
    const auto t1 = Clock::now();
    const double norm = global_norm(grads);
    const double clip = config.optim.grad_clip;
    const float scale =
        clip > 0 ? static_cast<float>(std::min(1.0, clip / (norm + 1e-6))) : 1.0f;
    const AdamWScalars s = adamw_scalars(opt, config.optim.lr, t + 1);
    for (const TensorSpec& ts : layout.tensors()) {
      const auto off = static_cast<size_t>(ts.offset), cnt = static_cast<size_t>(ts.count);
      adamw_update(s, ts.decay, scale, params.subspan(off, cnt), m.subspan(off, cnt),
                   v.subspan(off, cnt), grads.subspan(off, cnt));
    }
    st.optimizer = seconds_since(t1);
    st.total = seconds_since(t0);
    st.loss = loss.mean();
    return st;
  };

  spdlog::info("bench train: V {} (padded {}), T {}, L {}, NH {}, C {}; {} parameters; batch {} "
               "in micro-batches of {}; {}",
               dims.V, dims.Vp, T, dims.L, dims.NH, dims.C, layout.total(), B, mb, backend->name());
  for (int64_t i = 0; i < args.warmup; ++i) {
    const StepTimes st = step(i);
    spdlog::info("warmup step {}: {:.1f} ms, loss {:.4f}", i, st.total * 1e3, st.loss);
  }
  if (timing) timing->reset();
  const double cpu0 = process_cpu_seconds();
  std::vector<StepTimes> timed;
  for (int64_t i = 0; i < args.steps; ++i) {
    timed.push_back(step(args.warmup + i));
    spdlog::info("step {}: {:.1f} ms (forward+backward {:.1f}, optimizer {:.1f}), loss {:.4f}", i,
                 timed.back().total * 1e3, timed.back().fwd_bwd * 1e3,
                 timed.back().optimizer * 1e3, timed.back().loss);
  }
  const double cpu_s = process_cpu_seconds() - cpu0;
  double total = 0, fb = 0, op = 0, best = 1e300;
  for (const auto& st : timed) {
    total += st.total, fb += st.fwd_bwd, op += st.optimizer;
    best = std::min(best, st.total);
  }
  const double k = static_cast<double>(timed.size());
  const double ms = total / k * 1e3;
  const double tokens_per_step = static_cast<double>(B * T);
  const double tokens_per_s = tokens_per_step / (total / k);
  const double flops_per_token = 6.0 * static_cast<double>(layout.total()) +
                                 12.0 * static_cast<double>(dims.L * T * dims.C);
  const double gflops = flops_per_token * tokens_per_s / 1e9;
  if (timing) {
    spdlog::info("per-op time per step, {} timed steps: {:32s} {:>9s} {:>6s} {:>9s}", timed.size(),
                 "op", "wall ms", "wall%", "cpu ms");
    for (const auto& [op, cost] : timing->totals()) {
      spdlog::info("  {:32s} {:9.1f} {:5.1f}% {:9.1f}", op, cost.wall / k * 1e3,
                   100.0 * cost.wall / total, cost.cpu / k * 1e3);
    }
  }

  if (args.json) {
    nlohmann::json j = {
        {"bench", "train"},
        {"config", config.source},
        {"V", dims.V},
        {"Vp", dims.Vp},
        {"T", T},
        {"L", dims.L},
        {"NH", dims.NH},
        {"C", dims.C},
        {"batch_size", B},
        {"micro_batch", mb},
        {"threads", backend->threads()},
        {"backend", backend->name()},
        {"params", layout.total()},
        {"flops_per_token", flops_per_token},
        {"warmup_steps", args.warmup},
        {"steps", args.steps},
        {"ms_per_step", ms},
        {"ms_per_step_best", best * 1e3},
        {"cpu_ms_per_step", cpu_s / k * 1e3},
        {"fwd_bwd_ms", fb / k * 1e3},
        {"optimizer_ms", op / k * 1e3},
        {"tokens_per_s", tokens_per_s},
        {"gflops", gflops},
        {"loss", timed.back().loss},
    };
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("bench train %s\n", config.source.c_str());
    std::printf("  model       V %lld (Vp %lld), T %lld, L %lld, NH %lld, C %lld: %lld parameters\n",
                static_cast<long long>(dims.V), static_cast<long long>(dims.Vp),
                static_cast<long long>(T), static_cast<long long>(dims.L),
                static_cast<long long>(dims.NH), static_cast<long long>(dims.C),
                static_cast<long long>(layout.total()));
    std::printf("  batch       %lld sequences (micro-batch %lld), %s\n", static_cast<long long>(B),
                static_cast<long long>(mb), backend->name().c_str());
    std::printf("  ms/step     %.1f (best %.1f; forward+backward %.1f, optimizer %.1f) over %lld "
                "steps after %lld warmup\n",
                ms, best * 1e3, fb / k * 1e3, op / k * 1e3, static_cast<long long>(args.steps),
                static_cast<long long>(args.warmup));
    std::printf("  cpu time    %.1f ms/step (all threads)\n", cpu_s / k * 1e3);
    std::printf("  tokens/s    %.0f\n", tokens_per_s);
    std::printf("  GFLOP/s     %.1f (%.1f MFLOP/token = 6N + 12LTC)\n", gflops,
                flops_per_token / 1e6);
    std::printf("  threads     %d\n", backend->threads());
  }
  return 0;
}

struct SgemmBenchArgs {
  int64_t size = 2048;
  int threads = 0;
  int reps = 5;
  bool json = false;
};

int run_bench_sgemm(const SgemmBenchArgs& args) {
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
      const auto t0 = Clock::now();
      f();
      const double s = seconds_since(t0);
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

}  // namespace

void add_bench_command(CLI::App& app, Action& action) {
  auto* bench = app.add_subcommand("bench", "Benchmarks: a training step of a config's model, sgemm");
  bench->require_subcommand(1);

  auto targs = std::make_shared<TrainBenchArgs>();
  auto* train = bench->add_subcommand(
      "train", "Time training steps (forward+backward over micro-batches + AdamW) of CONFIG's model "
               "on random tokens; reads no data files");
  train->add_option("CONFIG", targs->config, "YAML config file")->required();
  add_set_option(train, targs->sets);
  train->add_option("--steps", targs->steps, "Timed steps (default 5)");
  train->add_option("--warmup", targs->warmup, "Untimed steps first (default 2)");
  train->add_flag("--json", targs->json, "Print one JSON object on stdout");
  train->add_flag("--profile", targs->profile, "Log the time of each backend op (stderr)");
  add_device_option(train, targs->device);
  auto compare = add_compare_launch_flag(train);  // cmd_bench_ps.cpp
  train->callback([&action, targs, compare] {
    action = [targs, compare] {
      if (*compare && !targs->device.empty()) {
        throw UsageError("bench train: --device sets the device of bench train's own step; the "
                         "jobs of --compare-launch take device.type (use --set device.type=...)");
      }
      return *compare ? run_compare_launch(targs->config, targs->sets, targs->steps, targs->warmup,
                                           targs->json)
                      : run_bench_train(*targs);
    };
  });

  auto sargs = std::make_shared<SgemmBenchArgs>();
  auto* sgemm = bench->add_subcommand("sgemm", "OpenBLAS sgemm GFLOP/s at SIZE^3 (the yardstick)");
  sgemm->add_option("--size", sargs->size, "Matrix size (default 2048)");
  sgemm->add_option("--threads", sargs->threads, "Threads; 0 = all cores (default)");
  sgemm->add_option("--reps", sargs->reps, "Timed repetitions (default 5)");
  sgemm->add_flag("--json", sargs->json, "Print one JSON object on stdout");
  sgemm->callback([&action, sargs] { action = [sargs] { return run_bench_sgemm(*sargs); }; });

  add_bench_ps_commands(bench, action);  // `bench ps` and its hidden helper (cmd_bench_ps.cpp)
}

}  // namespace ptrain::cli
