// The frame codec (common/proto/codec.hpp): every message round-trips bit for bit, and every bad
// frame is refused with a reason — bad magic, another protocol version (naming both), a CRC
// mismatch, an oversized length (refused from the header alone, before any allocation), unknown
// flags and types, malformed payloads — while a truncated frame is "need more", byte by byte.
#include "common/proto/codec.hpp"
#include "common/proto/frame_decoder.hpp"
#include "common/proto/messages.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>

using namespace ptrain;
using namespace ptrain::proto;

namespace {

std::vector<float> ramp(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(i) - 0.5f;
  return v;
}

// One of each message, with non-default values in every field.
std::vector<Message> samples() {
  std::vector<Message> out;
  out.push_back(LoadShard{7, 2, {16, 21}, 0xFEEDFACE12345678ull,
                          "/shared/run/checkpoints/step-00000007/checkpoint.h5"});
  out.push_back(StepBegin{12, 3, {5, 99, 0, 1ll << 40}});
  out.push_back(PullRequest{0xFFFFFFFFFFull, 12, {0, 1024}});
  PullReply pr{42, 12, {3, 6}, {1.0f, -0.0f, std::numeric_limits<float>::infinity()}};
  out.push_back(pr);
  out.push_back(GradPush{12, 3, 1, 4096, {100, 104}, {1e-30f, -2.5f, 3.0f, 1e30f}});
  out.push_back(PushReceived{1, 12, 3, 4096});
  out.push_back(WorkerStepDone{2, 12, 12345.678, 4096, 0.01, 1.5, 0.02, 1ull << 33, 77});
  out.push_back(WorkerStepDone{3, 12, 12345.678, 4096, 0.01, 1.5, 0.02, 1ull << 33, 77, 1234});
  out.push_back(StepContributors{12, 3, {0, 1, 3}});
  out.push_back(NormReport{1, 12, 3.25e-3, 4096, -1, {0, 1, 3}});
  out.push_back(StepWorkers{12, 3, {0, 1, 3}});
  out.push_back(StepCommit{12, {0, 1, 3}, 2.5, 0.4f});
  out.push_back(StepApplied{1, 12, 13, 6e-4, 123456789012ull, 5});
  out.push_back(Shutdown{"training finished"});
  out.push_back(Failure{7, "non-finite \xE2\x9C\x97 gradient"});
  out.push_back(CheckpointShard{9, 13, "/shared/run/checkpoints/step-00000013.tmp"});
  out.push_back(CheckpointShardWritten{9, 1, 13, {8, 10}, 0.125});
  out.push_back(ShardLoaded{2, 13, {8, 10}, 0.75});
  out.push_back(EvalBegin{11, 13, 64, 96, 8});
  out.push_back(EvalDone{11, 3, 13, 64, {1234.5, 1e-300, 7.25, 0.0}, {128, 1, 64, 0}, 0.5});
  out.push_back(LeaseGrant{0xABCDEF0123ull, 3, 17, {5, 99, 1ll << 40}});
  out.push_back(PushReady{2, 0xABCDEF0123ull, 15});
  out.push_back(InnerStateSave{8, 40, 2, "runs/x/checkpoints/step-00000040.tmp"});
  out.push_back(InnerStateLoad{9, 40, 1, "/runs/x/checkpoints/step-00000040/checkpoint.h5"});
  out.push_back(InnerStateDone{9, 3, 40, 1, 320, 0.125});
  // Empty vectors and strings.
  out.push_back(LoadShard{0, 0, {5, 5}, 0, ""});
  out.push_back(EvalDone{1, 0, 0, 0, {}, {}, 0.0});
  out.push_back(StepBegin{0, 0, {}});
  out.push_back(Shutdown{""});
  return out;
}

template <class T>
void put_at(std::vector<std::byte>& b, size_t off, T x) {
  std::memcpy(b.data() + off, &x, sizeof(T));
}

// Recomputes both CRCs (header, payload trailer) after an edit, so the test reaches the check it
// means to. `f` is header + payload + trailer, its length field right.
void reseal(std::vector<std::byte>& f);

}  // namespace

#include "common/util/hash.hpp"

namespace {
void reseal(std::vector<std::byte>& f) {
  put_at(f, 20, crc32c(f.data(), 20));
  put_at(f, f.size() - kTrailerSize,
         crc32c(f.data() + kHeaderSize, f.size() - kHeaderSize - kTrailerSize));
}
}  // namespace

