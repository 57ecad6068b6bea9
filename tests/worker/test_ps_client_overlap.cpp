// The network side of a step that overlaps communication with compute (worker/overlap.hpp,
// PsClient::push_range / pull in pieces / wait_range), with the test playing the servers over the
// in-process transport: a range push cut at server boundaries (fp32 and bf16, odd offsets), a
// pull in pieces answered out of order, a stale piece, buckets formed in backward order, the
// exactly-once check; and TrainStep with StepTransfers: forward reads only the ranges it waited
// for, the gradient leaves range by range in backward order, and loss and gradient are bitwise
// those of the plain step.
#include "common/error.hpp"
#include "common/io/token_file.hpp"
#include "common/net/inproc_transport.hpp"
#include "common/proto/bf16.hpp"
#include "common/tensor/gpt_init.hpp"
#include "support/job_test_util.hpp"
#include "worker/backend/cpu/cpu_backend.hpp"
#include "worker/batch_loader.hpp"
#include "worker/overlap.hpp"
#include "worker/ps_client.hpp"
#include "worker/train_step.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>

using namespace ptrain;
using namespace ptrain::testing;
using namespace std::chrono_literals;

namespace {

// A worker endpoint with a PsClient and the servers as bare transports the test drives.
struct Wire {
  std::shared_ptr<net::InprocFabric> fabric = std::make_shared<net::InprocFabric>();
  net::InprocTransport worker{net::worker_endpoint(0), fabric};
  std::vector<std::unique_ptr<net::InprocTransport>> servers;
  explicit Wire(size_t n) {
    for (size_t k = 0; k < n; ++k) {
      servers.push_back(std::make_unique<net::InprocTransport>(
          net::server_endpoint(static_cast<int32_t>(k)), fabric));
    }
  }
  ~Wire() { fabric->close("test over"); }
  template <class T>
  T next(size_t server) {
    auto env = servers[server]->receive(5s);
    REQUIRE_MESSAGE(env, "server " << server << " received nothing");
    REQUIRE(std::holds_alternative<T>(env->message));
    return std::get<T>(env->message);
  }
  bool idle(size_t server) { return !servers[server]->receive(20ms).has_value(); }
};

std::vector<float> iota_floats(size_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * (static_cast<float>(i) + 0.123f);
  return v;
}

}  // namespace

TEST_CASE("ps client: a range push is cut at server boundaries - fp32 and bf16 at odd offsets") {
  for (const auto enc : {proto::FloatEncoding::kFp32, proto::FloatEncoding::kBf16}) {
    CAPTURE(proto::encoding_name(enc));
    Wire w(3);
    PsClient c(w.worker, {{0, 10}, {10, 21}, {21, 30}}, 10s, enc);
    const auto g = iota_floats(30, 1.37f);
    const PushMeta meta{4, 2, 0, 96};
    CHECK(c.push_range(meta, g, {5, 25}) == 3);
    CHECK(c.push_range(meta, g, {27, 30}) == 1);
    c.flush_pushes();
    auto values = [&](const proto::GradPush& m) {
      std::vector<float> v(static_cast<size_t>(m.range.size()));
      if (enc == proto::FloatEncoding::kBf16) {
        proto::unpack_bf16({m.grads.data(), m.grads.size()}, v);
      } else {
        v.assign(m.grads.data(), m.grads.data() + m.grads.size());
      }
      return v;
    };
    auto want = [&](proto::KeyRange r) {
      std::vector<float> v(g.begin() + r.begin, g.begin() + r.end);
      if (enc == proto::FloatEncoding::kBf16) {
        for (auto& x : v) x = proto::round_to_bf16(x);
      }
      return v;
    };
    const std::vector<std::pair<size_t, proto::KeyRange>> expect = {
        {0, {5, 10}}, {1, {10, 21}}, {2, {21, 25}}, {2, {27, 30}}};
    for (const auto& [k, r] : expect) {
      const auto m = w.next<proto::GradPush>(k);
      CHECK(m.range == r);
      CHECK(m.step == 4);
      CHECK(m.tokens == 96);
      CHECK(m.encoding == enc);
      CHECK(values(m) == want(r));
    }
    for (size_t k = 0; k < 3; ++k) CHECK(w.idle(k));
    CHECK_THROWS_WITH(c.push_range(meta, g, {25, 31}), doctest::Contains("outside [0, 30)"));
  }
}

