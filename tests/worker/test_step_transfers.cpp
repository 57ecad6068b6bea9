// Transfers overlapped with compute, checked on the CPU backend and on FakeDeviceBackend (which
// runs ticketed copies as late as their contract allows and names races): the model's StepHooks
// ranges (order, coverage), the fake's ticketed transfers themselves, and TrainStep with a
// WeightSource and a GradientSink — ranges in order, every element exactly once, numbers bitwise
// those of compute() without transfers, for GPT (several micro-batches, token prefetch; CPU and
// fake device) and BERT (CPU: the fake device has no BERT ops).
#include "common/error.hpp"
#include "common/tensor/gpt_init.hpp"
#include "support/checkpoint_test_util.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/fake_device_backend.hpp"
#include "worker/model/backend.hpp"
#include "worker/model/gpt.hpp"
#include "worker/model/gpt_state.hpp"
#include "worker/model/step_hooks.hpp"
#include "worker/step_transfers.hpp"
#include "worker/train_step.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

using namespace ptrain;
using namespace ptrain::testing;

namespace {

using Ranges = std::vector<std::pair<int64_t, int64_t>>;

const ModelDims kGpt{61, 64, 12, 3, 2, 16};  // V 61 padded to 64, 3 layers
const ModelDims kBert{61 + kBertSpecialTokens, 72, 12, 2, 2, 16, ModelArch::kBert};

bool bitwise(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(V));
  return v;
}

std::vector<float> params_for(const ParamLayout& layout, uint64_t seed) {
  std::vector<float> p(static_cast<size_t>(layout.total()));
  if (layout.dims().arch == ModelArch::kGpt) {
    init_gpt_params(layout, seed, p);
  } else {  // any finite weights do: the check is CPU against itself
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> n(0.0f, 0.05f);
    for (auto& x : p) x = n(rng);
  }
  return p;
}

// The model's ranges (step_hooks.hpp): embeddings, each layer, the top; in forward order.
Ranges model_ranges(const ParamLayout& layout) {
  std::vector<int64_t> b{0};
  const ModelDims& d = layout.dims();
  for (int64_t l = 0; l < d.L; ++l) {
    b.push_back(d.arch == ModelArch::kGpt
                    ? layout.layer(l).ln_1_w
                    : layout.offset_of("bert.encoder.layer." + std::to_string(l) +
                                       ".attention.self.query.weight"));
  }
  b.push_back(d.arch == ModelArch::kGpt ? layout.ln_f_w()
                                        : layout.offset_of("cls.predictions.bias"));
  b.push_back(layout.total());
  Ranges r;
  for (size_t k = 0; k + 1 < b.size(); ++k) r.emplace_back(b[k], b[k + 1]);
  return r;
}

Ranges reversed(Ranges r) {
  std::reverse(r.begin(), r.end());
  return r;
}

struct RecordingHooks final : StepHooks {
  Ranges forward, backward;
  void before_forward(int64_t b, int64_t e) override { forward.emplace_back(b, e); }
  void after_backward(int64_t b, int64_t e) override { backward.emplace_back(b, e); }
};

// Writes the step's weights into the weights buffer only when asked for a range (as a pull that
// lands range by range would): a range read before its wait reads NaN.
struct ArrivingWeights final : WeightSource {
  std::span<float> dst;
  std::vector<float> weights;
  Ranges asked;
  void wait_weights(int64_t b, int64_t e) override {
    asked.emplace_back(b, e);
    std::copy(weights.begin() + b, weights.begin() + e, dst.begin() + b);
  }
};

// Copies each range when it is handed over; counts how often each element came.
struct RecordingSink final : GradientSink {
  std::vector<float> got;
  std::vector<int> times;
  Ranges ranges;
  std::function<void()> on_first;
  void gradient_ready(std::span<const float> g, int64_t b, int64_t e) override {
    if (ranges.empty() && on_first) on_first();
    if (got.empty()) {
      got.assign(g.size(), std::numeric_limits<float>::quiet_NaN());
      times.assign(g.size(), 0);
    }
    ranges.emplace_back(b, e);
    for (int64_t i = b; i < e; ++i) {
      got[static_cast<size_t>(i)] = g[static_cast<size_t>(i)];
      ++times[static_cast<size_t>(i)];
    }
  }
};

}  // namespace

