// The non-host-accessible path, on FakeDeviceBackend (fake_device_backend.hpp): first that the
// fake catches what it claims to (host pointers, overruns, async copies from pageable memory,
// reads before synchronize(), host access to backend memory); then that the whole model, the
// worker's TrainStep and a whole threads job give bitwise the CPU backend's results on it, with
// one upload of the weights and one download of the gradient per step.
#include "common/error.hpp"
#include "ptrain/build_config.hpp"
#include "common/io/checkpoint_format.hpp"
#include "common/tensor/gpt_init.hpp"
#include "support/job_test_util.hpp"
#include "launch/threads_job.hpp"
#include "worker/backend/backend_factory.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/fake_device_backend.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"
#include "worker/model/gpt_state.hpp"
#include "worker/train_step.hpp"

#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>

using namespace ptrain;
using namespace ptrain::testing;

namespace {

// The message of what `f` throws ("" when it does not throw).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// GPT-2 initialisation with the biases and LayerNorm parameters moved off their exact values, so
// every gradient path carries information.
std::vector<float> test_params(const ParamLayout& layout, uint64_t seed) {
  std::vector<float> p(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, seed, p);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (const auto& t : layout.tensors()) {
    if (t.shape.size() >= 2) {
      for (int64_t i = 0; i < t.count; ++i) p[t.offset + i] *= 3.0f;
    } else {
      for (int64_t i = 0; i < t.count; ++i) p[t.offset + i] += 0.05f * n01(rng);
    }
  }
  return p;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(V));
  return v;
}

// V 61 padded to 64: padded rows and columns are on the path too.
const ModelDims kDims{61, 64, 20, 2, 2, 16};

}  // namespace

TEST_CASE("fake device: refuses host pointers and overruns - naming the op and argument") {
  FakeDeviceBackend be(1);
  CHECK(!be.host_accessible());
  Buffer<float> buf = be.alloc<float>(16);
  Buffer<float> other = be.alloc<float>(16);
  std::vector<float> host(16, 1.0f);

  std::string e = error_of([&] { be.fill(host.data(), 0.0f, 16); });
  CHECK(contains(e, "FakeDeviceBackend::fill: argument dst"));
  CHECK(contains(e, "no allocation"));
  e = error_of([&] { be.fill(buf.data() + 8, 0.0f, 16); });
  CHECK(contains(e, "FakeDeviceBackend::fill: argument dst"));
  CHECK(contains(e, "runs 32 bytes past the end of a 64-byte allocation"));
  e = error_of([&] { be.residual_forward(buf.data(), buf.data(), host.data(), 16); });
  CHECK(contains(e, "FakeDeviceBackend::residual_forward: argument b"));
  e = error_of([&] {
    be.gemm(Trans::kNo, Trans::kNo, 4, 4, 4, 1.0f, buf.data(), 4, other.data(), 4, 0.0f,
            host.data(), 4);
  });
  CHECK(contains(e, "FakeDeviceBackend::gemm: argument c"));
  // A transposed operand's extent follows its stored shape: (K, M) with lda 8 needs 3·8+4 floats.
  e = error_of([&] {
    be.gemm(Trans::kYes, Trans::kNo, 4, 4, 4, 1.0f, buf.data(), 8, other.data(), 4, 0.0f,
            other.data(), 4);
  });
  CHECK(contains(e, "FakeDeviceBackend::gemm: argument a"));
  e = error_of([&] {
    be.encoder_forward(buf.data(), reinterpret_cast<const int32_t*>(other.data()), host.data(),
                       buf.data(), 1, 2, 4);
  });
  CHECK(contains(e, "FakeDeviceBackend::encoder_forward: argument"));
  // The host side of a synchronous copy must not be backend memory.
  e = error_of([&] { be.copy_to_host(other.data(), buf.data(), 64); });
  CHECK(contains(e, "FakeDeviceBackend::copy_to_host: argument dst_host"));
  // The host side of an async copy must be this backend's pinned memory.
  e = error_of([&] { be.copy_to_device_async(buf.data(), host.data(), 64); });
  CHECK(contains(e, "FakeDeviceBackend::copy_to_device_async: argument src_host"));
  CHECK(contains(e, "pinned host memory"));
  HostBuffer<float> pinned = be.alloc_host<float>(16);
  e = error_of([&] { be.copy_to_host_async(pinned.data(), pinned.data(), 64); });
  CHECK(contains(e, "FakeDeviceBackend::copy_to_host_async: argument src"));
  CHECK(be.queued_copies() == 0);
  // What is allowed passes.
  be.fill(buf.data(), 2.0f, 16);
  be.copy_to_device(other.data(), host.data(), 64);
  be.residual_forward(buf.data(), buf.data(), other.data(), 16);
  std::vector<float> back(16);
  be.copy_to_host(back.data(), buf.data(), 64);
  CHECK(back == std::vector<float>(16, 3.0f));
}