TEST_CASE("ps client: a pull in pieces - answered out of order - wait_range needs only its pieces") {
  for (const auto enc : {proto::FloatEncoding::kFp32, proto::FloatEncoding::kBf16}) {
    CAPTURE(proto::encoding_name(enc));
    Wire w(2);
    PsClient c(w.worker, {{0, 10}, {10, 21}}, 10s, enc);
    std::vector<float> dst(21, std::numeric_limits<float>::quiet_NaN());
    const auto weights = iota_floats(21, 0.5f);
    const auto t = c.pull(7, dst, 3);  // 3 → pieces of 4 (even)
    std::vector<proto::PullRequest> reqs[2];
    for (size_t k = 0; k < 2; ++k) {
      for (int i = 0; i < 3; ++i) reqs[k].push_back(w.next<proto::PullRequest>(k));
      CHECK(w.idle(k));
    }
    CHECK(reqs[0][0].range == proto::KeyRange{0, 4});
    CHECK(reqs[0][2].range == proto::KeyRange{8, 10});
    CHECK(reqs[1][0].range == proto::KeyRange{10, 14});
    CHECK(reqs[1][2].range == proto::KeyRange{18, 21});
    auto answer = [&](size_t k, const proto::PullRequest& r, int64_t version = 7) {
      std::vector<float> v(weights.begin() + r.range.begin, weights.begin() + r.range.end);
      std::vector<float> wire = v;
      if (enc == proto::FloatEncoding::kBf16) {
        wire.resize(proto::bf16_packed_size(v.size()));
        proto::pack_bf16(v, wire);
      }
      w.servers[k]->send(net::worker_endpoint(0),
                         proto::PullReply{r.request_id, version, r.range, wire, enc});
    };
    // Server 1 first, and its pieces backwards; server 0's middle piece.
    for (int i = 2; i >= 0; --i) answer(1, reqs[1][static_cast<size_t>(i)]);
    answer(0, reqs[0][1]);
    CHECK(c.wait_range(t, 12, 20, 5s));
    CHECK(c.wait_range(t, 4, 8, 5s));
    // [0, 4) has not been answered: waiting for it times out, naming what was asked.
    CHECK_THROWS_WITH(c.wait_range(t, 3, 5, 50ms), doctest::Contains("[3, 5) asked"));
    answer(0, reqs[0][0]);
    answer(0, reqs[0][2]);
    CHECK(c.wait_range(t, 0, 21, 5s));
    CHECK(c.wait(t, 5s));
    for (size_t i = 0; i < dst.size(); ++i) {
      const float want = enc == proto::FloatEncoding::kBf16 ? proto::round_to_bf16(weights[i])
                                                             : weights[i];
      CHECK(dst[i] == want);
    }
    // A server already past the version asked: wait_range says so at once; wait() drains.
    const auto t2 = c.pull(7, dst, 8);
    std::vector<proto::PullRequest> r2[2];
    for (size_t k = 0; k < 2; ++k) {
      for (int i = 0; i < 2; ++i) r2[k].push_back(w.next<proto::PullRequest>(k));
    }
    answer(0, r2[0][0], 8);
    CHECK_FALSE(c.wait_range(t2, 0, 21, 5s));
    answer(0, r2[0][1], 8);
    answer(1, r2[1][0], 8);
    answer(1, r2[1][1], 8);
    CHECK_FALSE(c.wait(t2, 5s));
  }
}