TEST_CASE("proto: every message round-trips bit for bit") {
  for (const Message& m : samples()) {
    const std::vector<std::byte> f = encode(m);
    CAPTURE(type_name(type_of(m)));
    REQUIRE(f.size() >= kHeaderSize);
    const DecodeResult r = decode_frame(f);
    REQUIRE(r.status == DecodeStatus::kGood);
    CHECK(r.consumed == f.size());
    CHECK(r.header.type == type_of(m));
    CHECK(r.header.version == kProtocolVersion);
    const Message back = decode(f);
    CHECK(back == m);
    CHECK(encode(back) == f);
  }
}

TEST_CASE("proto: the header layout is as documented") {
  const auto f = encode(Shutdown{"x"});
  CHECK(std::memcmp(f.data(), "PTRN", 4) == 0);
  uint16_t version, type;
  uint64_t len;
  std::memcpy(&version, f.data() + 4, 2);
  std::memcpy(&type, f.data() + 6, 2);
  std::memcpy(&len, f.data() + 12, 8);
  CHECK(version == kProtocolVersion);
  CHECK(type == static_cast<uint16_t>(MessageType::kShutdown));
  CHECK(len == 4 + 1);  // u32 length + "x"
  CHECK(f.size() == kHeaderSize + len + kTrailerSize);
  uint32_t header_crc, payload_crc;
  std::memcpy(&header_crc, f.data() + 20, 4);
  std::memcpy(&payload_crc, f.data() + kHeaderSize + len, 4);
  CHECK(header_crc == crc32c(f.data(), 20));
  CHECK(payload_crc == crc32c(f.data() + kHeaderSize, len));
}

TEST_CASE("proto: NaN payloads survive bit for bit") {
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  const auto f = encode(GradPush{1, 0, 0, 1, {0, 2}, {qnan, -qnan}});
  const auto m = std::get<GradPush>(decode(f));
  uint32_t a, b, c, d;
  std::memcpy(&a, &m.grads[0], 4);
  std::memcpy(&b, &qnan, 4);
  const float nq = -qnan;
  std::memcpy(&c, &m.grads[1], 4);
  std::memcpy(&d, &nq, 4);
  CHECK(a == b);
  CHECK(c == d);
}

TEST_CASE("proto: a truncated frame is need-more at every length - never bad") {
  for (const Message& m : samples()) {
    const auto f = encode(m);
    for (size_t n = 0; n < f.size(); ++n) {
      const DecodeResult r = decode_frame(std::span(f.data(), n));
      CAPTURE(n);
      REQUIRE(r.status == DecodeStatus::kNeedMore);
    }
  }
  const auto f = encode(Shutdown{"bye"});
  CHECK_THROWS_WITH_AS(decode(std::span(f.data(), f.size() - 1)),
                       doctest::Contains("truncated frame"), ProtocolError);
}

TEST_CASE("proto: bad magic is refused - from the first four bytes") {
  auto f = encode(Shutdown{"x"});
  f[0] = std::byte{'H'};  // e.g. an HTTP client talking to the wrong port
  const DecodeResult r = decode_frame(f);
  CHECK(r.status == DecodeStatus::kBad);
  CHECK(r.error.find("bad magic") != std::string::npos);
  CHECK(decode_frame(std::span(f.data(), 4)).status == DecodeStatus::kBad);
  CHECK_THROWS_WITH_AS(decode(f), doctest::Contains("not a ptrain frame"), ProtocolError);
}

TEST_CASE("proto: another protocol version is refused - naming both versions") {
  auto f = encode(StepApplied{0, 1, 2, 1e-3});
  put_at<uint16_t>(f, 4, kProtocolVersion + 1);  // a newer build
  reseal(f);
  const DecodeResult r = decode_frame(f);
  REQUIRE(r.status == DecodeStatus::kBad);
  CHECK(r.error.find(fmt::format("protocol version {}", kProtocolVersion + 1)) != std::string::npos);
  CHECK(r.error.find(fmt::format("version {}", kProtocolVersion)) != std::string::npos);
  // Refused from the header alone: no payload needed.
  CHECK(decode_frame(std::span(f.data(), kHeaderSize)).status == DecodeStatus::kBad);
}