TEST_CASE("fake device: async copies complete at synchronize() - in issue order") {
  FakeDeviceBackend be(1);
  Buffer<float> buf = be.alloc<float>(8);
  HostBuffer<float> up = be.alloc_host<float>(8), down = be.alloc_host<float>(8);
  std::fill(up.data(), up.data() + 8, 5.0f);
  std::fill(down.data(), down.data() + 8, -1.0f);
  be.copy_to_device_async(buf.data(), up.data(), 32);
  be.copy_to_host_async(down.data(), buf.data(), 32);
  CHECK(be.queued_copies() == 2);
  CHECK(down.data()[0] == -1.0f);  // not there yet: reading before synchronize() is a bug
  be.synchronize();
  CHECK(be.queued_copies() == 0);
  CHECK(down.span()[7] == 5.0f);
  // An op runs after the copies issued before it.
  std::fill(up.data(), up.data() + 8, 1.0f);
  be.copy_to_device_async(buf.data(), up.data(), 32);
  be.residual_forward(buf.data(), buf.data(), buf.data(), 8);
  be.copy_to_host_async(down.data(), buf.data(), 32);
  be.synchronize();
  CHECK(down.span()[0] == 2.0f);
  CHECK(be.counters().uploads == 2);
  CHECK(be.counters().downloads == 2);
}

TEST_CASE("fake device: backend memory is not readable from the host between calls") {
  FakeDeviceBackend be(1);
  Buffer<float> buf = be.alloc<float>(8);
  be.fill(buf.data(), 1.0f, 8);
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGSEGV, SIG_DFL);     // die of it, without the test framework's report
    volatile float x = buf.data()[0];  // must fault
    (void)x;
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);
}

TEST_CASE("fake device: the whole model is bitwise equal to the CPU backend") {
  const ParamLayout layout(kDims);
  const int64_t T = kDims.T;
  const std::vector<float> params = test_params(layout, 21);
  const std::vector<int32_t> windows = random_tokens(6 * (T + 1), kDims.V, 22);
  const std::span<const int32_t> w(windows);
  const auto win = [&](int64_t first, int64_t n) {
    return w.subspan(static_cast<size_t>(first * (T + 1)), static_cast<size_t>(n * (T + 1)));
  };

  struct Results {
    std::vector<float> logits, grads, decoded;
    std::vector<double> losses;
  };
  auto run = [&](Backend& be) {
    Results r;
    Gpt gpt(layout, be, 3);
    GptState state(layout, be);
    state.upload_params(params);
    // forward_logits on 2 sequences.
    std::vector<int32_t> inputs(static_cast<size_t>(2 * T));
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t t = 0; t < T; ++t) inputs[b * T + t] = windows[b * (T + 1) + t];
    }
    r.logits.resize(static_cast<size_t>(2 * T * kDims.Vp));
    gpt.forward_logits(state, inputs, 2, T, r.logits);
    // forward_loss, including a shorter T.
    r.losses.push_back(gpt.forward_loss(state, win(0, 3), 3, T).loss_sum);
    std::vector<int32_t> short_w = random_tokens(2 * 8, kDims.V, 23);
    r.losses.push_back(gpt.forward_loss(state, short_w, 2, 7).loss_sum);
    // forward_backward: three micro-batches (3, 2, 1 windows) folded into one sum.
    state.zero_grads();
    r.losses.push_back(gpt.forward_backward(state, win(0, 3), 3, T, 1.0f).loss_sum);
    r.losses.push_back(gpt.forward_backward(state, win(3, 2), 2, T, 1.0f).loss_sum);
    r.losses.push_back(gpt.forward_backward(state, win(5, 1), 1, T, 0.5f).loss_sum);
    r.grads.resize(static_cast<size_t>(layout.total()));
    state.download_grads(r.grads);
    // Decoding every position, twice (reset).
    GptDecoder dec(layout, be);
    for (int pass = 0; pass < 2; ++pass) {
      dec.reset();
      for (int64_t t = 0; t < T; ++t) {
        const std::span<const float> lg = dec.step(state, windows[static_cast<size_t>(t)]);
        r.decoded.insert(r.decoded.end(), lg.begin(), lg.end());
      }
    }
    return r;
  };
  auto cpu = make_cpu_backend(2);
  FakeDeviceBackend fake(2);
  const Results a = run(*cpu), b = run(fake);
  CHECK(bitwise_equal(a.logits, b.logits));
  CHECK(bitwise_equal(a.losses, b.losses));
  CHECK(bitwise_equal(a.grads, b.grads));
  CHECK(bitwise_equal(a.decoded, b.decoded));
  CHECK(fake.queued_copies() == 0);
  // Not vacuous: there is a gradient, and padded vocabulary rows have exactly none.
  double sq = 0;
  for (float g : b.grads) sq += double(g) * g;
  CHECK(sq > 0);
  for (int64_t i = layout.wte() + kDims.V * kDims.C; i < layout.wte() + kDims.Vp * kDims.C; ++i) {
    REQUIRE(b.grads[static_cast<size_t>(i)] == 0.0f);
  }
  // A state on another backend is refused.
  Gpt gpt(layout, fake, 1);
  GptState elsewhere(layout, *cpu);
  CHECK(contains(error_of([&] { gpt.forward_loss(elsewhere, win(0, 1), 1, T); }),
                 "belongs to another backend"));
}

