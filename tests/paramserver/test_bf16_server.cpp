// A parameter server with bf16 on the wire (cluster.wire_dtype: bf16), driven message by message:
// it differs from an fp32 server only by the rounding — a step from bf16 pushes of G equals,
// bit for bit, a step from fp32 pushes of round_to_bf16(G), the master weights stay fp32, and a
// bf16 pull is round_to_bf16 of the fp32 weights (whole slices borrowed from one encoding per
// version; odd sub-ranges encoded on their own). A push in the other encoding is refused.
#include "common/proto/bf16.hpp"
#include "paramserver/request_handler.hpp"

#include <doctest/doctest.h>

#include <random>
#include <vector>

using namespace ptrain;
using net::coordinator_endpoint;
using net::worker_endpoint;
namespace p = ptrain::proto;

namespace {

std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

std::vector<float> packed(const std::vector<float>& v) {
  std::vector<float> out(p::bf16_packed_size(v.size()));
  p::pack_bf16(v, out);
  return out;
}

std::vector<float> rounded(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = p::round_to_bf16(v[i]);
  return out;
}

// A loaded server of range r (odd size: the packed form has a pad half) in `encoding`.
RequestHandler server(p::KeyRange r, const std::vector<float>& w, p::FloatEncoding encoding) {
  ServerOptions so{0, r, {}, {}};
  so.push_encoding = encoding;
  so.load_shard = [w](const p::LoadShard&) {
    return ShardState{w, std::vector<float>(w.size(), 0.0f), std::vector<float>(w.size(), 0.0f)};
  };
  RequestHandler h(so, UpdateRule(AdamWOptions{0.9, 0.95, 1e-8, 0.1}, LrSchedule{1e-2, 1e-3, 0, 10},
                                  {{r.begin, r.end, true}}));
  h.handle(coordinator_endpoint(), p::LoadShard{0, 0, r, 1, ""});
  return h;
}

// Pushes of workers 0 and 1, contributors, commit; returns the NormReport.
p::NormReport step(RequestHandler& h, p::KeyRange r, p::FloatEncoding e,
                   const std::vector<float>& g0, const std::vector<float>& g1) {
  for (int32_t w = 0; w < 2; ++w) {
    p::GradPush push{0, 0, w, w == 0 ? 12 : 20, r, w == 0 ? g0 : g1};
    push.encoding = e;
    const auto out = h.handle(worker_endpoint(w), push);
    REQUIRE(out.size() == 1);
    REQUIRE(std::holds_alternative<p::PushReceived>(out[0].message));
  }
  const auto out = h.handle(coordinator_endpoint(), p::StepContributors{0, 0, {0, 1}});
  REQUIRE(out.size() == 1);
  const auto norm = std::get<p::NormReport>(out[0].message);
  h.handle(coordinator_endpoint(), p::StepCommit{0, {0, 1}, 1.0, 0.75f});
  return norm;
}

}  // namespace

TEST_CASE("bf16 server: a step from bf16 pushes equals an fp32 step from the rounded gradients - bitwise") {
  const p::KeyRange r{100, 100 + 40001};  // odd: the last element carries a pad half
  const auto w = gaussian(40001, 1), g0 = gaussian(40001, 2), g1 = gaussian(40001, 3);
  RequestHandler bf16 = server(r, w, p::FloatEncoding::kBf16);
  RequestHandler fp32 = server(r, w, p::FloatEncoding::kFp32);
  const p::NormReport nb = step(bf16, r, p::FloatEncoding::kBf16, packed(g0), packed(g1));
  const p::NormReport nf = step(fp32, r, p::FloatEncoding::kFp32, rounded(g0), rounded(g1));
  CHECK(nb.sum_squares == nf.sum_squares);
  CHECK(nb.tokens == 32);
  const auto wb = bf16.store().weights(), wf = fp32.store().weights();
  REQUIRE(wb.size() == wf.size());
  CHECK(std::equal(wb.begin(), wb.end(), wf.begin()));
  // The masters stay fp32: after the step they are not all bf16 values.
  size_t off_grid = 0;
  for (float x : wb) off_grid += p::round_to_bf16(x) != x ? 1 : 0;
  CHECK(off_grid > wb.size() / 2);
}

TEST_CASE("bf16 server: a bf16 pull is the weights rounded - whole slice or sub-range") {
  const p::KeyRange r{10, 10 + 1001};
  const auto w = gaussian(1001, 4);
  RequestHandler h = server(r, w, p::FloatEncoding::kBf16);
  auto pull = [&](uint64_t id, p::KeyRange sub, p::FloatEncoding e) {
    const auto out = h.handle(worker_endpoint(0), p::PullRequest{id, 0, sub, e});
    REQUIRE(out.size() == 1);
    return std::get<p::PullReply>(out[0].message);
  };
  const p::PullReply whole = pull(1, r, p::FloatEncoding::kBf16);
  CHECK(whole.encoding == p::FloatEncoding::kBf16);
  REQUIRE(whole.weights.size() == 501);
  std::vector<float> back(1001);
  p::unpack_bf16(whole.weights, back);
  CHECK(back == rounded(w));
  // A second pull of the same version is borrowed from the same encoding (no new one).
  CHECK(pull(2, r, p::FloatEncoding::kBf16).weights.data() == whole.weights.data());
  CHECK_FALSE(whole.weights.owned());
  // Sub-ranges: on a pair boundary (borrowed) and off it (encoded on its own); odd lengths.
  for (const p::KeyRange sub : {p::KeyRange{12, 17}, p::KeyRange{13, 20}, p::KeyRange{11, 11},
                                p::KeyRange{1000, 1011}}) {
    const p::PullReply part = pull(3, sub, p::FloatEncoding::kBf16);
    std::vector<float> got(static_cast<size_t>(sub.size()));
    p::unpack_bf16(part.weights, got);
    const std::vector<float> want(w.begin() + (sub.begin - r.begin), w.begin() + (sub.end - r.begin));
    CHECK(got == rounded(want));
  }
  // An fp32 pull from the same server: the masters themselves.
  const p::PullReply exact = pull(4, r, p::FloatEncoding::kFp32);
  CHECK(exact.weights == w);
}

TEST_CASE("bf16 server: a push in the other encoding is refused naming both and the key") {
  const p::KeyRange r{0, 8};
  const auto w = gaussian(8, 5);
  RequestHandler h = server(r, w, p::FloatEncoding::kBf16);
  const auto out = h.handle(worker_endpoint(3), p::GradPush{0, 0, 3, 8, r, gaussian(8, 6)});
  REQUIRE(out.size() == 1);
  CHECK(out[0].to == worker_endpoint(3));
  const auto& f = std::get<p::Failure>(out[0].message);
  CHECK(f.message.find("worker 3") != std::string::npos);
  CHECK(f.message.find("carries fp32 floats, this server takes bf16") != std::string::npos);
  CHECK(f.message.find("cluster.wire_dtype") != std::string::npos);
}