TEST_CASE("proto: an unknown message type is refused - naming the versions") {
  for (uint16_t t : {uint16_t{0}, uint16_t{kMaxMessageType + 1}, uint16_t{999}}) {
    auto f = encode(Shutdown{"x"});
    put_at<uint16_t>(f, 6, t);
    reseal(f);
    const DecodeResult r = decode_frame(f);
    REQUIRE(r.status == DecodeStatus::kBad);
    CHECK(r.error.find(fmt::format("unknown message type {}", t)) != std::string::npos);
    CHECK(r.error.find(fmt::format("protocol version {}", kProtocolVersion)) !=
          std::string::npos);
  }
  CHECK_THROWS_AS(parse_payload(static_cast<MessageType>(999), {}), ProtocolError);
}

TEST_CASE("proto: the retired types 12 and 13 are refused by name - never reused") {
  // CheckpointRequest / CheckpointReply gathered a server's weights and moments in one process;
  // checkpoints are sharded now. Their numbers stay reserved, so a frame carrying one is told so.
  CHECK(std::string(retired_type_name(12)) == "CheckpointRequest");
  CHECK(std::string(retired_type_name(13)) == "CheckpointReply");
  for (uint16_t t = 0; t <= kMaxMessageType + 1; ++t) {
    if (t != 12 && t != 13) CHECK(retired_type_name(t) == nullptr);
  }
  for (const Message& m : samples()) {
    CHECK(static_cast<uint16_t>(type_of(m)) != 12);
    CHECK(static_cast<uint16_t>(type_of(m)) != 13);
  }
  for (const auto& [t, name] : {std::pair<uint16_t, std::string>{12, "CheckpointRequest"},
                                {13, "CheckpointReply"}}) {
    CAPTURE(t);
    // A frame well-formed in every other respect, CRCs included.
    auto f = encode(PullRequest{9, 13, {0, 0}});
    put_at<uint16_t>(f, 6, t);
    reseal(f);
    const DecodeResult r = decode_frame(std::span(f).first(kHeaderSize));
    REQUIRE(r.status == DecodeStatus::kBad);
    CHECK(r.error.find(fmt::format("retired message type {} ({}", t, name)) != std::string::npos);
    CHECK(r.error.find("shard by shard") != std::string::npos);
    CHECK(r.error.find(fmt::format("protocol version {}", kProtocolVersion)) !=
          std::string::npos);
    CHECK_THROWS_WITH_AS(decode(f), doctest::Contains("retired message type"), ProtocolError);
    const std::string named = fmt::format("retired message type {} ({}", t, name);
    CHECK_THROWS_WITH_AS(parse_payload(static_cast<MessageType>(t), {}),
                         doctest::Contains(named.c_str()), ProtocolError);
    // The incremental decoder refuses it from the header too.
    FrameDecoder dec;
    CHECK(dec.feed(f) == f.size());
    Frame frame;
    std::string err;
    CHECK(dec.next(frame, err) == DecodeStatus::kBad);
    CHECK(err.find(name) != std::string::npos);
  }
}

TEST_CASE("proto: unknown flags are refused") {
  auto f = encode(Shutdown{"x"});
  put_at<uint32_t>(f, 8, 0x80u);
  reseal(f);
  const DecodeResult r = decode_frame(f);
  REQUIRE(r.status == DecodeStatus::kBad);
  CHECK(r.error.find("flags") != std::string::npos);
}

TEST_CASE("proto: a CRC mismatch is refused - in the payload or the header") {
  auto f = encode(GradPush{1, 0, 0, 1, {0, 3}, {1, 2, 3}});
  auto g = f;
  g[f.size() - kTrailerSize - 2] ^= std::byte{0x01};  // one bit of a float
  DecodeResult r = decode_frame(g);
  REQUIRE(r.status == DecodeStatus::kBad);
  CHECK(r.error.find("fails its CRC32C") != std::string::npos);
  auto h = f;
  h[20] ^= std::byte{0xFF};  // the stored header CRC: refused from the header alone
  r = decode_frame(std::span(h).first(kHeaderSize));
  REQUIRE(r.status == DecodeStatus::kBad);
  CHECK(r.error.find("header fails its CRC32C") != std::string::npos);
  auto t = f;
  t.back() ^= std::byte{0x10};  // the trailer
  CHECK(decode_frame(t).status == DecodeStatus::kBad);
}