TEST_CASE("fake device: TrainStep - one upload and one download per step - bitwise equal to CPU") {
  const ParamLayout layout(kDims);
  const int64_t T = kDims.T, n = 7, micro = 3;  // micro-batches of 3, 3, 1 windows
  const auto bytes = static_cast<size_t>(layout.total()) * sizeof(float);
  const std::vector<int32_t> windows = random_tokens(n * (T + 1), kDims.V, 31);

  // The fold by hand on the CPU: each micro-batch's gradient from zero, then left-folded in fp32.
  auto cpu_ref = make_cpu_backend(2);
  auto by_hand = [&](const std::vector<float>& params, LossSum* loss) {
    Gpt gpt(layout, *cpu_ref, micro);
    GptState state(layout, *cpu_ref);
    state.upload_params(params);
    std::vector<float> sum, mb(static_cast<size_t>(layout.total()));
    for (int64_t b = 0; b < n; b += micro) {
      const int64_t e = std::min(n, b + micro);
      state.zero_grads();
      const LossSum l = gpt.forward_backward(
          state,
          std::span<const int32_t>(windows).subspan(static_cast<size_t>(b * (T + 1)),
                                                    static_cast<size_t>((e - b) * (T + 1))),
          e - b, T, 1.0f);
      loss->loss_sum += l.loss_sum;
      loss->tokens += l.tokens;
      state.download_grads(mb);
      if (sum.empty()) {
        sum = mb;
      } else {
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += mb[i];
      }
    }
    return sum;
  };

  auto cpu = make_cpu_backend(2);
  FakeDeviceBackend fake(2);
  TrainStep on_cpu(layout, *cpu, micro);
  TrainStep on_fake(layout, fake, micro);
  for (uint64_t seed : {41, 42}) {  // two steps with different weights
    CAPTURE(seed);
    const std::vector<float> params = test_params(layout, seed);
    on_cpu.set_weights(params);
    std::copy(params.begin(), params.end(), on_fake.weights_host().begin());
    fake.reset_counters();
    on_fake.upload_weights();
    const LossSum lc = on_cpu.compute(windows, n);
    const LossSum lf = on_fake.compute(windows, n);
    const std::vector<float> gc(on_cpu.grads_host().begin(), on_cpu.grads_host().end());
    const std::vector<float> gf(on_fake.grads_host().begin(), on_fake.grads_host().end());
    CHECK(lc.loss_sum == lf.loss_sum);
    CHECK(lf.tokens == n * T);
    CHECK(bitwise_equal(gc, gf));
    LossSum lh;
    const std::vector<float> gh = by_hand(params, &lh);
    CHECK(bitwise_equal(gh, gf));
    CHECK(lh.loss_sum == lf.loss_sum);
    CHECK(on_fake.state().micro_batches() == 3);

    // Exactly one whole-vector transfer each way, both asynchronous through pinned memory; the
    // rest are token ids (inputs and targets in one copy) and losses.
    int64_t up = 0, down = 0;
    for (const auto& t : fake.counters().log) {
      if (t.bytes == bytes) {
        (t.upload ? up : down) += 1;
        CHECK(t.async);
      } else {
        CHECK(t.bytes <= static_cast<size_t>(2 * micro * T) * sizeof(int32_t));
      }
    }
    CHECK(up == 1);
    CHECK(down == 1);
    CHECK(fake.queued_copies() == 0);
  }
}

