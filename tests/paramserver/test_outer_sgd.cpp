// cluster.sync local on the server: the outer Nesterov SGD against torch.optim.SGD(nesterov=True)
// worked by hand, and a whole outer step through the request handler: the pushed pseudo-gradients
// averaged plainly (not by tokens), the momentum buffer loaded at zero, kept, handed to the shard
// writer and restored from a loader, and a clipped commit refused.
#include "common/proto/codec.hpp"
#include "paramserver/optimizer/outer_sgd.hpp"
#include "paramserver/request_handler.hpp"

#include <doctest/doctest.h>

#include <vector>

using namespace ptrain;
using net::coordinator_endpoint;
using net::worker_endpoint;

TEST_CASE("outer sgd: Nesterov momentum as torch.optim.SGD - two steps by hand") {
  // torch: buf = Δ1 (first step); p -= lr·(Δ1 + μ·buf); then buf = μ·buf + Δ2; p -= lr·(Δ2 + μ·buf)
  std::vector<float> p{1.0f, -2.0f}, buf(2, 0.0f);
  const OuterSgdOptions o{0.7, 0.9};
  outer_sgd_update(o, std::vector<float>{0.5f, 0.0f}, p, buf);
  CHECK(buf[0] == doctest::Approx(0.5));
  CHECK(p[0] == doctest::Approx(1.0 - 0.7 * (0.5 + 0.9 * 0.5)));  // 0.335
  CHECK(p[1] == -2.0f);
  outer_sgd_update(o, std::vector<float>{-0.25f, 1.0f}, p, buf);
  CHECK(buf[0] == doctest::Approx(0.9 * 0.5 - 0.25));                   // 0.2
  CHECK(p[0] == doctest::Approx(0.335 - 0.7 * (-0.25 + 0.9 * 0.2)));    // 0.384
  CHECK(p[1] == doctest::Approx(-2.0 - 0.7 * (1.0 + 0.9 * 1.0)));
  // lr 1, momentum 0: p − Δ exactly where the subtraction is exact.
  std::vector<float> q{3.0f}, b0{0.0f};
  outer_sgd_update({1.0, 0.0}, std::vector<float>{1.0f}, q, b0);
  CHECK(q[0] == 2.0f);
  CHECK_THROWS(outer_sgd_update(o, std::vector<float>{1.0f}, q, buf));  // sizes differ
}

TEST_CASE("outer sgd: one outer step through the request handler - plain average - momentum kept and checkpointed") {
  const proto::KeyRange r{0, 4};
  const std::vector<float> w0{1.0f, 2.0f, 3.0f, 4.0f};
  std::vector<float> momentum_written;
  ServerOptions so;
  so.server_id = 0;
  so.range = r;
  so.load_shard = [&](const proto::LoadShard&) {
    return ShardState{w0, std::vector<float>(4, 0.0f), std::vector<float>(4, 0.0f), {}};
  };
  so.write_shard = [&](const std::string&, int64_t, std::span<const float>,
                       std::span<const float>, std::span<const float>,
                       std::span<const float> outer_momentum) {
    momentum_written.assign(outer_momentum.begin(), outer_momentum.end());
  };
  UpdateRule rule(AdamWOptions{}, LrSchedule{1e-2, 1e-3, 0, 20}, {{0, 4, true}});
  rule.with_outer({{0.5, 0.9}, 4});
  RequestHandler h(so, rule);
  h.handle(coordinator_endpoint(), proto::LoadShard{0, 0, r, 7, ""});
  REQUIRE(h.store().momentum().size() == 4);  // a fresh start: zeros
  CHECK(h.store().momentum()[0] == 0.0f);

  // Two workers with very different token counts: the average is plain, Σ Δ_w / 2.
  const std::vector<float> d0{0.2f, 0.0f, -0.4f, 1.0f}, d1{0.4f, 0.2f, 0.0f, 1.0f};
  h.handle(worker_endpoint(0), proto::GradPush{0, 0, 0, 10, r, d0});
  h.handle(worker_endpoint(1), proto::GradPush{0, 0, 1, 1000, r, d1});
  auto out = h.handle(coordinator_endpoint(), proto::StepContributors{0, 0, {0, 1}});
  REQUIRE(out.size() == 1);
  const auto& norm = std::get<proto::NormReport>(out[0].message);
  CHECK(norm.tokens == 1010);
  CHECK(norm.sum_squares == doctest::Approx(0.3 * 0.3 + 0.1 * 0.1 + 0.2 * 0.2 + 1.0).epsilon(1e-6));

  // A clipped commit breaks local mode's protocol.
  CHECK_THROWS_AS(h.handle(coordinator_endpoint(), proto::StepCommit{0, {0, 1}, 9.0, 0.5f}),
                  proto::ProtocolError);
  out = h.handle(coordinator_endpoint(), proto::StepCommit{0, {0, 1}, 1.0, 1.0f});
  const auto& applied = std::get<proto::StepApplied>(out.at(0).message);
  CHECK(applied.version == 1);
  // lr reported: the inner schedule at the outer step's last inner step (index 3 of 20).
  CHECK(applied.lr == doctest::Approx(LrSchedule{1e-2, 1e-3, 0, 20}.at(3)));
  const float avg[] = {0.3f, 0.1f, -0.2f, 1.0f};
  for (size_t i = 0; i < 4; ++i) {
    CHECK(h.store().momentum()[i] == doctest::Approx(avg[i]));
    CHECK(h.store().weights()[i] == doctest::Approx(w0[i] - 0.5 * (avg[i] + 0.9 * avg[i])));
  }
  h.handle(coordinator_endpoint(), proto::CheckpointShard{1, 1, "/tmp/x"});
  CHECK(momentum_written == std::vector<float>(h.store().momentum().begin(),
                                               h.store().momentum().end()));

  // A loader that has a momentum buffer (a resume) restores it.
  ServerOptions so2 = so;
  so2.load_shard = [&](const proto::LoadShard&) {
    return ShardState{w0, std::vector<float>(4, 0.0f), std::vector<float>(4, 0.0f),
                      {1.0f, 2.0f, 3.0f, 4.0f}};
  };
  RequestHandler h2(so2, rule);
  h2.handle(coordinator_endpoint(), proto::LoadShard{0, 1, r, 7, "/ckpt"});
  CHECK(h2.store().momentum()[2] == 3.0f);
}