TEST_CASE("proto: an oversized length is refused from the header - before allocation") {
  // A header announcing 2^62 bytes: refused as soon as the 24 header bytes are there (a decoder
  // that allocated first would throw bad_alloc or take the machine down).
  auto f = encode(GradPush{1, 0, 0, 1, {0, 1}, {1}});
  put_at<uint64_t>(f, 12, 1ull << 62);
  reseal(f);
  const DecodeResult r = decode_frame(std::span(f.data(), kHeaderSize));
  REQUIRE(r.status == DecodeStatus::kBad);
  CHECK(r.error.find("over the") != std::string::npos);
  CHECK(r.error.find("limit") != std::string::npos);

  // Control messages have a small limit of their own; bulk ones a large one.
  DecoderLimits small;
  small.max_control_payload = 64;
  small.max_bulk_payload = 1024;
  CHECK(decode_frame(encode(Shutdown{std::string(100, 'x')}), small).status ==
        DecodeStatus::kBad);
  CHECK(decode_frame(encode(GradPush{1, 0, 0, 1, {0, 100}, std::vector<float>(100)}), small)
            .status == DecodeStatus::kGood);
  CHECK(decode_frame(encode(GradPush{1, 0, 0, 1, {0, 300}, std::vector<float>(300)}), small)
            .status == DecodeStatus::kBad);
  // The bulk types are exactly those with floats or per-batch sums.
  for (uint16_t t = kMinMessageType; t <= kMaxMessageType; ++t) {
    if (retired_type_name(t) != nullptr) continue;
    const auto type = static_cast<MessageType>(t);
    CAPTURE(type_name(type));
    CHECK(is_bulk(type) == (type == MessageType::kPullReply || type == MessageType::kGradPush ||
                            type == MessageType::kEvalDone));
  }

  // The incremental decoder refuses it too, and stays refused.
  // It allocates nothing for it: the allocator hook is never called.
  bool allocated = false;
  FrameDecoder dec(small, FrameDecoder::kDefaultStaging, [&](size_t n) {
    allocated = true;
    return std::vector<std::byte>(n);
  });
  CHECK(dec.feed(std::span(f.data(), kHeaderSize)) == kHeaderSize);
  Frame frame;
  std::string err;
  CHECK(dec.next(frame, err) == DecodeStatus::kBad);
  CHECK(!err.empty());
  CHECK(dec.buffered() == 0);
  CHECK(dec.feed(encode(Shutdown{"later"})) == 0);
  CHECK(dec.next(frame, err) == DecodeStatus::kBad);
  CHECK_FALSE(allocated);
}

TEST_CASE("proto: malformed payloads are refused (counts are checked before allocating)") {
  SUBCASE("a vector count beyond the payload") {
    auto f = encode(StepBegin{1, 0, {1, 2}});
    // StepBegin payload: step(8) epoch(8) count(8) ...: claim 2^60 elements.
    put_at<uint64_t>(f, kHeaderSize + 16, 1ull << 60);
    reseal(f);
    CHECK_THROWS_WITH_AS(decode(f), doctest::Contains("announces"), ProtocolError);
  }
  SUBCASE("trailing bytes after the last field") {
    auto f = encode(Shutdown{"x"});
    f.insert(f.end() - kTrailerSize, std::byte{0});
    put_at<uint64_t>(f, 12, f.size() - kHeaderSize - kTrailerSize);
    reseal(f);
    CHECK_THROWS_WITH_AS(decode(f), doctest::Contains("trailing"), ProtocolError);
  }
  SUBCASE("a short payload") {
    auto f = encode(StepApplied{0, 1, 2, 1e-3});
    f.erase(f.end() - kTrailerSize - 3, f.end() - kTrailerSize);
    put_at<uint64_t>(f, 12, f.size() - kHeaderSize - kTrailerSize);
    reseal(f);
    CHECK_THROWS_WITH_AS(decode(f), doctest::Contains("malformed StepApplied"), ProtocolError);
  }
  SUBCASE("floats that do not match the range") {
    auto f = encode(GradPush{1, 0, 0, 1, {0, 3}, {1, 2, 3}});
    put_at<int64_t>(f, kHeaderSize + 8 + 8 + 4 + 8 + 8, 5);  // range.end = 5
    reseal(f);
    CHECK_THROWS_WITH_AS(decode(f), doctest::Contains("holds 3 floats"), ProtocolError);
  }
  SUBCASE("EvalDone with fewer token counts than loss sums") {
    const auto f = encode(EvalDone{1, 0, 4, 0, {1.0, 2.0}, {16}, 0.0});
    CHECK_THROWS_WITH_AS(decode(f), doctest::Contains("1 token counts for 2 loss sums"),
                         ProtocolError);
  }
  SUBCASE("a float count that does not match the payload length - from the head alone") {
    auto f = encode(GradPush{1, 0, 0, 1, {0, 3}, {1, 2, 3}});
    put_at<uint64_t>(f, kHeaderSize + float_body_head(MessageType::kGradPush) - 8, 1ull << 40);
    reseal(f);
    const DecodeResult r =
        decode_frame(std::span(f).first(kHeaderSize + float_body_head(MessageType::kGradPush)));
    REQUIRE(r.status == DecodeStatus::kBad);
    CHECK(r.error.find("announces 1099511627776 floats") != std::string::npos);
  }
  SUBCASE("an inverted range") {
    auto f = encode(PullRequest{1, 1, {10, 20}});
    put_at<int64_t>(f, kHeaderSize + 16, 30);  // begin = 30 > end
    reseal(f);
    CHECK_THROWS_WITH_AS(decode(f), doctest::Contains("invalid range"), ProtocolError);
  }
  SUBCASE("trailing bytes after a whole frame") {
    auto f = encode(Shutdown{"x"});
    f.push_back(std::byte{0});
    CHECK_THROWS_WITH_AS(decode(f), doctest::Contains("trailing bytes after"), ProtocolError);
  }
}