TEST_CASE("step hooks: GPT and BERT report their ranges in forward and backward order once per micro-batch") {
  auto cpu = make_cpu_backend(2);
  for (const ModelDims& d : {kGpt, kBert}) {
    const bool gpt_arch = d.arch == ModelArch::kGpt;
    CAPTURE(gpt_arch);
    const ParamLayout layout(d);
    const Ranges want = model_ranges(layout);
    REQUIRE(want.size() == static_cast<size_t>(d.L + 2));
    GptState state(layout, *cpu);
    state.upload_params(params_for(layout, 1));
    state.zero_grads();
    std::vector<float> plain(static_cast<size_t>(layout.total()));
    std::vector<float> hooked = plain;
    for (bool with_hooks : {false, true}) {
      state.zero_grads();
      for (int mb = 0; mb < 2; ++mb) {  // the fold's first micro-batch and a later one
        RecordingHooks hooks;
        StepHooks* h = with_hooks ? &hooks : nullptr;
        if (gpt_arch) {
          Gpt gpt(layout, *cpu, 2);
          const auto w = random_tokens(2 * (d.T + 1), d.V, 10 + mb);
          gpt.forward_backward(state, w, 2, d.T, 1.0f, h);
        } else {
          Bert bert(layout, *cpu, 2);
          auto inputs = random_tokens(2 * d.T, d.V, 20 + mb);
          std::vector<int32_t> labels(inputs.size(), kIgnoreLabel);
          labels[3] = 5;
          labels[2 * d.T - 1] = 7;
          bert.mlm_forward_backward(state, inputs, labels, 2, d.T, 1.0f, h);
        }
        if (with_hooks) {
          CHECK(hooks.forward == want);
          CHECK(hooks.backward == reversed(want));
        }
      }
      state.download_grads(with_hooks ? hooked : plain);
    }
    CHECK(bitwise(plain, hooked));  // the range-by-range fold is the whole-vector fold
  }
}

TEST_CASE("fake device: ticketed transfers land as late as allowed and races are named") {
  FakeDeviceBackend fake(1);
  Buffer<float> dev = fake.alloc<float>(64);
  HostBuffer<float> up = fake.alloc_host<float>(64), down = fake.alloc_host<float>(64);
  std::fill(up.span().begin(), up.span().end(), 1.0f);
  fake.fill(dev.data(), 0.0f, 64);

  // An op on the upload's destination before order_after() is a race.
  const TransferTicket t = fake.start_upload(dev.data(), up.data(), 64 * sizeof(float));
  CHECK(contains(error_of([&] { fake.fill(dev.data() + 8, 2.0f, 4); }), "order_after"));
  std::fill(up.span().begin(), up.span().end(), 3.0f);  // the copy reads its source late
  fake.order_after(t);
  std::vector<float> h(64);
  fake.copy_to_host(h.data(), dev.data(), 64 * sizeof(float));
  CHECK(std::all_of(h.begin(), h.end(), [](float x) { return x == 3.0f; }));

  // A download copies what earlier ops left and reaches the host only when complete.
  std::fill(down.span().begin(), down.span().end(), -1.0f);
  const TransferTicket d = fake.start_download(down.data(), dev.data(), 64 * sizeof(float));
  CHECK(down.data()[0] == -1.0f);
  CHECK_FALSE(fake.transfer_done(d));
  CHECK(fake.transfer_done(d));
  CHECK(down.data()[5] == 3.0f);
  CHECK(fake.transfer_done(d));  // asked again: still complete

  // Writing a download's source before it completes is a race, named at completion.
  const TransferTicket d2 = fake.start_download(down.data(), dev.data(), 64 * sizeof(float));
  fake.fill(dev.data(), 4.0f, 64);
  CHECK(contains(error_of([&] { fake.wait_transfer(d2); }), "ticket " + std::to_string(d2.id)));
  CHECK(contains(error_of([&] { fake.order_after(TransferTicket{999}); }), "never issued"));
  fake.synchronize();
  CHECK(fake.queued_copies() == 0);
}

