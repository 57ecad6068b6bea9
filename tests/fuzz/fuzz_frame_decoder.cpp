// libFuzzer target for the bytes a peer controls: the protocol frame decoder (proto::FrameDecoder,
// the very code the TCP reader runs; decode_frame, parse_payload, decode) and the
// pre-authentication frame decoder (net::decode_auth).
// Built with clang-14 -fsanitize=fuzzer,address,undefined by tests/fuzz/CMakeLists.txt; must never
// crash, leak, read out of bounds, throw anything but ProtocolError, or allocate much more than the
// decoder limits allow (the test runs with -malloc_limit_mb).
//
// Each input is a byte stream as a socket would deliver it. Checked invariants (each truly holds
// for the codec as documented in codec.hpp):
//   1. Chunking does not matter: feeding the stream to a FrameDecoder in pseudo-random chunks
//      (derived from the input) gives the same frames, then the same final status and error, as
//      walking the whole buffer with decode_frame — both with the TCP reader's staging buffer and
//      with a tiny one (derived from the input, 24..280 bytes), so that frames larger than it
//      take the decoder's read-in-place path (own buffer, CRC piece by piece) within -max_len.
//   2. A kGood frame is exactly header + announced payload + trailer, within the limit for its
//      type; a GradPush / PullReply comes out of the stream decoder split (head + floats placed in
//      a buffer of their own) and reassembles to the same bytes.
//   3. The encoding is canonical: a kGood frame whose payload parses re-encodes to the same bytes.
//   4. After kBad a FrameDecoder stays bad, with the same reason, and holds no bytes.
//   5. decode() on the whole input throws ProtocolError or agrees with parse_payload.
//   6. decode_auth never claims more than kMaxAuthFrame bytes, and a good Hello, Challenge or
//      Proof re-encodes to the same bytes.
// A random mutation almost never carries valid CRC32Cs, which would leave the payload parser
// unexplored behind the checksums. So each input is also run (a) with the header CRC and the
// payload CRC (trailer) of every complete frame in it recomputed, through all of the above, and
// (b) as a bare payload: parse_payload(type = 1 + first byte % 24, the rest), which must throw
// ProtocolError or re-encode to the same bytes (the retired types 12 and 13 always throw).
//
// Extra flag (removed before libFuzzer sees argv): -write_seeds=DIR writes a seed corpus of
// valid frames (one per message type, a stream of several, auth frames, a frame of each retired
// type) into DIR first.
#include "common/net/auth.hpp"
#include "common/proto/codec.hpp"
#include "common/proto/frame_decoder.hpp"
#include "common/util/hash.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace ptrain;
using namespace ptrain::proto;