TEST_CASE("proto: the incremental decoder cuts a stream fed in arbitrary pieces") {
  std::vector<std::byte> stream;
  const auto msgs = samples();
  for (const auto& m : msgs) {
    const auto f = encode(m);
    stream.insert(stream.end(), f.begin(), f.end());
  }
  std::mt19937 rng(5);
  for (int trial = 0; trial < 20; ++trial) {
    // Odd trials use a staging buffer smaller than most frames: those are read in place.
    FrameDecoder dec({}, trial % 2 == 0 ? FrameDecoder::kDefaultStaging : 40);
    std::vector<Message> got;
    size_t at = 0;
    Frame frame;
    std::string err;
    while (at < stream.size()) {
      const size_t n = std::min<size_t>(stream.size() - at, 1 + rng() % (trial < 5 ? 3 : 200));
      size_t fed = 0;
      while (fed < n) {
        fed += dec.feed(std::span(stream.data() + at + fed, n - fed));
        for (;;) {
          const DecodeStatus s = dec.next(frame, err);
          REQUIRE(s != DecodeStatus::kBad);
          if (s == DecodeStatus::kNeedMore) break;
          const std::vector<std::byte> wire = wire_bytes(frame);  // a push or reply comes split
          CHECK(wire.size() == frame.header.frame_size());
          got.push_back(decode(wire));
        }
      }
      at += n;
    }
    REQUIRE(got.size() == msgs.size());
    for (size_t i = 0; i < msgs.size(); ++i) CHECK(got[i] == msgs[i]);
    CHECK(dec.buffered() == 0);
  }
}

TEST_CASE("proto: random garbage never decodes as good nor crashes") {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<std::byte> junk(rng() % 64);
    for (auto& b : junk) b = static_cast<std::byte>(rng());
    if (junk.size() >= 4 && trial % 2 == 0) std::memcpy(junk.data(), "PTRN", 4);
    const DecodeResult r = decode_frame(junk);
    CHECK(r.status != DecodeStatus::kGood);
  }
  // Mutations of valid frames: any single flipped bit is caught (CRC or header check), in a bulk
  // message with a float body and in one with vectors.
  for (const Message& m : {Message{PullReply{9, 13, {8, 11}, {1.0f, -2.0f, 3.5f}}},
                           Message{EvalDone{9, 1, 13, 8, {1.5, 2.5}, {16, 16}, 0.25}}}) {
    const auto f = encode(m);
    CAPTURE(type_name(type_of(m)));
    for (size_t bit = 0; bit < f.size() * 8; ++bit) {
      auto g = f;
      g[bit / 8] ^= static_cast<std::byte>(1u << (bit % 8));
      const DecodeResult r = decode_frame(g);
      CAPTURE(bit);
      CHECK(r.status != DecodeStatus::kGood);
    }
  }
}