TEST_CASE("fake device: a threads job on the fake device equals the CPU job bitwise") {
  TempDir dir("fake-device-job");
  Config cpu = small_config(dir);  // 5 steps, B = 8
  cpu.cluster.workers = 2;
  cpu.cluster.servers = 2;
  cpu.train.micro_batch = 3;  // each worker's 4 windows: micro-batches of 3 and 1, folded
  Config fake = cpu;
  fake.run.dir = dir / "run-fake";
  ThreadsJobOptions with_fake;
  int made = 0;
  std::mutex mu;
  with_fake.make_backend = [&](int threads) -> std::unique_ptr<Backend> {
    std::lock_guard lock(mu);
    ++made;
    return std::make_unique<FakeDeviceBackend>(threads);
  };
  const RunSummary a = run_threads_job(cpu);
  const RunSummary b = run_threads_job(fake, with_fake);
  CHECK(made == 2);
  CHECK(a.final_step == 5);
  CHECK(b.final_step == 5);
  CHECK(a.final_loss == b.final_loss);
  const CheckpointData ca = read_checkpoint(a.last_checkpoint, layout_for(cpu), true);
  const CheckpointData cb = read_checkpoint(b.last_checkpoint, layout_for(fake), true);
  CHECK(bitwise_equal(ca.params, cb.params));
  CHECK(bitwise_equal(ca.m, cb.m));
  CHECK(bitwise_equal(ca.v, cb.v));
}

TEST_CASE("backend factory: cpu builds - cuda says what is missing - anything else names the valid ones") {
  auto be = make_backend("cpu", 1);
  CHECK(be->host_accessible());
  CHECK(contains(be->name(), "cpu"));
  for (const std::string d : {"cuda", "cuda:0", "cuda:3"}) {
    CAPTURE(d);
    try {
      auto gpu = make_backend(d, 1, "--device");
      // A machine with that GPU: the backend opens it.
      CHECK(PTRAIN_HAS_CUDA);
      CHECK(contains(gpu->name(), "cuda:"));
      CHECK_FALSE(gpu->host_accessible());
    } catch (const NotImplementedError& e) {  // a build without CUDA
      CHECK_FALSE(PTRAIN_HAS_CUDA);
      CHECK(contains(e.what(), "--device '" + d + "'"));
      CHECK(contains(e.what(), "not implemented yet"));
      CHECK(contains(e.what(), "no CUDA backend"));
    } catch (const DeviceError& e) {  // CUDA built; no driver, no GPU, or no GPU with that number
      CHECK(PTRAIN_HAS_CUDA);
      CHECK(contains(e.what(), "--device '" + d + "'"));
      CHECK((contains(e.what(), "no CUDA driver") || contains(e.what(), "no GPU") ||
             contains(e.what(), "driver supports CUDA")));
      CHECK(e.code() == ExitCode::kDevice);
    }
  }
  for (const std::string d : {"tpu", "", "CPU", "cuda:", "cuda:x", "cuda:-1"}) {
    CAPTURE(d);
    try {
      check_device(d, "device.type");
      FAIL("accepted '" << d << "'");
    } catch (const UsageError& e) {
      CHECK(contains(e.what(), "device.type '" + d + "'"));
      CHECK(contains(e.what(), "cpu, cuda, cuda:N"));
    }
  }
}