namespace {

// Small limits, so the fuzzer can reach "complete frame" paths and so that an allocation beyond
// them shows up under -malloc_limit_mb.
DecoderLimits fuzz_limits() {
  DecoderLimits l;
  l.max_control_payload = 64u << 10;
  l.max_bulk_payload = 1u << 20;
  return l;
}

[[noreturn]] void invariant_failed(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz invariant violated: %s %s\n", what, detail.c_str());
  std::abort();
}
#define FUZZ_CHECK(cond, ...) \
  do {                         \
    if (!(cond)) invariant_failed(#cond, ##__VA_ARGS__); \
  } while (0)

struct Outcome {
  std::vector<std::vector<std::byte>> frames;
  DecodeStatus last = DecodeStatus::kNeedMore;
  std::string error;
};

// The reference: walk the whole buffer with decode_frame.
Outcome walk_whole(std::span<const std::byte> in, const DecoderLimits& limits) {
  Outcome o;
  size_t off = 0;
  for (;;) {
    const DecodeResult r = decode_frame(in.subspan(off), limits);
    if (r.status == DecodeStatus::kGood) {
      FUZZ_CHECK(r.consumed == r.header.frame_size());
      FUZZ_CHECK(r.header.payload_length <= limits.max_payload(r.header.type));
      FUZZ_CHECK(r.consumed <= in.size() - off);
      FUZZ_CHECK(r.payload.data() == in.data() + off + kHeaderSize);
      o.frames.emplace_back(in.begin() + off, in.begin() + off + r.consumed);
      off += r.consumed;
      continue;
    }
    o.last = r.status;
    o.error = r.error;
    if (r.status == DecodeStatus::kBad) FUZZ_CHECK(!r.error.empty());
    return o;
  }
}

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The same stream through FrameDecoder in chunks of 1..(mostly small) bytes, as a socket reader
// drives it: take every whole frame, then write at most buffer().size() bytes and commit them.
Outcome feed_chunked(std::span<const std::byte> in, const DecoderLimits& limits, uint64_t seed,
                     size_t staging) {
  Outcome o;
  FrameDecoder dec(limits, staging);
  size_t off = 0;
  Frame frame;
  std::string error;
  for (;;) {
    DecodeStatus st;
    while ((st = dec.next(frame, error)) == DecodeStatus::kGood) {
      FUZZ_CHECK(frame.split == (float_body_head(frame.header.type) > 0));
      if (frame.split) {
        FUZZ_CHECK(frame.bytes.size() == kHeaderSize + float_body_head(frame.header.type));
        FUZZ_CHECK(frame.floats.owned());  // no destination given: a buffer of their own
      } else {
        FUZZ_CHECK(frame.bytes.size() == frame.header.frame_size());
      }
      o.frames.push_back(wire_bytes(frame));
    }
    if (st == DecodeStatus::kBad) {
      o.last = st;
      o.error = error;
      // 4. Stays bad, holds nothing, ignores more input.
      FUZZ_CHECK(dec.buffered() == 0 && dec.buffer().empty());
      FUZZ_CHECK(dec.feed(in.subspan(off)) == 0);
      std::string again;
      FUZZ_CHECK(dec.next(frame, again) == DecodeStatus::kBad);
      FUZZ_CHECK(again == error);
      FUZZ_CHECK(dec.buffered() == 0);
      return o;
    }
    if (off == in.size()) {
      o.last = DecodeStatus::kNeedMore;
      size_t framed = 0;
      for (const auto& f : o.frames) framed += f.size();
      FUZZ_CHECK(dec.buffered() == in.size() - framed);  // the partial frame at the end
      return o;
    }
    const uint64_t r = splitmix(seed);
    size_t n = (r & 3) == 0 ? 1 + (r >> 8) % 4096 : 1 + (r >> 8) % 32;
    const std::span<std::byte> to = dec.buffer();
    FUZZ_CHECK(!to.empty());  // after kNeedMore there is always room
    n = std::min({n, in.size() - off, to.size()});
    std::memcpy(to.data(), in.data() + off, n);
    dec.commit(n);
    off += n;
  }
}

void check_frame(const std::vector<std::byte>& frame) {
  const DecodeResult r = decode_frame(frame, fuzz_limits());
  FUZZ_CHECK(r.status == DecodeStatus::kGood && r.consumed == frame.size());
  Message msg;
  try {
    msg = parse_payload(r.header.type, r.payload);
  } catch (const ProtocolError&) {
    // 5. decode() must agree: it throws too.
    try {
      (void)decode(frame, fuzz_limits());
      invariant_failed("decode accepted what parse_payload refused");
    } catch (const ProtocolError&) {
    }
    return;
  }
  FUZZ_CHECK(type_of(msg) == r.header.type);
  // 3. Canonical encoding.
  const std::vector<std::byte> again = encode(msg);
  FUZZ_CHECK(again == frame, type_name(r.header.type));
  (void)decode(frame, fuzz_limits());  // must not throw
}

void fuzz_auth(std::span<const std::byte> in) {
  const net::AuthDecodeResult r = net::decode_auth(in);
  switch (r.status) {
    case DecodeStatus::kBad:
      FUZZ_CHECK(!r.error.empty());
      break;
    case DecodeStatus::kNeedMore:
      FUZZ_CHECK(r.frame_size == 0 || (r.frame_size > in.size() && r.frame_size <= net::kMaxAuthFrame));
      break;
    case DecodeStatus::kGood: {
      FUZZ_CHECK(r.frame_size <= net::kMaxAuthFrame && r.frame_size <= in.size());
      const auto bytes = net::encode_auth(r.frame);
      FUZZ_CHECK(bytes.size() <= net::kMaxAuthFrame);
      if (!std::holds_alternative<net::AuthResult>(r.frame)) {
        FUZZ_CHECK(bytes.size() == r.frame_size &&
                   std::memcmp(bytes.data(), in.data(), bytes.size()) == 0);
      }
      break;
    }
  }
}

// ---- the seed corpus -------------------------------------------------------------------------

std::vector<Message> seed_messages() {
  const KeyRange r{4, 7};
  return {
      LoadShard{3, 1, r, 42, "/run/checkpoints/step-00000003/checkpoint.h5"},
      StepBegin{5, 1, {10, 11, 12, 99}},
      PullRequest{77, 5, r},
      PullReply{77, 5, r, {1.5f, -2.0f, 3.25f}},
      GradPush{5, 1, 0, 128, r, {0.1f, 0.2f, 0.3f}},
      PushReceived{1, 5, 0, 128},
      WorkerStepDone{0, 5, 123.5, 128, 0.01, 0.2, 0.03},
      StepContributors{5, 1, {0, 1, 3}},
      NormReport{1, 5, 2.5, 256, -1, {0, 1}},
      StepCommit{5, {0, 1, 3}, 1.58, 0.75f},
      StepApplied{1, 5, 6, 3e-4},
      Shutdown{"done"},
      Failure{4, "disk full"},
      CheckpointShard{10, 6, "/run/checkpoints/step-00000006.tmp"},
      CheckpointShardWritten{10, 1, 6, r, 0.5},
      ShardLoaded{1, 6, r, 0.25},
      EvalBegin{11, 6, 8, 16, 4},
      EvalDone{11, 0, 6, 8, {12.5, 3.0}, {64, 64}, 0.1},
      StepWorkers{6, 2, {0, 1}},
      LeaseGrant{3, 2, 6, {10, 11}},
      PushReady{1, 3, 5},
      InnerStateSave{4, 8, 1, "tmp"},
      InnerStateLoad{5, 8, 0, "ckpt"},
      InnerStateDone{5, 1, 8, 0, 32, 0.5},
  };
}

void write_seed(const std::filesystem::path& dir, const std::string& name,
                const std::vector<std::byte>& bytes) {
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_seeds(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  std::vector<std::byte> stream;
  for (const auto& m : seed_messages()) {
    const auto frame = encode(m);
    write_seed(dir, std::string("seed-") + type_name(type_of(m)), frame);
    // The bare-payload form: one byte selecting the type, then the payload.
    std::vector<std::byte> bare{std::byte(static_cast<uint8_t>(
        static_cast<uint16_t>(type_of(m)) - kMinMessageType))};
    bare.insert(bare.end(), frame.begin() + kHeaderSize, frame.end());
    write_seed(dir, std::string("seed-payload-") + type_name(type_of(m)), bare);
    if (stream.size() < 600) stream.insert(stream.end(), frame.begin(), frame.end());
  }
  write_seed(dir, "seed-stream", stream);
  auto truncated = encode(seed_messages()[4]);
  truncated.resize(truncated.size() - 5);
  write_seed(dir, "seed-truncated", truncated);
  // Frames of the retired types, CRCs intact: refused from the header.
  for (const uint16_t t : {uint16_t{12}, uint16_t{13}}) {
    auto retired = encode(PullRequest{9, 6, {4, 7}});
    std::memcpy(retired.data() + 6, &t, 2);
    const uint32_t header_crc = crc32c(retired.data(), 20);
    std::memcpy(retired.data() + 20, &header_crc, 4);
    write_seed(dir, std::string("seed-retired-") + retired_type_name(t), retired);
  }
  const net::Nonce n{1, 2, 3};
  write_seed(dir, "seed-auth-hello",
             net::encode_auth(net::AuthHello{kProtocolVersion, net::Role::kWorker, n}));
  write_seed(dir, "seed-auth-challenge",
             net::encode_auth(net::AuthChallenge{net::Role::kCoordinator, n, net::Proof{4, 5}}));
  write_seed(dir, "seed-auth-proof", net::encode_auth(net::AuthProof{net::Proof{6, 7}}));
  write_seed(dir, "seed-auth-result", net::encode_auth(net::AuthResult{false, "wrong secret"}));
}

// Invariants 1-5 on one byte stream.
void fuzz_stream(std::span<const std::byte> in) {
  const DecoderLimits limits = fuzz_limits();

  const Outcome whole = walk_whole(in, limits);
  const uint64_t seed = crc32c(in.data(), in.size()) ^ in.size();
  const size_t tiny = kHeaderSize + static_cast<size_t>(seed % 257);
  for (const size_t staging : {FrameDecoder::kDefaultStaging, tiny}) {
    const Outcome chunked = feed_chunked(in, limits, seed, staging);
    // 1. Chunking (and the staging size) does not matter.
    FUZZ_CHECK(whole.frames == chunked.frames);
    FUZZ_CHECK(whole.last == chunked.last);
    FUZZ_CHECK(whole.error == chunked.error, whole.error + " | " + chunked.error);
  }

  for (const auto& f : whole.frames) check_frame(f);

  // 5. decode() on the whole input: a ProtocolError or a message.
  try {
    const Message m = decode(in, limits);
    FUZZ_CHECK(whole.frames.size() == 1 && whole.frames[0].size() == in.size());
    (void)m;
  } catch (const ProtocolError&) {
  }
}

// A copy of `in` with both CRCs of every complete frame (by its announced length) recomputed.
std::vector<std::byte> with_fixed_crcs(std::span<const std::byte> in) {
  std::vector<std::byte> out(in.begin(), in.end());
  size_t off = 0;
  while (out.size() - off >= kHeaderSize) {
    uint64_t len;
    std::memcpy(&len, out.data() + off + 12, 8);
    const uint32_t header_crc = crc32c(out.data() + off, 20);
    std::memcpy(out.data() + off + 20, &header_crc, 4);
    const size_t after_header = out.size() - off - kHeaderSize;
    if (after_header < kTrailerSize || len > after_header - kTrailerSize) break;
    const uint32_t crc = crc32c(out.data() + off + kHeaderSize, len);
    std::memcpy(out.data() + off + kHeaderSize + len, &crc, 4);
    off += kHeaderSize + len + kTrailerSize;
  }
  return out;
}

// The payload parser on its own: a ProtocolError or a canonical re-encoding.
void fuzz_payload(std::span<const std::byte> in) {
  if (in.empty()) return;
  const auto type = static_cast<MessageType>(kMinMessageType +
                                             static_cast<uint8_t>(in[0]) % kMaxMessageType);
  const auto payload = in.subspan(1);
  Message msg;
  try {
    msg = parse_payload(type, payload);
  } catch (const ProtocolError&) {
    return;
  }
  FUZZ_CHECK(type_of(msg) == type);
  const std::vector<std::byte> frame = encode(msg);
  FUZZ_CHECK(frame.size() == kHeaderSize + payload.size() + kTrailerSize &&
                 std::memcmp(frame.data() + kHeaderSize, payload.data(), payload.size()) == 0,
             type_name(type));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // Consume our own flag so that libFuzzer never sees it.
  const std::string flag = "-write_seeds=";
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string a = (*argv)[i];
    if (a.rfind(flag, 0) == 0) {
      write_seeds(a.substr(flag.size()));
    } else {
      (*argv)[out++] = (*argv)[i];
    }
  }
  *argc = out;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  fuzz_stream(in);
  const std::vector<std::byte> fixed = with_fixed_crcs(in);
  if (fixed != std::vector<std::byte>(in.begin(), in.end())) fuzz_stream(fixed);
  fuzz_payload(in);
  fuzz_auth(in);
  return 0;
}