TEST_CASE("TrainStep with a WeightSource and a GradientSink: ranges in order - each element once - bitwise equal") {
  for (const ModelDims& d : {kGpt, kBert}) {
    const bool gpt_arch = d.arch == ModelArch::kGpt;
    const ParamLayout layout(d);
    const int64_t T = d.T, n = 7, micro = 3;  // micro-batches of 3, 3 and 1 windows
    const auto bytes = static_cast<size_t>(layout.total()) * sizeof(float);
    const Ranges want = model_ranges(layout);
    const std::vector<int32_t> windows = random_tokens(n * (T + 1), d.V - (gpt_arch ? 0 : kBertSpecialTokens), 5);
    std::vector<int64_t> ids(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = 100 + i;

    auto reference = make_cpu_backend(2);
    TrainStep plain(layout, *reference, micro, 9);
    auto cpu = make_cpu_backend(2);
    FakeDeviceBackend fake(2);
    // The fake device has no BERT ops: BERT runs on the CPU backend only.
    std::vector<Backend*> backends{cpu.get()};
    if (gpt_arch) backends.push_back(&fake);
    for (Backend* be : backends) {
      const bool on_fake = be == &fake;
      CAPTURE(gpt_arch);
      CAPTURE(on_fake);
      TrainStep step(layout, *be, micro, 9);
      for (uint64_t seed : {1, 2}) {  // two steps on the same TrainStep
        CAPTURE(seed);
        const std::vector<float> params = params_for(layout, seed);
        plain.set_weights(params);
        const LossSum lp = plain.compute(windows, n, ids, 3);

        ArrivingWeights source;
        source.dst = step.weights_host();
        source.weights = params;
        std::fill(source.dst.begin(), source.dst.end(), std::numeric_limits<float>::quiet_NaN());
        RecordingSink sink;
        int64_t downloads_at_first = -1;
        sink.on_first = [&] { downloads_at_first = fake.counters().downloads; };
        fake.reset_counters();
        StepTransfers transfers;
        transfers.weights = &source;
        transfers.gradients = &sink;
        const LossSum lt = step.compute(windows, n, ids, 3, transfers);

        CHECK(lt.loss_sum == lp.loss_sum);
        CHECK(lt.tokens == lp.tokens);
        CHECK(lt.correct == lp.correct);
        CHECK(bitwise(sink.got, plain.grads_host()));
        CHECK(bitwise(step.grads_host(), plain.grads_host()));
        CHECK(std::all_of(sink.times.begin(), sink.times.end(), [](int k) { return k == 1; }));
        CHECK(sink.ranges == reversed(want));
        CHECK(source.asked == want);  // the first micro-batch only: later ones wait for nothing
        if (on_fake) {
          // Range-sized transfers only: no whole-vector upload or download.
          int64_t grad_downloads = 0, weight_uploads = 0;
          for (const auto& t : fake.counters().log) {
            CHECK(t.bytes < bytes);
            if (t.bytes > static_cast<size_t>(2 * micro * T) * sizeof(int32_t)) {
              CHECK(t.async);
              (t.upload ? weight_uploads : grad_downloads) += 1;
            }
          }
          CHECK(weight_uploads >= 1);
          CHECK(grad_downloads >= 1);
          // Token ids: the first micro-batch's in queue order, the next two prefetched (ticketed)
          // while the one before computed: [inputs | targets] of 3 and of 1 window.
          std::vector<size_t> prefetched;
          for (const auto& t : fake.counters().log) {
            const auto window_ids_bytes = static_cast<size_t>(2 * T) * sizeof(int32_t);
            if (t.upload && t.ticketed && t.bytes % window_ids_bytes == 0 &&
                t.bytes <= micro * window_ids_bytes) {
              prefetched.push_back(t.bytes);
            }
          }
          CHECK(prefetched == std::vector<size_t>{static_cast<size_t>(2 * 3 * T) * sizeof(int32_t),
                                                  static_cast<size_t>(2 * 1 * T) * sizeof(int32_t)});
          // The top layers' gradient reached the sink while backward was still being queued:
          // before every range's download had started.
          const int64_t micro_batches = 3, range_downloads = static_cast<int64_t>(want.size());
          if (gpt_arch) {
            CHECK(downloads_at_first < micro_batches + range_downloads);
          }
          CHECK(fake.queued_copies() == 0);
        }
      }
      // No windows: the whole (zero) gradient in one piece, the weights all at once.
      ArrivingWeights source;
      source.dst = step.weights_host();
      source.weights = params_for(layout, 3);
      RecordingSink sink;
      StepTransfers transfers{&source, &sink};
      step.compute({}, 0, {}, 0, transfers);
      CHECK(source.asked == Ranges{{0, layout.total()}});
      CHECK(sink.ranges == Ranges{{0, layout.total()}});
      CHECK(std::all_of(sink.got.begin(), sink.got.end(), [](float g) { return g == 0.0f; }));
    }
  }
}

TEST_CASE("TrainStep: a failing WeightSource stops the step - the next step is exact again") {
  const ParamLayout layout(kGpt);
  const int64_t T = kGpt.T, n = 4;
  const auto windows = random_tokens(n * (T + 1), kGpt.V, 8);
  FakeDeviceBackend fake(1);
  TrainStep step(layout, fake, 2);
  auto cpu = make_cpu_backend(1);
  TrainStep plain(layout, *cpu, 2);
  const auto params = params_for(layout, 4);
  struct Failing final : WeightSource {
    void wait_weights(int64_t b, int64_t) override {
      if (b > 0) throw IoError("the server of this range is gone");
    }
  } failing;
  StepTransfers broken;
  broken.weights = &failing;
  std::copy(params.begin(), params.end(), step.weights_host().begin());
  CHECK(contains(error_of([&] { step.compute(windows, n, {}, 0, broken); }), "is gone"));
  CHECK(fake.queued_copies() == 0);
  step.set_weights(params);
  plain.set_weights(params);
  const LossSum a = step.compute(windows, n), b = plain.compute(windows, n);
  CHECK(a.loss_sum == b.loss_sum);
  CHECK(bitwise(step.grads_host(), plain.grads_host()));
}