TEST_CASE("ps client: buckets form in backward order - each pushed when full - exactly once checked") {
  Wire w(2);
  PsClient c(w.worker, {{0, 10}, {10, 20}});
  const auto g = iota_floats(20);
  BucketPush sink(c, 6);
  sink.start({3, 1, 0, 40});
  sink.gradient_ready(g, 16, 20);  // 4 < 6: kept
  CHECK(w.idle(1));
  sink.gradient_ready(g, 12, 16);  // [12, 20): 8 → pushed
  CHECK(w.next<proto::GradPush>(1).range == proto::KeyRange{12, 20});
  sink.gradient_ready(g, 5, 12);   // [5, 12): 7 → pushed, cut at 10
  CHECK(w.next<proto::GradPush>(0).range == proto::KeyRange{5, 10});
  CHECK(w.next<proto::GradPush>(1).range == proto::KeyRange{10, 12});
  sink.gradient_ready(g, 0, 5);    // 5 < 6: left for finish()
  CHECK(w.idle(0));
  sink.finish();
  const auto last = w.next<proto::GradPush>(0);
  CHECK(last.range == proto::KeyRange{0, 5});
  CHECK(std::vector<float>(last.grads.begin(), last.grads.end()) ==
        std::vector<float>(g.begin(), g.begin() + 5));
  CHECK(sink.buckets() == 3);

  // A range handed over twice, or one never handed over, is an error at the end of the step.
  sink.start({4, 1, 0, 40});
  sink.gradient_ready(g, 10, 20);
  sink.gradient_ready(g, 8, 12);
  sink.gradient_ready(g, 0, 8);
  CHECK_THROWS_WITH(sink.finish(), doctest::Contains("overlap at"));
  sink.start({5, 1, 0, 40});
  sink.gradient_ready(g, 10, 20);
  sink.gradient_ready(g, 0, 8);
  CHECK_THROWS_WITH(sink.finish(), doctest::Contains("leave a gap"));
}

namespace {

// Hands out the reference weights only when waited for (NaN before), recording the order.
struct RecordingSource final : WeightSource {
  std::span<float> host;
  std::span<const float> weights;
  std::vector<proto::KeyRange> waited;
  void wait_weights(int64_t b, int64_t e) override {
    std::copy(weights.begin() + b, weights.begin() + e, host.begin() + b);
    waited.push_back({b, e});
  }
};

struct RecordingSink final : GradientSink {
  std::vector<float> grads;
  std::vector<proto::KeyRange> ranges;
  void gradient_ready(std::span<const float> g, int64_t b, int64_t e) override {
    grads.resize(g.size(), std::numeric_limits<float>::quiet_NaN());
    std::copy(g.begin() + b, g.begin() + e, grads.begin() + b);
    ranges.push_back({b, e});
  }
};

}  // namespace

TEST_CASE("train step with transfers: ranges in forward and backward order - bitwise the plain step") {
  TempDir dir("overlap-step");
  const std::string train = dir / "train.tok";
  write_corpus(train, 2000, 3);
  const ParamLayout layout{ModelDims{257, 260, 12, 3, 2, 16}};
  std::vector<float> params(static_cast<size_t>(layout.total()));
  init_gpt_params(layout, 11, params);
  const TokenFile file = TokenFile::open(train);
  const BatchLoader loader(file, 12);
  const std::vector<int64_t> windows = {3, 7, 1, 50, 20};  // micro-batches {3,7} {1,50} {20}

  auto backend = make_cpu_backend(2);
  TrainStep plain(layout, *backend, 2);
  plain.set_weights(params);
  const LossSum want = plain.compute(loader, windows, 0);
  const std::vector<float> want_grads(plain.grads_host().begin(), plain.grads_host().end());

  TrainStep step(layout, *backend, 2);
  std::fill(step.weights_host().begin(), step.weights_host().end(),
            std::numeric_limits<float>::quiet_NaN());
  RecordingSource src;
  src.host = step.weights_host();
  src.weights = params;
  RecordingSink sink;
  const LossSum got = step.compute(loader, windows, 0, {&src, &sink});
  CHECK(got.loss_sum == want.loss_sum);  // bitwise
  CHECK(got.tokens == want.tokens);
  CHECK(sink.grads == want_grads);
  // Forward order: embeddings, 3 layers, final LayerNorm, tiling [0, total) upwards.
  REQUIRE(src.waited.size() == 5);
  int64_t at = 0;
  for (const auto& r : src.waited) {
    CHECK(r.begin == at);
    at = r.end;
  }
  CHECK(at == layout.total());
  // Backward order: the same ranges from the top down, embeddings last.
  REQUIRE(sink.ranges.size() == 5);
  for (size_t i = 0; i < 5; ++i) CHECK(sink.ranges[i] == src.waited[4 - i]);
  // A second step on the same TrainStep (weights now uploaded piecewise) is still the same.
  const LossSum again = step.compute(loader, windows, 0, {&src, &sink});
  CHECK(again.loss_sum == want.loss_sum);
  CHECK(sink.grads == want_grads);
}