TEST_CASE("proto: a push is encoded without copying its floats - and received into a destination") {
  std::vector<float> grads = ramp(1000, 0.5f);
  const GradPush push{4, 1, 2, 77, {0, 1000}, FloatRange::borrow(grads)};
  const OutFrame out = encode_frame(push);
  // The body is the caller's memory; the head holds the header and the 52 bytes of fields.
  CHECK(out.body.data() == reinterpret_cast<const std::byte*>(grads.data()));
  CHECK(out.body.size() == grads.size() * 4);
  CHECK(out.head.size() == kHeaderSize + float_body_head(MessageType::kGradPush));
  CHECK(out.size() == out.head.size() + out.body.size() + kTrailerSize);
  CHECK(out.keep == nullptr);
  const std::vector<std::byte> flat = flatten(out);
  CHECK(flat == encode(GradPush{4, 1, 2, 77, {0, 1000}, grads}));

  // Whole-frame decoding into a destination the receiver gives for (type, match, count).
  std::vector<float> slot(1000, -1.0f);
  std::vector<std::tuple<MessageType, uint64_t, size_t>> asked;
  const Message m = decode(flat, {}, true, [&](MessageType t, uint64_t match, size_t n) {
    asked.emplace_back(t, match, n);
    return FloatDestination{slot, nullptr};
  });
  REQUIRE(asked.size() == 1);
  CHECK(asked[0] == std::make_tuple(MessageType::kGradPush, uint64_t{4}, size_t{1000}));
  const auto& got = std::get<GradPush>(m);
  CHECK(got.grads.data() == slot.data());
  CHECK(!got.grads.owned());
  CHECK(slot == grads);
  CHECK(got == push);

  // The stream decoder: head first, then the floats straight into the destination (a staging
  // buffer smaller than the frame, so most floats are read in place).
  std::vector<float> dst(1000, 0.0f);
  FrameDecoder dec({}, FrameDecoder::kMinStaging, {}, {}, [&](MessageType, uint64_t, size_t n) {
    return FloatDestination{n == dst.size() ? std::span<float>(dst) : std::span<float>(), nullptr};
  });
  Frame frame;
  std::string err;
  size_t at = 0, in_place = 0;
  while (at < flat.size()) {
    const std::span<std::byte> to = dec.buffer();
    if (dec.reading_in_place()) {
      CHECK(to.data() >= reinterpret_cast<std::byte*>(dst.data()));
      in_place += std::min(to.size(), flat.size() - at);
    }
    const size_t n = std::min(to.size(), flat.size() - at);
    std::memcpy(to.data(), flat.data() + at, n);
    dec.commit(n);
    at += n;
    if (dec.next(frame, err) == DecodeStatus::kGood) break;
  }
  REQUIRE(err.empty());
  CHECK(frame.split);
  CHECK(frame.floats.data() == dst.data());
  CHECK(dst == grads);
  CHECK(in_place > 3000);
  CHECK(wire_bytes(frame) == flat);
  CHECK(std::get<GradPush>(assemble(MessageType::kGradPush,
                                    std::span(frame.bytes).subspan(kHeaderSize), frame.floats)) ==
        push);
  // A count that does not match the destination gets a buffer of its own.
  const auto other = encode(GradPush{5, 1, 2, 77, {0, 3}, {1, 2, 3}});
  FrameDecoder dec2({}, FrameDecoder::kDefaultStaging, {}, {},
                    [&](MessageType, uint64_t, size_t) { return FloatDestination{dst, nullptr}; });
  CHECK(dec2.feed(other) == other.size());
  REQUIRE(dec2.next(frame, err) == DecodeStatus::kGood);
  CHECK(frame.floats.owned());
  CHECK(frame.floats == std::vector<float>{1, 2, 3});
}

TEST_CASE("proto: a frame of another protocol version is refused naming both versions") {
  // A version-3 peer: its header CRC covered the payload too; still told about versions, not CRCs.
  auto f = encode(Shutdown{"from the past"});
  put_at<uint16_t>(f, 4, 3);
  const DecodeResult r = decode_frame(std::span(f).first(kHeaderSize));
  REQUIRE(r.status == DecodeStatus::kBad);
  CHECK(r.error == fmt::format("protocol version 3 is not supported: this build speaks protocol version {}", kProtocolVersion));
  // A version-5 peer (bulk messages without their float encoding).
  put_at<uint16_t>(f, 4, 5);
  CHECK(decode_frame(std::span(f).first(kHeaderSize)).error ==
        fmt::format("protocol version 5 is not supported: this build speaks protocol version {}", kProtocolVersion));
  // A version-6 peer (no StepWorkers; NormReport without its worker set).
  put_at<uint16_t>(f, 4, 6);
  CHECK(decode_frame(std::span(f).first(kHeaderSize)).error ==
        fmt::format("protocol version 6 is not supported: this build speaks protocol version {}", kProtocolVersion));
}
